"""Issue 11 finding 9: an SNS signing certificate (or subscription URL) is fetched only over https from AWS's own
regional SNS hosts: never from an S3 bucket called "sns", another AWS service, a look-alike domain, or a URL
that merely fails to parse (which must be a refusal, not a 500)."""

from __future__ import annotations

import pytest

from api.webhooks import Refused, check_sns_url


@pytest.mark.parametrize("url", [
    "https://sns.s3.amazonaws.com/x.pem",  # the review's case: an S3 bucket named "sns"
    "https://sns.s3.eu-west-1.amazonaws.com/x.pem", "https://sns.s3-eu-west-1.amazonaws.com/x.pem",
    "https://sns.s3-website-us-east-1.amazonaws.com/x.pem", "https://sns.s3.cn-north-1.amazonaws.com.cn/x.pem",
    "https://sns.amazonaws.com/x.pem", "https://sns.sns.amazonaws.com/x.pem", "https://sns.eu-west-1.evil.org/x.pem",
    "https://sns.eu-west-1.amazonaws.com.evil.org/x.pem", "https://sns.eu-west-1.amazonaws.com./x.pem",
    "https://sns.eu-west-1.amazonaws.com.cn/x.pem", "https://sns.cn-north-1.amazonaws.com/x.pem",
    "http://sns.eu-west-1.amazonaws.com/x.pem", "ftp://sns.eu-west-1.amazonaws.com/x.pem",
    "//sns.eu-west-1.amazonaws.com/x.pem", "https://sns.eu-west-1.amazonaws.com:443/x.pem",
    "https://user:pw@sns.eu-west-1.amazonaws.com/x.pem", "https://evil.org\\@sns.eu-west-1.amazonaws.com/x.pem",
    # unparseable: refused as untrusted rather than raising ValueError out of the webhook (a 500)
    "https://sns.eu-west-1.amazonaws.com:99999/x.pem", "https://sns.eu-west-1.amazonaws.com:abc/x.pem",
    "https://[sns.eu-west-1.amazonaws.com/x.pem", "", "not a url",
])
def test_sns_urls_off_the_regional_https_hosts_are_refused(url):
    with pytest.raises(Refused) as refused:
        check_sns_url(url)
    assert refused.value.code == "untrusted_sns_url"


@pytest.mark.parametrize("host", ["sns.us-east-1.amazonaws.com", "sns.eu-central-2.amazonaws.com",
                                  "sns.ap-southeast-4.amazonaws.com", "sns.us-gov-west-1.amazonaws.com",
                                  "sns.us-gov-east-1.amazonaws.com", "sns.cn-north-1.amazonaws.com.cn",
                                  "sns.cn-northwest-1.amazonaws.com.cn", "SNS.EU-WEST-1.AMAZONAWS.COM"])
def test_regional_govcloud_and_china_sns_hosts_are_accepted(host):
    check_sns_url(f"https://{host}/SimpleNotificationService-0123456789abcdef.pem")
    check_sns_url(f"https://{host}/?Action=ConfirmSubscription&TopicArn=arn&Token=t")


@pytest.mark.parametrize("url", ["https://sns.eu-west-1.amazonaws.com:99999/x.pem", "https://[sns.s3.amazonaws.com/x.pem",
                                 "https://sns.s3.amazonaws.com/x.pem"])
async def test_a_signed_sns_message_naming_such_a_certificate_is_refused_before_anything_is_fetched(url):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from api.webhooks import SnsVerifier
    from tests.unit.test_webhooks import TOPIC, make_certificate, sns_message

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return make_certificate(key)

    with pytest.raises(Refused) as refused:
        await SnsVerifier(fetch, topic_arns=[TOPIC], max_age=3600).verify(sns_message(key, SigningCertURL=url))
    assert refused.value.code == "untrusted_sns_url" and fetched == []
