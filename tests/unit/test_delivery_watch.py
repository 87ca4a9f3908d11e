"""watch-delivery's counting: sends of a known job counted without decoding, written every _FLUSH_EVERY sends."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from schemas.envelope import encode
from schemas.events import RecipientFailed, RecipientSent
from streams.agents.delivery_watch import _FLUSH_EVERY, DeliveryWatch


def message(event: Any) -> SimpleNamespace:
    record = encode(event)
    return SimpleNamespace(key=record.key, value=record.value, headers=record.headers)


def sent(userid: int, job_id: str = "job-a") -> SimpleNamespace:
    return message(RecipientSent(job_id=job_id, batch_no=0, userid=userid, email=f"l{userid}@example.org",
                                 provider="smtp", message_id=f"<{userid}@test>", attempts=1, company_id=7))


def watch() -> DeliveryWatch:
    ctx = SimpleNamespace(delivery_watch={})  # the table: job id -> DeliveryCounts.to_dict()
    return DeliveryWatch(ctx, finished={})  # type: ignore[arg-type]  # only the table is used for sends


def test_a_jobs_first_send_is_decoded_and_the_next_ones_counted_without_a_table_write() -> None:
    w = watch()
    assert not w.counted_quietly(sent(0))  # unknown job: its company must be decoded
    asyncio.run(w.handle(sent(0)))
    assert w.ctx.delivery_watch["job-a"]["sent"] == 1
    assert w.ctx.delivery_watch["job-a"]["company_id"] == 7
    for userid in range(1, _FLUSH_EVERY):
        assert w.counted_quietly(sent(userid))
    assert w.ctx.delivery_watch["job-a"]["sent"] == 1  # nothing written yet
    assert not w.counted_quietly(sent(_FLUSH_EVERY))  # the send that flushes goes through handle
    asyncio.run(w.handle(sent(_FLUSH_EVERY)))
    assert w.ctx.delivery_watch["job-a"]["sent"] == _FLUSH_EVERY + 1


def test_a_record_the_watch_does_not_count_is_passed_over_and_one_it_may_act_on_is_not() -> None:
    w = watch()
    failed = message(RecipientFailed(job_id="job-a", batch_no=0, userid=1, email="l1@example.org", provider="smtp",
                                     error="550", attempts=1, retryable=False))
    assert w.counted_quietly(failed)
    assert not w.counted_quietly(sent(1, job_id="job-b"))
    assert w.ctx.delivery_watch == {}
