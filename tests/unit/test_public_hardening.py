"""The pure parts of the public side's hardening: the certificate-code secret, the sign-in throttle and the
rate limiter (bounded memory, atomic admission), the client address behind proxies, the small-form settings."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import SecretStr

from api.errors import ApiError
from config.settings import Settings
from schemas.events import BatchDispatched, Recipient
from streams.handlers.certificate_batches import InvalidCertificateData, certificate_input
from tests.support.production import PRODUCTION_SECRETS

BATCH = BatchDispatched(job_id="certs", batch_no=0, batch_count=1, type="certificate", company_id=7, route="local",
                        provider="local", template_id="course_completion",
                        template_data={"course_name": "Fire Safety 101", "completion_date": "2026-11-20"},
                        recipients=[Recipient(userid=1, email="a@example.org", firstname="Ada", lastname="Byron")])


# --- the certificate-code secret -------------------------------------------------------


def test_certificates_are_refused_with_the_public_code_secret_outside_tests_and_the_dev_stack():
    recipient = BATCH.recipients[0]
    with pytest.raises(InvalidCertificateData, match="OFFLOAD_CERTIFICATE_CODE_SECRET is the public"):
        certificate_input(Settings(environment="development"), BATCH, recipient)
    with pytest.raises(ValueError, match="certificate_code_secret is a placeholder"):
        Settings(environment="production")  # production refuses it at start-up already
    # Tests and the dev stack (which sets the explicit opt-in) may use it; a real secret is always fine.
    assert certificate_input(Settings(environment="test"), BATCH, recipient).code
    assert certificate_input(Settings(certificate_code_secret_allow_default=True), BATCH, recipient).code
    own = Settings(certificate_code_secret=SecretStr("a-secret-of-our-own-0123456789abcdef"))
    assert certificate_input(own, BATCH, recipient).code


def test_the_dev_stack_opts_in_to_the_public_code_secret_explicitly(tmp_path):
    from devtools.devstack import StackInfo

    env = StackInfo("127.0.0.1:1", "postgresql://x@127.0.0.1:2/x", "127.0.0.1", 3, tmp_path).env()
    assert env["OFFLOAD_CERTIFICATE_CODE_SECRET_ALLOW_DEFAULT"] == "true"


# --- the sign-in throttle --------------------------------------------------------------


def test_sign_in_throttle_counts_an_attempt_when_it_starts_and_forgives_only_success():
    from api.ui.sessions import LoginThrottle

    throttle = LoginThrottle(window=300, max_failures=10)
    admitted = [throttle.begin("198.51.100.1", now=100.0) for _ in range(200)]  # none has finished yet
    assert admitted.count(True) == 10 and admitted[:10] == [True] * 10
    assert throttle.begin("198.51.100.1", now=100.0 + 300) is True  # the window has passed
    throttle.succeeded("198.51.100.2")  # someone else's success forgives nothing here
    assert throttle.begin("198.51.100.1", now=401.0) is True
    throttle.succeeded("198.51.100.1")
    assert len(throttle) == 0


def test_sign_in_throttle_is_bounded_in_memory():
    from api.ui.sessions import LoginThrottle

    throttle = LoginThrottle(window=300, max_failures=10, max_clients=1000)
    for i in range(20_000):
        throttle.begin(str(ipaddress.ip_address(0x0A000000 + i)), now=float(i) / 1000)
    assert len(throttle) == 1000
    # The most recent clients are the ones kept, and each keeps at most max_failures timestamps.
    for _ in range(50):
        throttle.begin("10.0.78.31", now=20.0)
    assert max(len(v) for v in throttle._failures.values()) == 10


def test_rate_limiter_refills_over_time_and_is_bounded_in_memory():
    from api.public import RateLimiter

    limiter = RateLimiter(per_minute=60, max_keys=100)
    assert [limiter.take("a", now=0.0) for _ in range(60)] == [0.0] * 60
    assert limiter.take("a", now=0.0) == pytest.approx(1.0)  # one token a second
    assert limiter.take("a", now=1.0) == 0.0
    for i in range(10_000):
        limiter.take(f"client-{i}", now=2.0)
    assert len(limiter) == 100


# --- malformed CSRF tokens ------------------------------------------------------------


def test_a_non_ascii_csrf_token_is_a_400_and_a_wrong_one_a_403():
    from aiohttp import web

    from api.ui.sessions import Session, check_csrf

    session = Session("ops", "n", 0, "a" * 64)
    with pytest.raises(ApiError) as info:
        check_csrf("é²" * 32, session)
    assert (info.value.status, info.value.code) == (400, "invalid_csrf_token")
    with pytest.raises(web.HTTPForbidden):
        check_csrf("b" * 64, session)
    check_csrf("a" * 64, session)


# --- settings ------------------------------------------------------------------------------------------


def test_metrics_token_is_required_by_default_only_in_production_and_proxies_must_parse():
    assert Settings(environment="development").metrics_token_required is False
    production = Settings(environment="production", **PRODUCTION_SECRETS)
    assert production.metrics_token_required is True
    assert Settings(metrics_require_token=True).metrics_token_required is True
    assert Settings(trusted_proxies=["10.0.0.0/8", "::1"]).trusted_proxy_networks()[0].num_addresses == 2**24
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings(trusted_proxies=["not-an-address"])
