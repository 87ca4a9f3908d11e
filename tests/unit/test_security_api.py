"""The API's request security: each test fails on the code before its fix. Property tests cover the signing path
(slow bodies, clock edges) and the callback SSRF check over IP literal forms."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from api import params
from api.errors import ApiError
from api.ingest import NotAJob, check_job
from api.webhooks import Refused, check_sns_url, verify_mailgun, verify_sendgrid
from config.settings import ApiKey, Settings
from schemas.intake import validate_request
from security.callback_urls import check_callback_url, non_public
from security.seen import MemorySeen
from security.signing import AuthError, RequestVerifier, sign
from tests.support.production import PRODUCTION_SECRETS

SECRET = "k7-secret-0123456789abcdef"
WINDOW = 300
TS = 1_800_000_000


# --- finding 3: a key without company_id is not an admin key ---------------------------------------------


def test_a_key_without_company_id_is_refused_rather_than_made_an_admin_key():
    with pytest.raises(ValidationError, match="company_id"):
        Settings(environment="test", api_keys={"moodle-7": {"secret": "s" * 32}})
    with pytest.raises(ValidationError, match="company_id"):
        Settings(environment="production", **PRODUCTION_SECRETS,
                 api_keys={"moodle-7": {"secret": "s" * 32}})
    admin = Settings(environment="test", api_keys={"ops": {"secret": "s" * 32, "company_id": None}})
    assert admin.api_keys["ops"].company_id is None  # admin only when said so


# --- finding 2: a slowly sent body cannot carry a replay past the window -----------------------------------


def _verifier(clock: list[float]) -> RequestVerifier:
    return RequestVerifier({"k7": ApiKey(secret=SecretStr(SECRET), company_id=7)}, window=WINDOW,
                           clock=lambda: clock[0], seen=MemorySeen())


def _headers(ts: int, nonce: str = "nonce-0123456789AB", body: bytes = b"{}") -> dict[str, str]:
    return {"X-Offload-Key-Id": "k7", "X-Offload-Timestamp": str(ts), "X-Offload-Nonce": nonce,
            "X-Offload-Signature": sign(SECRET, "POST", "/api/v1/jobs", str(ts), nonce, body)}


def _attempt(v: RequestVerifier, clock: list[float], ts: int, headers_at: float, body_at: float) -> str:
    """One request whose headers arrive at ``headers_at`` and whose body has arrived by ``body_at``."""
    clock[0] = headers_at
    try:
        signed = v.check_headers(_headers(ts))
        clock[0] = body_at
        asyncio.run(v.admit(signed, "POST", "/api/v1/jobs", b"{}"))
    except AuthError as exc:
        return exc.code
    return "ok"


def test_a_replay_whose_body_arrives_after_the_original_is_forgotten_is_refused():
    """The review's attack: headers at the edge of the window, body sent slowly past timestamp + window."""
    clock = [float(TS)]
    v = _verifier(clock)
    assert _attempt(v, clock, TS, TS, TS) == "ok"
    # The original is remembered until TS + WINDOW; a replay's headers arrive just in time, its body later.
    assert _attempt(v, clock, TS, TS + WINDOW, TS + WINDOW + 30) == "stale_timestamp"


offsets = st.integers(min_value=-2 * WINDOW, max_value=2 * WINDOW)
delays = st.integers(min_value=0, max_value=2 * WINDOW)


@settings(max_examples=400, deadline=None)
@given(first_headers=offsets, first_delay=delays, replay_after=st.integers(min_value=0, max_value=4 * WINDOW),
       replay_delay=delays, fraction=st.sampled_from([0.0, 0.25, 0.5, 0.999]))
