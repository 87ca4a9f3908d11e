"""A batch's outcomes are durable once the broker has acknowledged them: its recorder waits for nothing else the
producer holds (the next batches' outcomes, the route agent's batch records), since the batch after next waits for
this batch's durability before its first send."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from schemas.events import RecipientSent
from streams.batchwork import OutcomeRecorder


class Producer:
    """Hands out a future per event, which the test acknowledges; its flush waits for all of them, as aiokafka's
    does."""

    def __init__(self) -> None:
        self.sent: dict[int, asyncio.Future[None]] = {}

    async def send(self, event: RecipientSent) -> asyncio.Future[None]:
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent[event.userid] = acked
        return acked

    async def flush(self) -> None:
        await asyncio.gather(*self.sent.values())


def sent(userid: int) -> RecipientSent:
    return RecipientSent(job_id="j", batch_no=0, userid=userid, email=f"learner{userid}@example.org",
                         provider="smtp", message_id=f"<{userid}@test>", attempts=1)


async def test_a_batch_is_durable_once_its_own_outcomes_are_acknowledged() -> None:
    producer = Producer()
    this = OutcomeRecorder(SimpleNamespace(publisher=producer))  # type: ignore[arg-type]
    later = OutcomeRecorder(SimpleNamespace(publisher=producer))  # type: ignore[arg-type]
    for userid in (1, 2):
        await this.record(sent(userid))
    await later.record(sent(3))  # the next batch's outcome, not yet acknowledged

    flushing = asyncio.create_task(this.flush())
    await asyncio.sleep(0.01)
    assert not flushing.done()  # learner 2's outcome is not in the log yet
    producer.sent[1].set_result(None)
    producer.sent[2].set_result(None)
    await asyncio.wait_for(flushing, 5)  # done, while learner 3's outcome still waits
    assert not producer.sent[3].done()
