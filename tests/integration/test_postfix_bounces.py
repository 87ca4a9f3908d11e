"""The local route's bounces: a real Postfix (tests/support/postfix.py) takes a learner's message, the learner's
mail server refuses it later, and Postfix returns a delivery status notification (RFC 3464) to the envelope sender.
The relay pipes that address's mail to the API (``/webhooks/smtp``, with curl, as docs/suppression.md shows a site),
and the bounce suppresses the learner like a cloud provider's webhook report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from offload.client import submit_job
from schemas.events import RecipientBounced
from tests.support.api import ApiServer, send
from tests.support.observe import events, query, wait_for, wait_for_job
from tests.support.relays import installed_pipe

pytestmark = pytest.mark.integration

TOKEN = "relay-bounce-token-0123456789abcdef0123"
GONE = "learner2@example.org"
REFUSAL = f"5.1.1 <{GONE}>: Recipient address rejected: User unknown"
REPO = Path(__file__).resolve().parents[2]
# What a site adds to its relay's master.cf (docs/suppression.md): the envelope sender's mail, posted to the API as
# it came by clients/relay/offload-bounces. The token is in a header file only the pipe's user reads.
PIPE = "offload-bounces unix - n n - - pipe user=nobody argv={script} {url} {header}\n"


def test_a_learner_the_relay_could_not_deliver_to_is_bounced_suppressed_and_left_out_of_the_next_job(
    settings_factory, topics_for, processes, job_factory, mail_sink, relay_factory
):
    mail_sink.reject(GONE, 550, REFUSAL)  # the learner's mail server, after the relay took the message
    base = settings_factory(webhook_smtp_token=TOKEN)
    topics_for(base)
    with installed_pipe(TOKEN, "nobody") as (script, header):
        with ApiServer(base) as api:
            relay = relay_factory(
                mail_sink, services=PIPE.format(script=script, url=f"{api.base_url}/webhooks/smtp", header=header),
                transport_maps=f"inline:{{{base.mail_from}=offload-bounces:}}",
                # a copy of each notification to the sink, to post it again by hand below
                virtual_alias_maps=f"inline:{{ {{ {base.mail_from} = {base.mail_from}, copies@example.org }} }}",
                virtual_alias_domains="",
                # A notification the API asks for again (it came before the projector recorded the send) is
                # delivered again in a second, not Postfix's default 5 minutes.
                minimal_backoff_time="1s", maximal_backoff_time="2s", queue_run_delay="1s")
            settings = base.model_copy(update={"smtp_port": relay.port})
            processes("worker", settings)
            processes("projector", settings)
            asyncio.run(submit_job(settings, job_factory("bounce-1", 3)))
            done = wait_for_job(settings, "bounce-1")
            assert (done["succeeded"], done["failed"]) == (3, 0)  # the relay took all three

            def listed() -> dict[int, tuple[str, str, str]]:
                rows = query(settings, "SELECT userid, scope, source, reason FROM suppressions WHERE company_id = 7")
                return {r["userid"]: (r["scope"], r["source"], r["reason"]) for r in rows}

            scope, source, reason = wait_for(lambda: listed().get(2), timeout=90,
                                             what="the relay's bounce of learner 2 on the company's list")
            assert (scope, source) == ("*", "bounce") and reason == f"bounce reported by smtp: 5.1.1 550 {REFUSAL}"
            assert "status=sent (delivered via offload-bounces service)" in relay.log()
            (bounced,) = [e for e in events(settings, "outcomes") if isinstance(e, RecipientBounced)]
            sent = query(settings, "SELECT provider_message_id, message_id FROM job_recipients WHERE job_id = %s"
                         " AND userid = 2", ("bounce-1",))[0]
            assert (bounced.job_id, bounced.userid, bounced.email, bounced.provider) == ("bounce-1", 2, GONE, "smtp")
            assert (bounced.permanent, bounced.provider_message_id) == (True, sent["provider_message_id"])
            assert bounced.message_id == sent["message_id"]

            # The same notification delivered again is not a second bounce; other mail to the address is ignored;
            # without the token nothing is read.
            (copy,) = wait_for(lambda: mail_sink.by_recipient().get("copies@example.org"),
                               what="the notification's copy")
            again = send(api.base_url, "POST", "/webhooks/smtp", copy.raw,
                         {"Authorization": f"Bearer {TOKEN}", "Content-Type": "message/rfc822"})
            assert (again.status, again.body) == (200, {"published": 0, "unmatched": 0, "duplicate": True})
            ordinary = mail_sink.by_recipient()["learner1@example.org"][0].raw
            ignored = send(api.base_url, "POST", "/webhooks/smtp", ordinary, {"Authorization": f"Bearer {TOKEN}"})
            assert ignored.status == 200 and "not a delivery status report" in ignored.body["ignored"]
            forged = send(api.base_url, "POST", "/webhooks/smtp", copy.raw, {"Authorization": "Bearer guessed"})
            assert forged.status == 403 and forged.body["error"]["code"] == "bad_token"
            assert len([e for e in events(settings, "outcomes") if isinstance(e, RecipientBounced)]) == 1

        asyncio.run(submit_job(settings, job_factory("bounce-2", 3)))
        assert wait_for_job(settings, "bounce-2")["suppressed"] == 1
        rows = query(settings, "SELECT userid, status, error_message FROM job_recipients WHERE job_id = %s",
                     ("bounce-2",))
        assert {r["userid"]: r["status"] for r in rows} == {1: "sent", 2: "suppressed", 3: "sent"}
        assert [r["error_message"] for r in rows if r["userid"] == 2][0].startswith("bounce reported by smtp: 5.1.1")
    assert TOKEN not in relay.log()
