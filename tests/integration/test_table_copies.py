"""The agents that copy a topic into a table every worker reads (company settings, templates, suppression lists),
against a real worker and broker: a record they cannot use is dead-lettered with the reason and the agent goes on
with the next one."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from schemas.envelope import encode
from schemas.events import CompanySettingsChanged, DeadLettered, Event, TemplateRetired
from schemas.events.suppression import SuppressionAdded
from tests.support.observe import events, wait_for

pytestmark = pytest.mark.integration


async def _put(settings, records: list[tuple[str, bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for short_topic, value, headers in records:
            await producer.send_and_wait(settings.topic(short_topic), value, key=b"7", headers=headers)
    finally:
        await producer.stop()


def on(short_topic: str, event: Event) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """``event`` encoded as usual, but written to ``short_topic`` (which may not be its own)."""
    record = encode(event)
    return short_topic, record.value, record.headers


def test_records_the_table_agents_cannot_use_are_dead_lettered_and_the_next_ones_still_apply(
        settings_factory, topics_for, processes):
    settings = settings_factory()
    topics_for(settings)
    worker = processes("worker", settings)
    retired = TemplateRetired(company_id=7, template_id="course_reminder", version=3)
    suppressed = SuppressionAdded(company_id=7, userid=5, source="manual", reason="asked")
    company = CompanySettingsChanged(company_id=7, cloud_enabled=True, user_threshold=42)
    asyncio.run(_put(settings, [
        ("company-settings", b"{not json", []),
        on("company-settings", retired),
        ("templates", b"{not json", []),
        on("templates", suppressed),
        ("suppressions", b"{not json", []),
        on("suppressions", company),
        on("company-settings", company),
        on("templates", retired),
        on("suppressions", suppressed),
    ]))
    worker.wait_for_log("company 7 settings: cloud=True", timeout=60)
    worker.wait_for_log("company 7 template course_reminder: retired at version 3", timeout=60)
    worker.wait_for_log("suppression list of company 7: SuppressionAdded", timeout=60)

    dead = wait_for(lambda: d if len(d := [e for e in events(settings, "dead-letters")
                                           if isinstance(e, DeadLettered)]) >= 6 else None,
                    what="six dead letters")
    by_stage: dict[str, list[str]] = {}
    for letter in dead:
        by_stage.setdefault(letter.stage, []).append(letter.error)
    assert sorted(by_stage) == ["apply-settings", "apply-suppressions", "apply-templates"]
    assert [len(errors) for errors in by_stage.values()] == [2, 2, 2]
    assert by_stage["apply-settings"][1] == "unexpected TemplateRetired on the settings topic"
    assert by_stage["apply-templates"][1] == "unexpected SuppressionAdded on the templates topic"
    assert by_stage["apply-suppressions"][1] == "unexpected CompanySettingsChanged on the suppressions topic"
    assert all(errors[0] and "unexpected" not in errors[0] for errors in by_stage.values())