def test_property_admitted_only_inside_the_window_at_both_ends_and_never_twice(first_headers, first_delay,
                                                                               replay_after, replay_delay,
                                                                               fraction):
    clock = [0.0]
    v = _verifier(clock)
    h1 = TS + first_headers + fraction
    b1 = h1 + first_delay
    outcome = _attempt(v, clock, TS, h1, b1)
    inside = abs(h1 - TS) <= WINDOW and abs(b1 - TS) <= WINDOW
    assert (outcome == "ok") == inside, (outcome, h1, b1)
    h2 = b1 + replay_after
    replay = _attempt(v, clock, TS, h2, h2 + replay_delay)
    if inside:
        assert replay != "ok"  # the same signed request is never admitted twice, whatever the timing
    v.replays = type(v.replays)()  # another replica: only the shared store remembers
    if inside:
        assert _attempt(v, clock, TS, h2, h2 + replay_delay) != "ok"


@settings(max_examples=200, deadline=None)
@given(skew=st.integers(min_value=-WINDOW - 3, max_value=WINDOW + 3))
def test_property_the_window_edges_are_inclusive_and_the_same_for_headers_and_body(skew):
    clock = [0.0]
    v = _verifier(clock)
    expected = "ok" if abs(skew) <= WINDOW else "stale_timestamp"
    assert _attempt(v, clock, TS, TS + skew, TS + skew) == expected


# --- finding 5 (unit part): the shared store's contract -------------------------------------------------


def test_the_seen_store_accepts_a_token_once_until_it_expires_and_forgets_on_request():
    seen = MemorySeen()

    async def run() -> list[bool]:
        return [
            await seen.first_time("request", "sig", expires_at=100, now=0),
            await seen.first_time("request", "sig", expires_at=100, now=100),  # the edge: still remembered
            await seen.first_time("mailgun", "sig", expires_at=100, now=1),  # scopes are separate
            await seen.first_time("request", "sig", expires_at=300, now=100.5),  # expired: taken over
        ]

    assert asyncio.run(run()) == [True, False, True, True]
    asyncio.run(seen.forget("request", "sig"))
    assert asyncio.run(seen.first_time("request", "sig", expires_at=400, now=101))


# --- finding 8: IPv6 forms that reach inside ------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://[::7f00:1]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:a9fe:a9fe::]/",
                                 "http://[fec0::1]/", "http://[64:ff9b:1::a00:1]/",
                                 "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/"])
def test_ipv6_literals_that_reach_inside_are_refused(url):
    refusal = asyncio.run(check_callback_url(url, allow_private=False))
    assert refusal is not None and refusal.code == "callback_url_forbidden"


def test_nat64_and_6to4_of_a_public_ipv4_address_are_judged_by_that_address():
    for url in ("https://[64:ff9b::5db8:d70e]/cb", "https://[2002:5db8:d70e::1]/cb", "https://[2606:4700::1]/"):
        assert asyncio.run(check_callback_url(url, allow_private=False)) is None, url


def _v4_forms(v4: ipaddress.IPv4Address) -> list[str]:
    n = int(v4)
    return [
        f"::ffff:{v4}", f"::{v4}", f"64:ff9b::{v4}", f"64:ff9b:1::{n >> 16:x}:{n & 0xFFFF:x}",
        f"2002:{n >> 16:x}:{n & 0xFFFF:x}::1",
        # Teredo: the client address is stored inverted in the last 32 bits.
        f"2001:0:4136:e378:8000:63bf:{(~n >> 16) & 0xFFFF:x}:{~n & 0xFFFF:x}",
    ]


inside_v4 = st.one_of(
    st.ip_addresses(v=4, network="127.0.0.0/8"), st.ip_addresses(v=4, network="10.0.0.0/8"),
    st.ip_addresses(v=4, network="172.16.0.0/12"), st.ip_addresses(v=4, network="192.168.0.0/16"),
    st.ip_addresses(v=4, network="169.254.0.0/16"), st.ip_addresses(v=4, network="100.64.0.0/10"),
    st.ip_addresses(v=4, network="0.0.0.0/8"), st.ip_addresses(v=4, network="240.0.0.0/4"),
    st.ip_addresses(v=4, network="224.0.0.0/4"),
)


