"""The public rate limit and the admin sign-in throttle are shared by API replicas through Postgres: two real
API apps on loopback ports with the shared Postgres allow one budget between them, not one each. With Postgres
unreachable, a real API process still limits (with its own memory) and its health says the shared store is down."""

from __future__ import annotations

import urllib.parse

import pytest
from pydantic import SecretStr

from tests.support.api import ApiProcess, ApiServer, api_keys, send
from tests.support.observe import wait_for
from tests.support.stack import free_port

pytestmark = pytest.mark.integration

ADMIN, ADMIN_SECRET = "ops", "ops-shared-limits-secret-0123456789"


def unsubscribe_page(base_url: str) -> int:
    """A public route that needs neither Postgres nor Kafka: a token that is not ours answers 404."""
    return send(base_url, "GET", "/u/u1.7.1.not-ours.AAAA", b"", {}).status


def sign_in(base_url: str, secret: str) -> int:
    form = urllib.parse.urlencode({"key_id": ADMIN, "secret": secret}).encode()
    return send(base_url, "POST", "/ui/login", form, {"Content-Type": "application/x-www-form-urlencoded"}).status


def test_two_api_replicas_share_one_public_rate_limit_and_one_sign_in_throttle(settings_factory):
    settings = settings_factory(public_rate_limit_per_minute=6, api_keys=api_keys(**{ADMIN: (ADMIN_SECRET, None)}),
                                ui_session_secret=SecretStr("ui-session-secret-shared-limits-0123456789"))
    with ApiServer(settings) as one, ApiServer(settings) as two:
        # Six requests a minute for this client in all, whichever replica answers: alternate between them.
        answers = [unsubscribe_page((one, two)[i % 2].base_url) for i in range(6)]
        assert answers == [404] * 6
        assert unsubscribe_page(one.base_url) == 429 and unsubscribe_page(two.base_url) == 429

    unlimited = settings.model_copy(update={"public_rate_limit_per_minute": 0})  # only the throttle now
    with ApiServer(unlimited) as one, ApiServer(unlimited) as two:
        # Ten failed sign-ins per client in five minutes, counted together: five at each replica.
        assert [sign_in((one, two)[i % 2].base_url, "wrong") for i in range(10)] == [401] * 10
        assert sign_in(one.base_url, ADMIN_SECRET) == 429 and sign_in(two.base_url, "wrong") == 429


def test_with_the_shared_store_unreachable_a_replica_limits_on_its_own_and_says_so(settings_factory, tmp_path):
    settings = settings_factory(public_rate_limit_per_minute=3, api_db_timeout=1.0,
                                database_url=f"postgresql://offload@127.0.0.1:{free_port()}/offload")
    with ApiProcess(settings, tmp_path / "api.log") as api:
        assert [unsubscribe_page(api.base_url) for _ in range(3)] == [404] * 3
        assert unsubscribe_page(api.base_url) == 429  # limited all the same: never waved through
        health = wait_for(lambda: (h := send(api.base_url, "GET", "/api/v1/health", b"", {}).body)["checks"].get(
            "rate-limit-store", {}).get("up") is False and h, timeout=30, what="health saying the store is down")
        assert health["status"] == "degraded"
        assert health["checks"]["rate-limit-store"]["reason"].endswith(
            "rate limits and the sign-in throttle are per replica")
        assert "shared rate limits unavailable" in api.log_path.read_text()
