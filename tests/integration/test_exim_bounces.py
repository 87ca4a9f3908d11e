"""The local route's bounces through a real Exim (tests/support/exim.py): Exim takes a learner's message, the
learner's mail server refuses it, and Exim returns its bounce (RFC 3464, laid out its own way) to the envelope
sender. The router and transport docs/suppression.md shows a site pipe that address's mail to the API with
clients/relay/offload-bounces; a refused post is deferred and tried again by Exim; and the learner is suppressed as
with Postfix (test_postfix_bounces.py)."""

from __future__ import annotations

import asyncio

import pytest

from offload.client import submit_job
from schemas.events import RecipientBounced
from tests.support.api import ApiServer
from tests.support.exim import USER
from tests.support.observe import events, query, wait_for, wait_for_job
from tests.support.relays import installed_pipe

pytestmark = pytest.mark.integration

TOKEN = "relay-bounce-token-0123456789abcdef0123"
GONE = "learner2@example.org"
REFUSAL = f"5.1.1 <{GONE}>: Recipient address rejected: User unknown"
# docs/suppression.md, the transport (with the user these instances deliver as).
TRANSPORT = """\
offload_bounces:
  driver = pipe
  command = {script} {url} {header}
  user = {user}
"""


def test_a_learner_exim_could_not_deliver_to_is_bounced_and_suppressed(
    settings_factory, topics_for, processes, job_factory, mail_sink, exim_factory
):
    mail_sink.reject(GONE, 550, REFUSAL)  # the learner's mail server, after Exim took the message
    base = settings_factory(webhook_smtp_token=TOKEN)
    topics_for(base)
    with installed_pipe("not-the-token-yet", USER) as (script, header):  # set right below, once Exim deferred
        with ApiServer(base) as api:
            transport = TRANSPORT.format(script=script, url=f"{api.base_url}/webhooks/smtp", header=header, user=USER)
            relay = exim_factory(mail_sink, bounces=(base.mail_from, transport))
            settings = base.model_copy(update={"smtp_port": relay.port})
            processes("worker", settings)
            processes("projector", settings)
            asyncio.run(submit_job(settings, job_factory("exim-bounce-1", 3)))
            done = wait_for_job(settings, "exim-bounce-1")
            assert (done["succeeded"], done["failed"]) == (3, 0)  # Exim took all three

            def listed() -> dict[int, tuple[str, str, str]]:
                rows = query(settings, "SELECT userid, scope, source, reason FROM suppressions WHERE company_id = 7")
                return {r["userid"]: (r["scope"], r["source"], r["reason"]) for r in rows}

            # Refused (403), the pipe exits 75 and Exim keeps the bounce; with the token set right, its next try
            # (by its retry rules) goes through.
            wait_for(lambda: "T=offload_bounces defer" in relay.log(), timeout=90,
                     what="Exim deferring the bounce the API refused")
            assert listed() == {}
            header.write_text(f"Authorization: Bearer {TOKEN}\n")  # its owner and mode are kept

            scope, source, reason = wait_for(lambda: listed().get(2), timeout=90,
                                             what="Exim's bounce of learner 2 on the company's list")
            assert (scope, source) == ("*", "bounce") and REFUSAL in reason, reason
            assert f"<{base.mail_from}> R=offload_bounces T=offload_bounces" in relay.log()
            (bounced,) = [e for e in events(settings, "outcomes") if isinstance(e, RecipientBounced)]
            sent = query(settings, "SELECT provider_message_id, message_id FROM job_recipients WHERE job_id = %s"
                         " AND userid = 2", ("exim-bounce-1",))[0]
            assert (bounced.job_id, bounced.userid, bounced.email, bounced.provider) == (
                "exim-bounce-1", 2, GONE, "smtp")
            assert bounced.permanent and bounced.message_id == sent["message_id"]
            assert sent["provider_message_id"] in relay.message_ids()  # Exim's "OK id=…"

        asyncio.run(submit_job(settings, job_factory("exim-bounce-2", 3)))
        assert wait_for_job(settings, "exim-bounce-2")["suppressed"] == 1
    assert TOKEN not in relay.log()
