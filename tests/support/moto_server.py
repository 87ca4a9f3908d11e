"""Runs moto's server mode as a real HTTP endpoint on loopback, so boto3 talks HTTP exactly as to AWS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from devtools.processes import stop_child
from tests.support.stack import free_port


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str
    pid: int

    def reset(self) -> None:
        """Forget every bucket, identity and sent message (moto's own reset API)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def sent_emails(self) -> list[dict]:
        """Messages SES accepted, as moto records them (``GET /moto-api/data.json``): simple and raw sends."""
        import json

        with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=10) as resp:
            ses = json.load(resp).get("ses", {})
        return list(ses.get("Message", [])) + list(ses.get("RawMessage", []))


def verify_ses_sender(server: MotoServer, address: str, region: str = "eu-west-1") -> None:
    """What an operator does once in the AWS console: verify the sending identity."""
    import boto3

    client = boto3.client("sesv2", endpoint_url=server.endpoint_url, region_name=region,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_email_identity(EmailIdentity=address)


@contextmanager
def moto_server(extra_env: dict[str, str] | None = None, port: int | None = None) -> Iterator[MotoServer]:
    """Start ``moto_server`` on a free loopback port (or ``port``: an endpoint that was dead until now), wait until
    it answers, stop it (by pid) afterwards.

    ``extra_env`` reaches moto's settings, e.g. ``INITIAL_NO_AUTH_ACTION_COUNT`` to check signatures.
    """
    port = port or free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if exe is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", **(extra_env or {})}
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.1)
        yield MotoServer(endpoint_url=url, pid=proc.pid)
    finally:
        stop_child(proc, timeout=10)


def s3_client(moto: MotoServer) -> Any:
    """A boto3 S3 client on the moto server, with its test credentials."""
    import boto3

    return boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="eu-west-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
