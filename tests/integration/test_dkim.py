"""DKIM through the real worker: messages received at the SMTP sink carry a signature dkimpy verifies."""

from __future__ import annotations

import asyncio
import email

import pytest

from config.deliverability import DkimKey
from offload.client import submit_job
from tests.support.api import ApiProcess, send
from tests.support.dkim_keys import dkimpy_verify, rsa_key, write_key
from tests.support.observe import wait_for, wait_for_job

pytestmark = pytest.mark.integration


def test_mail_sent_over_smtp_is_signed_with_the_company_key(settings_factory, topics_for, processes, job_factory,
                                                            mail_sink, tmp_path):
    key_file = write_key(tmp_path / "dkim-7.pem", rsa_key())
    settings = settings_factory(smtp_port=mail_sink.port, job_batch_size=10, dkim_dns_check=False,
                                dkim_keys={"7": DkimKey(domain="school7.example.org", selector="s2026",
                                                        key_file=key_file)})
    topics_for(settings)
    processes("worker", settings)
    processes("projector", settings)
    signed_job, other_job = job_factory("dkim-7", 25, company_id=7), job_factory("dkim-8", 5, company_id=8, start=100)
    asyncio.run(submit_job(settings, signed_job))
    asyncio.run(submit_job(settings, other_job))
    assert wait_for_job(settings, "dkim-7")["succeeded"] == 25
    assert wait_for_job(settings, "dkim-8")["succeeded"] == 5

    by_address = mail_sink.by_recipient()
    name = "s2026._domainkey.school7.example.org"
    for learner in signed_job["recipients"]:
        (received,) = by_address[learner["email"]]
        assert received.raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=school7.example.org")
        assert dkimpy_verify(received.raw, name=name, key=rsa_key()), learner["email"]
    tampered = by_address[signed_job["recipients"][0]["email"]][0].raw.replace(b"Dear ", b"Dear dear ", 1)
    assert not dkimpy_verify(tampered, name=name, key=rsa_key())
    # A course reminder is bulk mail: both RFC 8058 headers are there and under the signature (RFC 8058 §4),
    # so a relay that drops or rewrites the one-click link breaks it.
    first = by_address[signed_job["recipients"][0]["email"]][0]
    message = email.message_from_bytes(first.raw)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/u/" in message["List-Unsubscribe"]
    signature = " ".join(message["DKIM-Signature"].split())
    signed = signature.split(" h=", 1)[1].split(";", 1)[0].replace(" ", "").lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(signed), signed
    relinked = first.raw.replace(b"/u/", b"/x/", 1)
    assert relinked != first.raw and not dkimpy_verify(relinked, name=name, key=rsa_key())
    for learner in other_job["recipients"]:  # company 8 has no key and no "*" key: unsigned
        assert b"DKIM-Signature" not in by_address[learner["email"]][0].raw


def test_the_api_reports_an_unpublished_key_in_health_and_metrics(settings_factory, tmp_path):
    # Nobody publishes s2026._domainkey.school7.example.org: the lookup answers no record (or, on a machine
    # without DNS, fails); either way the API warns and says which key, and never refuses to serve.
    key_file = write_key(tmp_path / "dkim-7.pem", rsa_key())
    settings = settings_factory(dkim_dns_timeout=3, dkim_keys={"7": DkimKey(domain="school7.example.org",
                                                                             selector="s2026", key_file=key_file)})
    dependency = "dkim:s2026._domainkey.school7.example.org"
    with ApiProcess(settings, tmp_path / "api.log") as api:
        health = wait_for(lambda: (h := send(api.base_url, "GET", "/api/v1/health", b"", {}).body)["status"]
                          == "degraded" and h, timeout=30, what="the DKIM warning in health")
        (reason,) = [r for r in health["reasons"] if r.startswith(dependency)]
        assert "no DKIM record" in reason or "DNS lookup failed" in reason
        metrics = send(api.base_url, "GET", "/metrics", b"", {}).raw.decode()
        assert f'offload_dependency_up{{dependency="{dependency}"}} 0.0' in metrics
    assert "PRIVATE KEY" not in (tmp_path / "api.log").read_text()