@settings(max_examples=300, deadline=None)
@given(v4=inside_v4)
def test_property_every_ipv6_form_of_an_inside_ipv4_address_is_refused(v4):
    for form in _v4_forms(v4):
        address = ipaddress.ip_address(form)
        assert non_public(address), form
        refusal = asyncio.run(check_callback_url(f"https://[{form}]/cb", allow_private=False))
        assert refusal is not None and refusal.code == "callback_url_forbidden", form


@settings(max_examples=200, deadline=None)
@given(v6=st.one_of(st.ip_addresses(v=6, network="fec0::/10"), st.ip_addresses(v=6, network="fe80::/10"),
                    st.ip_addresses(v=6, network="fc00::/7"), st.ip_addresses(v=6, network="ff00::/8"),
                    st.ip_addresses(v=6, network="::/96"), st.ip_addresses(v=6, network="2001:db8::/32")))
def test_property_reserved_site_local_and_private_ipv6_is_refused(v6):
    assert non_public(v6), str(v6)


@settings(max_examples=100, deadline=None)
@given(v4=st.ip_addresses(v=4, network="127.0.0.0/8") | st.ip_addresses(v=4, network="10.0.0.0/8"),
       form=st.sampled_from(["decimal", "hex", "octal"]))
def test_property_ipv4_literal_spellings_of_inside_addresses_are_refused(v4, form):
    n = int(v4)
    host = {"decimal": str(n), "hex": f"0x{n:x}", "octal": ".".join(f"0{int(o):o}" for o in str(v4).split("."))}
    refusal = asyncio.run(check_callback_url(f"http://{host[form]}/cb", allow_private=False))
    # The resolver reads these numerically (no DNS query); whatever it makes of them is not let inside.
    assert refusal is not None and refusal.code in ("callback_url_forbidden", "callback_url_unresolvable")


# --- finding 9: SNS certificate hosts -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://sns.s3.amazonaws.com/x.pem", "https://sns.sns.amazonaws.com/x.pem",
                                 "https://sns.eu-west-1.amazonaws.com.evil.org/x.pem",
                                 "https://sns.eu-west-1.amazonaws.com.cn/x.pem"])
def test_sns_urls_outside_the_regional_sns_hosts_are_refused(url):
    with pytest.raises(Refused, match="SNS URL"):
        check_sns_url(url)


@pytest.mark.parametrize("host", ["sns.eu-west-1.amazonaws.com", "sns.us-gov-west-1.amazonaws.com",
                                  "sns.cn-north-1.amazonaws.com.cn", "sns.ap-southeast-2.amazonaws.com"])
def test_regional_china_and_govcloud_sns_hosts_are_accepted(host):
    check_sns_url(f"https://{host}/SimpleNotificationService-abc.pem")


# --- finding 11: 400, never 500, on bad input ------------------------------------------------------------


DEEP = b'{"job_id": "deep", "template_data": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}"


