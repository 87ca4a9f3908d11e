"""DKIM signatures made here, checked by dkimpy (an independent implementation); the DNS record check."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.email.dkim import DkimKeyError, DkimSigner, DkimSigners, split_message
from adapters.email.dkim_dns import check_published, record_problem
from config.deliverability import DkimKey
from config.settings import Settings
from content.email.compose import compose_message
from content.email.templates import RenderedEmail
from resilience.dependencies import DEPENDENCIES
from tests.support.dkim_keys import dkimpy_verify, pem_of, rsa_key, txt_record, write_key

NAME = "s2026._domainkey.school7.example.org"


def key_config(tmp_path: Path) -> DkimKey:
    return DkimKey(domain="school7.example.org", selector="s2026",
                   key_file=write_key(tmp_path / "dkim.pem", rsa_key()))


def message(**extra: str) -> bytes:
    rendered = RenderedEmail(subject="Reminder: Fire   Safety is due", text="Dear Ana,  \nplease finish.\n\n\n",
                             html="<p>Dear Ana,</p>")
    return compose_message(rendered, from_address="noreply@school7.example.org", from_name="School 7",
                           to_address="ana@example.org", to_name="Ana Lima", message_id="<m1@offload.example>",
                           headers=extra)


UNSUBSCRIBE = {"List-Unsubscribe": "<https://offload.example/u/TOKEN>, <mailto:unsubscribe@offload.example?subject=u>",
               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def test_a_signed_message_verifies_with_dkimpy_and_covers_the_headers_receivers_require(tmp_path):
    signed = DkimSigner(key_config(tmp_path)).sign(message(**UNSUBSCRIBE))
    assert dkimpy_verify(signed, name=NAME, key=rsa_key())
    fields, _ = split_message(signed)
    assert fields[0][0] == b"DKIM-Signature"
    tags = {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in
            " ".join(fields[0][1].decode().split()).split(";"))}
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == ("rsa-sha256", "relaxed/relaxed", "school7.example.org",
                                                            "s2026")
    assert set(tags["h"].split(":")) >= {"from", "to", "subject", "date", "message-id", "mime-version",
                                         "content-type", "list-unsubscribe", "list-unsubscribe-post"}


@pytest.mark.parametrize("tamper", [
    lambda raw: raw.replace(b"Subject: Reminder", b"Subject: Urgent reminder"),
    lambda raw: raw.replace(b"please finish", b"please pay now"),
    lambda raw: raw.replace(b"https://offload.example/u/TOKEN", b"https://evil.example/u/TOKEN"),
    lambda raw: raw.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b""),
    lambda raw: raw.replace(b"To: ", b"To: victim@example.org, ", 1),
], ids=["subject", "body", "unsubscribe-url", "one-click-header-removed", "recipient"])
def test_any_change_to_a_signed_part_breaks_the_signature(tmp_path, tamper):
    signed = DkimSigner(key_config(tmp_path)).sign(message(**UNSUBSCRIBE))
    changed = tamper(signed)
    assert changed != signed
    assert not dkimpy_verify(changed, name=NAME, key=rsa_key())


def test_relaxed_canonicalization_survives_refolding_and_trailing_space(tmp_path):
    signed = DkimSigner(key_config(tmp_path)).sign(message())
    refolded = signed.replace(b"Subject: Reminder: Fire   Safety", b"Subject:  Reminder:\r\n Fire Safety")
    assert dkimpy_verify(refolded.replace(b"please finish.", b"please finish.   "), name=NAME, key=rsa_key())


def test_another_key_in_dns_fails_verification(tmp_path):
    signed = DkimSigner(key_config(tmp_path)).sign(message())
    assert not dkimpy_verify(signed, name=NAME, key=rsa_key(1024))


def test_inline_key_signs_like_a_key_file_and_never_shows_in_repr(tmp_path):
    inline = DkimKey(domain="school7.example.org", selector="s2026", private_key=pem_of(rsa_key()).decode())
    signer = DkimSigner(inline)
    assert dkimpy_verify(signer.sign(message()), name=NAME, key=rsa_key())
    assert "PRIVATE" not in repr(signer) + repr(inline) + str(Settings(dkim_keys={"7": inline}))


def test_a_key_must_come_from_exactly_one_place():
    with pytest.raises(ValidationError, match="exactly one of key_file or private_key"):
        DkimKey(domain="school7.example.org", selector="s2026")
    with pytest.raises(ValidationError, match="company ids"):
        Settings(dkim_keys={"school": {"domain": "a.example.org", "selector": "s", "private_key": "x"}})


def test_production_refuses_an_unreadable_key_and_development_sends_unsigned(tmp_path, caplog):
    missing = {"7": DkimKey(domain="school7.example.org", selector="s2026", key_file=tmp_path / "nope.pem")}
    with pytest.raises(DkimKeyError, match=r"s2026._domainkey.school7.example.org: cannot read .*nope.pem"):
        DkimSigners(missing, strict=True)
    lenient = DkimSigners(missing, strict=False)
    assert lenient.for_company(7) is None and "cannot read" in lenient.problems["7"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(DkimKeyError, match="not an unencrypted PEM private key"):
        DkimSigners({"*": DkimKey(domain="a.example.org", selector="s", key_file=garbage)}, strict=True)


def test_the_company_key_wins_over_the_shared_one(tmp_path):
    own = key_config(tmp_path)
    shared = DkimKey(domain="offload.example.org", selector="all", private_key=pem_of(rsa_key()).decode())
    signers = DkimSigners({"7": own, "*": shared}, strict=True)
    assert signers.for_company(7).domain == "school7.example.org"  # type: ignore[union-attr]
    assert signers.for_company(8).domain == "offload.example.org"  # type: ignore[union-attr]
    assert DkimSigners({"7": own}, strict=True).for_company(8) is None


def test_dns_record_problems_are_named():
    key = DkimKey(domain="school7.example.org", selector="s2026", private_key="unused")
    public = txt_record(rsa_key()).split("p=")[1]
    assert record_problem(key, public, [txt_record(rsa_key())]) is None
    assert record_problem(key, public, ["v=DKIM1; k=rsa; p=" + public[:40] + " " + public[40:]]) is None
    assert "no DKIM record" in str(record_problem(key, public, []))
    assert "no DKIM record" in str(record_problem(key, public, ["v=spf1 -all"]))
    assert "another key" in str(record_problem(key, public, [txt_record(rsa_key(1024))]))
    assert "revoked" in str(record_problem(key, public, ["v=DKIM1; p="]))


def test_the_start_check_reports_a_missing_record_in_health_and_clears_when_published(tmp_path):
    key = key_config(tmp_path)
    published: dict[str, list[str]] = {}

    async def lookup(name: str) -> list[str]:
        return published.get(name, [])

    dependency = f"dkim:{NAME}"
    assert asyncio.run(check_published({"7": key}, lookup)) == {dependency: pytest.approx(
        f"no DKIM record at {NAME} TXT: receivers cannot verify the signature (publish v=DKIM1; k=rsa; p=…)")}
    assert "no DKIM record" in DEPENDENCIES.down()[dependency]
    published[NAME] = [txt_record(rsa_key())]
    assert asyncio.run(check_published({"7": key}, lookup)) == {dependency: None}
    assert dependency not in DEPENDENCIES.down()



def test_a_production_worker_with_an_unreadable_key_refuses_to_start_and_says_which(tmp_path):
    pem = tmp_path / "dkim-7.pem"
    write_key(pem, rsa_key())
    pem.chmod(0)  # unreadable (root reads anything: then the key file is missing instead)
    path = pem if not os.access(pem, os.R_OK) else tmp_path / "missing.pem"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")},
           "OFFLOAD_ENVIRONMENT": "production", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "OFFLOAD_MESSAGE_ID_SECRET": "m" * 40, "OFFLOAD_CALLBACK_URL_SECRET": "c" * 40,
           "OFFLOAD_CERTIFICATE_CODE_SECRET": "x" * 40, "OFFLOAD_UNSUBSCRIBE_SECRET": "u" * 40,
           "OFFLOAD_DKIM_KEYS": json.dumps({"7": {"domain": "school7.example.org", "selector": "s2026",
                                                  "key_file": str(path)}})}
    done = subprocess.run([sys.executable, "-m", "offload.cli", "worker"], env=env, capture_output=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1
    assert done.stderr.decode().strip().endswith(
        f"configuration error: DKIM key s2026._domainkey.school7.example.org: cannot read {path}: "
        + ("Permission denied" if path == pem else "No such file or directory"))


def test_keys_not_aligned_with_the_from_domain_are_named(tmp_path):
    signers = DkimSigners({"7": key_config(tmp_path)}, strict=True)
    assert signers.misaligned("noreply@school7.example.org") == []
    assert signers.misaligned("noreply@mail.school7.example.org") == []
    assert signers.misaligned("noreply@moodle.example.org") == ["s2026._domainkey.school7.example.org"]
    assert signers.misaligned("noreply@evilschool7.example.org") == ["s2026._domainkey.school7.example.org"]
