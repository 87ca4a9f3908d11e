"""SES's 24-hour quota (Max24HourSend) against moto's SES, whose sandbox account allows 200 messages a day and
counts every message sent (GetSendQuota's SentLast24Hours): past it, sends pause until a read of the account
shows room again, or go to the local relay and say why, as OFFLOAD_SES_DAILY_QUOTA says; a job whose sends
pause says so on its page while they wait."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import boto3
import pytest

from adapters.email.delivery import RetryPolicy, deliver
from config.settings import Settings
from offload.client import submit_job
from schemas.events import BatchWaitingForQuota
from streams.handlers.email_providers import EmailProviders
from tests.support.email import MAIL_DOMAIN, MAIL_FROM, outgoing
from tests.support.moto_server import MotoServer
from tests.support.observe import events, job_row, query, wait_for, wait_for_job
from tests.support.routing import start_routed_to

pytestmark = pytest.mark.integration
QUOTA_REACHED = "SES 24-hour quota reached: 200 of Max24HourSend 200 sent in the last 24 h"
# As read while paused, moto's count may be past 200 (it counts a raw message's recipient twice: once from the
# destination, once from its To header).
QUOTA_WAIT = r"SES 24-hour quota reached: 2[0-9]0 of Max24HourSend 200 sent in the last 24 h"


def ses_client(moto: MotoServer) -> Any:
    return boto3.client("sesv2", region_name="eu-west-1", endpoint_url=moto.endpoint_url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def fresh_account_that_sent(moto: MotoServer, count: int) -> None:
    """moto's account reset, the sender verified, and ``count`` messages sent already today."""
    moto.reset()
    client = ses_client(moto)
    client.create_email_identity(EmailIdentity=MAIL_DOMAIN)
    client.close()
    # SES v1's simple send: moto counts its one recipient once (a raw send also counts the To header again).
    v1 = boto3.client("ses", region_name="eu-west-1", endpoint_url=moto.endpoint_url,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    for i in range(count):
        v1.send_email(Source=MAIL_FROM, Destination={"ToAddresses": [f"earlier{i}@example.org"]},
                      Message={"Subject": {"Data": "earlier"}, "Body": {"Text": {"Data": "sent before the test"}}})
    v1.close()


def quota_settings(moto: MotoServer, sink_port: int, action: str) -> Settings:
    # Not paced to moto's 1/s send rate (that is test_pacing's subject): only the 24-hour quota is.
    return Settings(environment="test", aws_endpoint_url=moto.endpoint_url, aws_access_key_id="testing",
                    aws_secret_access_key="testing", mail_from=MAIL_FROM, smtp_port=sink_port,
                    ses_pace_to_account=False, ses_daily_quota=action, ses_quota_refresh_seconds=5)


async def test_past_the_24_hour_quota_the_rest_goes_to_the_local_relay_and_says_why(moto, mail_sink) -> None:
    fresh_account_that_sent(moto, 190)
    providers = EmailProviders(quota_settings(moto, mail_sink.port, "local"))
    await providers.read_ses_quota()
    primary, fallback = providers.paced(providers.ses, 7), providers.paced(providers.smtp, 7)
    report = await deliver([outgoing(i) for i in range(20)], primary=primary, fallback=fallback,
                           policy=RetryPolicy(max_attempts=2))
    await providers.stop()

    by_provider = [r.provider for r in report.results]
    assert all(r.sent for r in report.results) and by_provider == ["ses"] * 10 + ["smtp"] * 10
    assert report.fell_back and report.fallback_reason == QUOTA_REACHED
    assert all(r.attempts == 1 for r in report.results)  # the quota cost nobody an attempt
    assert len(moto.sent_emails()) == 200  # SES got exactly what the quota allowed, never more
    assert mail_sink.count() == 10  # counted before the sink answers 250


async def test_past_the_24_hour_quota_sends_pause_say_why_and_resume_when_the_account_has_room(
    moto, mail_sink
) -> None:
    fresh_account_that_sent(moto, 190)
    providers = EmailProviders(quota_settings(moto, mail_sink.port, "pause"))
    await providers.read_ses_quota()
    await providers.start()  # reads the quota again every 5 s (at least every minute while paused)
    primary, fallback = providers.paced(providers.ses, 7), providers.paced(providers.smtp, 7)
    sending = asyncio.create_task(deliver([outgoing(i) for i in range(20)], primary=primary, fallback=fallback,
                                          policy=RetryPolicy(max_attempts=2)))
    quota = providers.ses_daily_quota
    assert quota is not None
    async with asyncio.timeout(30):
        while not quota.waiting:
            await asyncio.sleep(0.05)
    assert re.fullmatch(f"paused: {QUOTA_WAIT}", primary.describe())  # 200 as counted here, or more once read
    assert len(moto.sent_emails()) == 200 and not sending.done()

    # The window has room again (here: a fresh account; in SES, a day rolls on or the quota is raised).
    # Blocking calls: nothing else in this event loop runs until the sender is verified again.
    fresh_account_that_sent(moto, 0)
    report = await asyncio.wait_for(sending, 60)
    await providers.stop()

    assert all(r.sent and r.provider == "ses" for r in report.results) and not report.fell_back
    assert len(moto.sent_emails()) == 10 and mail_sink.count() == 0
    assert quota.paused_by is None and not primary.describe().startswith("paused")


def test_a_job_whose_sends_wait_for_the_quota_says_so_on_its_page_while_they_wait(
    settings_factory, topics_for, processes, job_factory, mail_sink, moto
) -> None:
    fresh_account_that_sent(moto, 190)
    settings = settings_factory(aws_endpoint_url=moto.endpoint_url, aws_access_key_id="testing",
                                aws_secret_access_key="testing", mail_from=MAIL_FROM, smtp_port=mail_sink.port,
                                ses_pace_to_account=False, ses_daily_quota="pause")
    start_routed_to("ses", settings, topics_for, processes)
    asyncio.run(submit_job(settings, job_factory("quota-wait", 30)))

    # One batch: the room left (10) is sent, then its sends wait, and the job's page says why while no batch has
    # completed: its pacing comes from BatchWaitingForQuota.
    row = wait_for(lambda: (row := job_row(settings, "quota-wait")) and (row["pacing"] or "").startswith("paused")
                   and row["succeeded"] == 10 and row, what="the job's pacing to say its sends wait", timeout=90)
    assert re.fullmatch(f"paused: {QUOTA_WAIT}", row["pacing"]), row["pacing"]
    assert (row["status"], row["failed"], row["batches_done"]) == ("running", 0, 0)  # 20 learners wait
    waiting = [e for e in events(settings, "jobs") if isinstance(e, BatchWaitingForQuota)]
    assert waiting and {(e.job_id, e.provider) for e in waiting} == {("quota-wait", "ses")}
    assert all(re.fullmatch(QUOTA_WAIT, e.reason) for e in waiting), [e.reason for e in waiting]
    history = query(settings, "SELECT event_type FROM audit_log WHERE subject = %s", ("quota-wait",))
    assert "org.manireports.offload.batch.waiting-for-quota.v1" in {r["event_type"] for r in history}
    # Nothing past the quota went out, through SES or around it.
    assert len(moto.sent_emails()) == 200 and mail_sink.count() == 0


def learners_sent(moto: MotoServer) -> Counter[str]:
    """How often SES sent to each learner (the account's earlier messages went to others)."""
    return Counter(sent["destinations"][0] for sent in moto.sent_emails()
                   if isinstance(sent.get("destinations"), list) and sent["destinations"][0].startswith("learner"))


def job_waiting_for_the_quota(settings_factory, topics_for, processes, job_factory, mail_sink, moto,
                              job_id: str) -> tuple[Settings, Any, Counter[str]]:
    """A 30-learner job through SES with room for 10 today: its one batch sent 10, the rest wait for the quota.
    Returns the settings, the worker, and whom SES sent to."""
    fresh_account_that_sent(moto, 190)
    settings = settings_factory(aws_endpoint_url=moto.endpoint_url, aws_access_key_id="testing",
                                aws_secret_access_key="testing", mail_from=MAIL_FROM, smtp_port=mail_sink.port,
                                ses_pace_to_account=False, ses_daily_quota="pause", ses_quota_refresh_seconds=5)
    worker = start_routed_to("ses", settings, topics_for, processes)
    asyncio.run(submit_job(settings, job_factory(job_id, 30)))
    wait_for(lambda: (row := job_row(settings, job_id)) and (row["pacing"] or "").startswith("paused")
             and row["succeeded"] == 10, what="the job's sends to wait for the quota", timeout=90)
    first = learners_sent(moto)
    assert len(first) == 10 and set(first.values()) == {1}, first
    return settings, worker, first


def stops_on_sigterm(worker: Any) -> str:
    """SIGTERM, and the worker's log once it has exited by itself (before: it waited for the batch for ever)."""
    code = worker.terminate(timeout=90)
    text = worker.log_text()
    assert code >= 0 and "wait_empty: Waiting for tasks" not in text, text[-3000:]
    return text


def the_rest_goes_out_once(settings: Settings, processes, moto: MotoServer, job_id: str,
                           first: Counter[str]) -> None:
    """With room in the quota again (no worker runs while the account is reset), a new worker sends the 20
    learners who wait, each once, and nobody SES had already sent to."""
    fresh_account_that_sent(moto, 0)
    processes("worker", settings)
    row = wait_for_job(settings, job_id, timeout=120)
    assert (row["succeeded"], row["failed"]) == (30, 0), row
    rest = learners_sent(moto)
    assert len(rest) == 20 and set(rest.values()) == {1} and not set(rest) & set(first), (rest, first)


def test_a_worker_stopped_while_a_batch_waits_for_the_quota_stops_and_the_next_sends_the_rest_once(
    settings_factory, topics_for, processes, job_factory, mail_sink, moto
) -> None:
    # Before: the stop waited for the batch's record to be acked (Faust's wait_empty, no deadline) until the
    # supervisor's SIGKILL, and a rebalance stalled the same way.
    settings, worker, first = job_waiting_for_the_quota(settings_factory, topics_for, processes, job_factory,
                                                        mail_sink, moto, "quota-stop")
    text = stops_on_sigterm(worker)
    assert re.search(r"batch quota-stop:0:0 given up for now, unacked, as the worker stops or rebalances while "
                     f"its sends wait \\({QUOTA_WAIT}\\)", text), text[-3000:]
    the_rest_goes_out_once(settings, processes, moto, "quota-stop", first)


def test_a_worker_joining_while_a_batch_waits_for_the_quota_does_not_stall_the_rebalance(
    settings_factory, topics_for, processes, job_factory, mail_sink, moto
) -> None:
    # Before: the first worker never finished the rebalance; the group evicted it, and it kept its batch waiting,
    # to send beside the batch's new owner once the quota had room.
    settings, first_worker, first = job_waiting_for_the_quota(settings_factory, topics_for, processes,
                                                              job_factory, mail_sink, moto, "quota-join")

    def waits() -> int:
        return sum(isinstance(e, BatchWaitingForQuota) for e in events(settings, "jobs"))

    waited = waits()
    second_worker = processes("worker", settings)
    # The batch is given up by the first worker and served again after the rebalance, by whichever worker got
    # its partition; its sends then wait for the quota once more.
    resumed = "batch quota-join:0:0 served again (after a crash, a stop or a rebalance): 10 of 30 already recorded"
    wait_for(lambda: resumed in first_worker.log_text() + second_worker.log_text(), timeout=90,
             what="the batch to be served again after the rebalance")
    assert "batch quota-join:0:0 given up for now" in first_worker.log_text()
    wait_for(lambda: waits() > waited, timeout=60, what="the batch served again to wait for the quota")
    for worker in (first_worker, second_worker):
        stops_on_sigterm(worker)
    the_rest_goes_out_once(settings, processes, moto, "quota-join", first)