def test_json_nested_thousands_deep_is_a_400_not_a_500():
    with pytest.raises(ApiError) as info:
        params.json_object(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", required=True)
    assert (info.value.status, info.value.code) == (400, "malformed_json")
    with pytest.raises(NotAJob) as job:
        check_job(DEEP, max_recipients=10)
    assert job.value.code == "malformed_json"
    with pytest.raises(ValueError, match="not JSON"):  # the worker dead-letters it instead of crashing
        validate_request(DEEP, max_recipients=10)


@pytest.mark.parametrize("value", ["²", "١٢", "𝟗", "5²"])
def test_non_ascii_digits_in_query_and_path_are_a_400_or_404(value):
    request = make_mocked_request("GET", f"/api/v1/jobs?limit={value}")
    with pytest.raises(ApiError) as info:
        params.integer(request, "limit", 50, low=1, high=200)
    assert (info.value.status, info.value.code) == (400, "invalid_parameter")
    request = make_mocked_request("GET", "/x", match_info={"company_id": value})
    with pytest.raises(ApiError) as info:
        params.company_id(request)
    assert info.value.status == 404


def test_non_ascii_digits_in_webhook_timestamps_are_refused_cleanly():
    with pytest.raises(Refused, match="timestamp"):
        verify_sendgrid("unused", "c2ln", "²", b"[]", max_age=600, now=TS)
    with pytest.raises(Refused, match="incomplete"):
        verify_mailgun("key", {"timestamp": "١٢", "token": "t", "signature": "00"}, max_age=600, now=TS)
    with pytest.raises(Refused, match="does not verify"):
        verify_mailgun("key", {"timestamp": str(TS), "token": "t", "signature": "é" * 64}, max_age=600, now=TS)


# --- finding 13: a callback URL's query is sealed, opened only by the worker --------------------------------


def test_a_callback_query_is_sealed_bound_to_its_job_and_opened_back_to_the_full_url():
    from security.callback_urls import SealedQueryError, open_query, redacted, seal_query

    url = "https://moodle.example.org/webservice/rest/server.php?wstoken=0123abcd-TOKEN&wsfunction=x"
    base, sealed = seal_query(url, "job-1", b"k" * 32)
    assert base == "https://moodle.example.org/webservice/rest/server.php"
    assert sealed is not None and "TOKEN" not in sealed
    assert open_query(base, sealed, "job-1", b"k" * 32) == url
    with pytest.raises(SealedQueryError):
        open_query(base, sealed, "job-2", b"k" * 32)  # moved to another job: refused
    with pytest.raises(SealedQueryError):
        open_query(base, sealed, "job-1", b"another-secret" * 3)
    assert seal_query("https://moodle.example.org/cb.php", "job-1", b"k" * 32) == ("https://moodle.example.org/cb.php",
                                                                                  None)
    assert redacted(url) == ("https://moodle.example.org/webservice/rest/server.php"
                             "?wstoken=[redacted]&wsfunction=[redacted]")
    assert redacted(base, sealed).endswith("?[redacted]")


def test_production_refuses_the_development_callback_url_and_message_id_secrets():
    base = {"environment": "production", "certificate_code_secret": "c" * 40, "unsubscribe_secret": "s" * 40}
    with pytest.raises(ValidationError, match="message_id_secret"):
        Settings(**base, callback_url_secret="u" * 40)
    with pytest.raises(ValidationError, match="callback_url_secret"):
        Settings(**base, message_id_secret="m" * 40)
    Settings(**base, message_id_secret="m" * 40, callback_url_secret="u" * 40)
    with pytest.raises(ValidationError, match="api_retry_interval"):
        Settings(**base, message_id_secret="m" * 40, callback_url_secret="u" * 40, api_retry_interval=0)


# --- finding 1 (pure part): the template_data cap -------------------------------------------------------------


def test_template_data_over_the_limit_is_a_problem_with_its_size():
    from schemas.intake import template_data_problem

    assert template_data_problem({"course": "x" * 100}, 1024) is None
    problem = template_data_problem({"course": "é" * 40_000}, 64 * 1024)
    assert problem is not None and problem.field == "template_data" and "80013 bytes" in problem.message
    assert Settings(environment="test").template_data_max_bytes == 64 * 1024


# --- finding 1 (retry part): one retry request per job per interval ------------------------------------------


def test_a_second_retry_request_within_the_interval_is_a_429_with_a_code():
    from dataclasses import dataclass

    from api.jobs import _limit_retries

    @dataclass
    class State:  # the two things _limit_retries reads from ApiState
        settings: Settings
        verifier: RequestVerifier

    state = State(Settings(environment="test", api_retry_interval=60),
                  RequestVerifier({}, window=WINDOW, seen=MemorySeen()))
    asyncio.run(_limit_retries(state, "job-1"))  # type: ignore[arg-type]
    with pytest.raises(ApiError) as info:
        asyncio.run(_limit_retries(state, "job-1"))  # type: ignore[arg-type]
    assert (info.value.status, info.value.code) == (429, "retry_rate_limited")
    asyncio.run(_limit_retries(state, "job-2"))  # type: ignore[arg-type]  # per job
