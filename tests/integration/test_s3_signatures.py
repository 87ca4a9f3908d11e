"""Uploads signed by adapters.storage.sigv4 pass a server that checks every signature: moto with IAM
authentication on, which recomputes each request's SigV4 signature with botocore and refuses a mismatch."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import boto3
import pytest

from adapters.storage.base import StorageUnavailable, object_key
from adapters.storage.s3 import S3CertificateStore
from tests.support.moto_server import MotoServer, moto_server

pytestmark = pytest.mark.integration
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def checking_moto() -> Iterator[tuple[MotoServer, dict[str, str], str]]:
    """moto answering its first four calls unauthenticated (user, key, policy, bucket), then checking each."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as server:
        admin = {"endpoint_url": server.endpoint_url, "region_name": REGION, "aws_access_key_id": "testing",
                 "aws_secret_access_key": "testing"}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="offload-worker")
        key = iam.create_access_key(UserName="offload-worker")["AccessKey"]
        iam.put_user_policy(UserName="offload-worker", PolicyName="certificates",
                            PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
                                           '"Action": "s3:*", "Resource": "*"}]}')
        bucket = f"certs-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", **admin).create_bucket(Bucket=bucket,
                                                  CreateBucketConfiguration={"LocationConstraint": REGION})
        yield server, {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}, bucket


async def test_a_signed_upload_is_accepted_and_reads_back(checking_moto) -> None:
    server, creds, bucket = checking_moto
    store = S3CertificateStore(bucket=bucket, region=REGION, endpoint_url=server.endpoint_url, **creds)
    try:
        key = object_key(7, "signed-job", 12, "ABCD-EFGH-JKMN-PQRS")
        stored = await store.put(key, b"%PDF-1.7 signed by hand")
        assert stored.sha256 == hashlib.sha256(b"%PDF-1.7 signed by hand").hexdigest()
        assert await store.get(key) == b"%PDF-1.7 signed by hand"  # boto3's own signed GET, same server
    finally:
        store.close()


async def test_a_wrong_secret_is_refused_at_once_as_storage_unavailable(checking_moto) -> None:
    server, creds, bucket = checking_moto
    store = S3CertificateStore(bucket=bucket, region=REGION, endpoint_url=server.endpoint_url,
                               access_key_id=creds["access_key_id"], secret_access_key="not-the-secret")
    try:
        with pytest.raises(StorageUnavailable, match="403: SignatureDoesNotMatch"):
            await store.put(object_key(7, "signed-job", 13, "ABCD-EFGH-JKMN-PQRS"), b"%PDF-1.7")
    finally:
        store.close()
