"""An email batch's objects are freed by reference counting as the batch ends. A reference cycle through its
recorder (the stall reason's closure held the deliveries, whose on_result held the recorder) once kept every
batch's messages, results and recipients alive until the cyclic collector found them: 40,000 objects every few
seconds at 2,000 learners a second, and full collections of the worker's heap that stopped its event loop for
100-190 ms (docs/benchmarks.md, "The worker's garbage collector")."""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import SimpleNamespace

from config.settings import Settings
from content.email import EmailRenderer, TemplateStore
from devtools.devmail import DevMailSink
from schemas.events import BatchDispatched, Recipient
from streams.batchwork import OutcomeRecorder
from streams.handlers.email_batches import EmailBatchHandler
from streams.handlers.email_providers import EmailProviders
from streams.templates import CompanyTemplates


class Publisher:
    """Takes every event at once (the log is not what this test is about)."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    async def send(self, event: object) -> asyncio.Future[None]:
        self.sent.append(event)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_a_sent_email_batch_leaves_nothing_for_the_cyclic_collector() -> None:
    learners = [Recipient(userid=i, email=f"learner{i}@example.org", firstname="Ann", lastname=f"L{i}")
                for i in range(1, 61)]
    batch = BatchDispatched(job_id="j", batch_no=0, batch_count=1, type="email", company_id=7, route="local",
                            provider="smtp", template_id="course_reminder", recipients=learners,
                            template_data={"course_name": "Safety", "due_date": "1 December", "course_url":
                                           "https://moodle.example.org/course/view.php?id=1"})

    with DevMailSink(port=0) as sink:
        settings = Settings(environment="test", smtp_host=sink.host, smtp_port=sink.port, smtp_connections=2)
        providers = EmailProviders(settings)
        handler = EmailBatchHandler(settings, EmailRenderer(TemplateStore()), providers,
                                    CompanyTemplates({}, TemplateStore()))  # type: ignore[arg-type]
        publisher = Publisher()

        async def run() -> weakref.ref[OutcomeRecorder]:
            recorder = OutcomeRecorder(SimpleNamespace(publisher=publisher))  # type: ignore[arg-type]
            sends = await handler.start(batch, learners, recorder)
            assert await sends is False  # sent, not fell back
            assert recorder.succeeded == len(learners)
            return weakref.ref(recorder)

        async def main() -> weakref.ref[OutcomeRecorder]:
            gone = await run()
            await providers.smtp.stop()
            return gone

        gc.collect()
        gc.disable()  # only reference counting from here: what a cycle holds stays
        try:
            recorder = asyncio.run(main())
            assert recorder() is None, [type(r).__qualname__ for r in gc.get_referrers(recorder())]
        finally:
            gc.enable()
        assert sink.count() == len(learners)
    assert len(publisher.sent) == len(learners)
