"""Request signing: the canonical string, the timestamp window, replay refusal, constant-time comparison, and
generated junk thrown at the header and signature checks."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from config.settings import ApiKey
from security import signing
from security.signing import AuthError, RequestVerifier, canonical_string, sign

SECRET = "k7-secret-0123456789abcdef"
NOW = 1_800_000_000
NONCE = "nonce-0123456789AB"


def verifier(now: float = NOW, window: float = 300) -> RequestVerifier:
    keys = {"k7": ApiKey(secret=SecretStr(SECRET), company_id=7),
            "ops": ApiKey(secret=SecretStr("ops-secret-0123456789"), company_id=None)}
    return RequestVerifier(keys, window=window, clock=lambda: now)


def headers(method: str = "POST", path: str = "/api/v1/jobs", body: bytes = b"{}", *, ts: int = NOW,
            nonce: str = NONCE, key_id: str = "k7", secret: str = SECRET) -> dict[str, str]:
    return {
        "X-Offload-Key-Id": key_id,
        "X-Offload-Timestamp": str(ts),
        "X-Offload-Nonce": nonce,
        "X-Offload-Signature": sign(secret, method, path, str(ts), nonce, body),
    }


def check(v: RequestVerifier, h: dict[str, str], method: str = "POST", path: str = "/api/v1/jobs",
          body: bytes = b"{}") -> signing.Caller:
    return v.verify(v.check_headers(h), method, path, body)


def code_of(v: RequestVerifier, h: dict[str, str], **kw: object) -> str:
    with pytest.raises(AuthError) as info:
        check(v, h, **kw)  # type: ignore[arg-type]
    return info.value.code


def test_the_canonical_string_is_method_path_timestamp_nonce_and_body_hash_on_lines():
    digest = hashlib.sha256(b'{"a":1}').hexdigest()
    assert canonical_string("post", "/api/v1/jobs?x=1", "1800000000", NONCE, digest) == (
        f"POST\n/api/v1/jobs?x=1\n1800000000\n{NONCE}\n{digest}".encode())
    expected = hmac.new(SECRET.encode(), f"POST\n/api/v1/jobs\n1800000000\n{NONCE}\n{digest}".encode(),
                        hashlib.sha256).hexdigest()
    assert sign(SECRET, "POST", "/api/v1/jobs", "1800000000", NONCE, b'{"a":1}') == expected


def test_the_empty_body_hashes_as_the_empty_string():
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert canonical_string("GET", "/p", "1", NONCE, signing.body_digest(b"")).endswith(empty.encode())


def test_a_correct_signature_names_the_caller_and_its_company():
    caller = check(verifier(), headers())
    assert (caller.key_id, caller.company_id, caller.is_admin) == ("k7", 7, False)
    admin = check(verifier(), headers(key_id="ops", secret="ops-secret-0123456789"))
    assert admin.is_admin and admin.may_see(7) and admin.may_see(8)
    assert caller.may_see(7) and not caller.may_see(8) and not caller.may_see(None)


@pytest.mark.parametrize("change", ["method", "path", "query", "body", "timestamp", "nonce", "secret"])
def test_changing_any_signed_part_breaks_the_signature(change):
    h = headers()
    kw: dict[str, object] = {}
    if change == "method":
        kw["method"] = "PUT"
    elif change == "path":
        kw["path"] = "/api/v1/jobs/other"
    elif change == "query":
        kw["path"] = "/api/v1/jobs?company_id=8"
    elif change == "body":
        kw["body"] = b'{"company_id": 8}'
    elif change == "timestamp":
        h["X-Offload-Timestamp"] = str(NOW - 1)
    elif change == "nonce":
        h["X-Offload-Nonce"] = "another-nonce-0123456"
    else:
        h = headers(secret="not-the-secret-0123456")
    assert code_of(verifier(), h, **kw) == "bad_signature"


def test_missing_headers_unknown_keys_and_malformed_values_are_refused_before_the_body_is_read():
    v = verifier()
    for name in ("X-Offload-Key-Id", "X-Offload-Timestamp", "X-Offload-Nonce", "X-Offload-Signature"):
        h = headers()
        del h[name]
        with pytest.raises(AuthError) as info:
            v.check_headers(h)
        assert info.value.code == "missing_signature"
    cases = {"unknown_key": {"X-Offload-Key-Id": "k9"}, "bad_timestamp": {"X-Offload-Timestamp": "12.5"},
             "bad_nonce": {"X-Offload-Nonce": "short"}, "bad_signature": {"X-Offload-Signature": "zz" * 32}}
    for code, change in cases.items():
        with pytest.raises(AuthError) as info:
            v.check_headers({**headers(), **change})
        assert info.value.code == code


@pytest.mark.parametrize(("offset", "ok"), [(0, True), (300, True), (-300, True), (301, False), (-301, False),
                                            (86_400, False)])
def test_the_timestamp_must_be_within_the_window_either_side_of_now(offset, ok):
    h = headers(ts=NOW + offset)
    if ok:
        check(verifier(), h)
    else:
        assert code_of(verifier(), h) == "stale_timestamp"


def test_a_replayed_request_is_refused_and_a_new_nonce_is_not_a_replay():
    v = verifier()
    check(v, headers())
    assert code_of(v, headers()) == "replayed_request"
    check(v, headers(nonce="a-fresh-nonce-0123456"))  # same URL, same second, new nonce: fine


def test_a_replay_stays_refused_until_its_timestamp_leaves_the_window():
    clock = [NOW]
    v = RequestVerifier({"k7": ApiKey(secret=SecretStr(SECRET), company_id=7)}, window=300, clock=lambda: clock[0])
    check(v, headers())
    clock[0] = NOW + 299
    assert code_of(v, headers()) == "replayed_request"
    clock[0] = NOW + 301  # forgotten now, but the timestamp is stale: still refused
    assert code_of(v, headers()) == "stale_timestamp"
    check(v, headers(ts=NOW + 301, nonce="a-later-nonce-0123456"))
    assert len(v.replays) == 1  # the expired signature was dropped when the next one was remembered


def test_bad_signatures_are_not_remembered_so_junk_cannot_fill_the_replay_cache():
    v = verifier()
    for i in range(50):
        h = headers()
        h["X-Offload-Signature"] = f"{i:064x}"
        assert code_of(v, h) == "bad_signature"
    assert len(v.replays) == 0


def test_the_signature_is_compared_in_constant_time(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", recording)
    check(verifier(), headers())
    with pytest.raises(AuthError):
        check(verifier(), {**headers(), "X-Offload-Signature": "0" * 64})
    assert len(calls) == 2


def test_an_upper_case_signature_is_the_same_signature():
    h = headers()
    h["X-Offload-Signature"] = h["X-Offload-Signature"].upper()
    check(verifier(), h)


# --- generated junk -----------------------------------------------------------------------------

_text = st.text(max_size=80)
_header_names = st.sampled_from(["X-Offload-Key-Id", "X-Offload-Timestamp", "X-Offload-Nonce",
                                 "X-Offload-Signature", "X-Other"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_header_names, _text, max_size=5), st.binary(max_size=200), _text)
def test_junk_headers_are_refused_with_an_auth_error_and_nothing_else(junk, body, path):
    v = verifier()
    with pytest.raises(AuthError):
        check(v, junk, path=path or "/", body=body)
    assert len(v.replays) == 0


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["GET", "POST", "PUT"]), st.text(min_size=1, max_size=100), st.binary(max_size=500),
       st.integers(min_value=-300, max_value=300), st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True))
def test_any_request_signed_with_the_key_verifies_once(method, path, body, skew, nonce):
    v = verifier()
    h = headers(method, path, body, ts=NOW + skew, nonce=nonce)
    assert check(v, h, method=method, path=path, body=body).company_id == 7
    with pytest.raises(AuthError) as info:
        check(v, h, method=method, path=path, body=body)
    assert info.value.code == "replayed_request"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(min_value=0, max_value=299), st.integers(1, 255))
def test_flipping_any_byte_of_the_body_breaks_the_signature(body, position, flip):
    h = headers(body=body)
    tampered = bytearray(body)
    tampered[position % len(body)] ^= flip
    assert code_of(verifier(), h, body=bytes(tampered)) == "bad_signature"
