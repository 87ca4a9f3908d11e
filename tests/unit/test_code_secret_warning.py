"""Issue 11 finding 4: certificate codes under the public development secret are said loudly: in health on every
check (not only once in a start-up log), whether workers refuse them or the dev stack's opt-in allows them."""

from __future__ import annotations

from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from api.health import health
from api.state import STATE
from config.settings import Settings

KEYS = {"moodle-7": {"secret": "k" * 32, "company_id": 7}}
OWN = SecretStr("a-certificate-code-secret-of-our-own-0123")
# The other secrets with a public development default, set to values of our own.
OWN_OTHERS = {"unsubscribe_secret": "u" * 40, "message_id_secret": "m" * 40, "callback_url_secret": "c" * 40}


async def _health_of(settings: Settings) -> dict:
    app = web.Application()
    app[STATE] = SimpleNamespace(settings=settings)  # type: ignore[assignment]  # health reads only settings
    app.router.add_get("/api/v1/health", health)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/api/v1/health")
        assert response.status == 200
        return await response.json()


async def test_health_warns_when_certificates_would_be_refused_for_the_public_code_secret():
    body = await _health_of(Settings(environment="development", api_keys=KEYS))
    assert any("certificate_code_secret" in w and "refuse" in w for w in body["warnings"]), body


async def test_health_warns_when_the_dev_stack_opt_in_issues_codes_anyone_can_compute():
    body = await _health_of(Settings(environment="development", api_keys=KEYS,
                                     certificate_code_secret_allow_default=True))
    assert any("OFFLOAD_CERTIFICATE_CODE_SECRET_ALLOW_DEFAULT" in w and "anyone can compute" in w
               for w in body["warnings"]), body


async def test_health_has_no_warning_with_a_secret_of_our_own_and_keys():
    body = await _health_of(Settings(environment="development", api_keys=KEYS, certificate_code_secret=OWN,
                                     **OWN_OTHERS))
    assert body["warnings"] == []
    assert OWN.get_secret_value() not in str(body)


async def test_health_says_when_no_api_keys_are_configured():
    body = await _health_of(Settings(environment="development", certificate_code_secret=OWN, **OWN_OTHERS))
    assert body["warnings"] == ["api_keys: none configured (OFFLOAD_API_KEYS); every signed request is refused"]


def test_the_compose_file_does_not_opt_in_to_the_public_code_secret():
    """docker compose is how a site may well run in earnest (it has an HA profile); only the loopback dev stack
    (devtools.devstack, test_public_hardening) opts in. Both variables come from the shell, unset by default."""
    from pathlib import Path

    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    for name in ("worker", "api"):
        env = compose["services"][name]["environment"]
        assert env["OFFLOAD_CERTIFICATE_CODE_SECRET_ALLOW_DEFAULT"] is None, (name, env)  # None: from the shell
        assert env["OFFLOAD_CERTIFICATE_CODE_SECRET"] is None, (name, env)
        assert env["OFFLOAD_ENVIRONMENT"] != "test", name


async def test_health_names_every_other_secret_left_at_its_public_default():
    body = await _health_of(Settings(environment="development", api_keys=KEYS, certificate_code_secret=OWN))
    named = [w.split(":")[0] for w in body["warnings"]]
    assert named == ["unsubscribe_secret", "message_id_secret", "callback_url_secret"], body
    assert any("unsubscribe links for any learner" in w for w in body["warnings"])
