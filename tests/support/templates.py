"""Company templates in tests: what the worker's table holds, and the subject a learner received."""

from __future__ import annotations

import asyncio
import email
import json
from email.header import decode_header, make_header

from aiokafka import AIOKafkaConsumer, TopicPartition

from config.settings import Settings
from devtools.devmail import DevMailSink
from streams.templates import TemplateHead, head_key
from tests.support.observe import wait_for


async def _heads(settings: Settings) -> dict[str, TemplateHead]:
    """The heads in the worker's company-templates table, read from its changelog (latest record per key)."""
    topic = f"{settings.app_id}-company-templates-changelog"
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        heads: dict[str, TemplateHead] = {}
        while await consumer.position(partition) < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    key, value = _text(record.key), _text(record.value)
                    if key.count(":") == 1 and value:  # company:template_id, not a version
                        heads[key] = TemplateHead.model_validate_json(value)
        return heads
    finally:
        await consumer.stop()


def _text(raw: bytes | None) -> str:
    """A changelog key or value as text, whether Faust wrote it raw or as a JSON string."""
    if raw is None:
        return ""
    text = raw.decode()
    if text.startswith('"'):
        loaded = json.loads(text)
        return loaded if isinstance(loaded, str) else text
    return text


def wait_for_worker_template(settings: Settings, company_id: int, template_id: str, *, version: int,
                             retired: bool = False) -> None:
    """Until the worker's table holds this head: a job accepted from now on is routed with it."""
    wanted = TemplateHead(version=version, retired=retired)
    wait_for(lambda: asyncio.run(_heads(settings)).get(head_key(company_id, template_id)) == wanted,
             timeout=60, what=f"the worker to learn {company_id}:{template_id} {wanted}")


def subject_of(sink: DevMailSink, address: str) -> str:
    (received,) = sink.by_recipient()[address]
    return str(make_header(decode_header(email.message_from_bytes(received.raw)["Subject"])))


def parts_of(sink: DevMailSink, address: str) -> dict[str, str]:
    (received,) = sink.by_recipient()[address]
    message = email.message_from_bytes(received.raw)
    return {part.get_content_type(): part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
            for part in message.walk() if not part.is_multipart()}
