"""apply-settings: copy each CompanySettingsChanged into the global table the router reads on every worker."""

from __future__ import annotations

import logging

import faust

from schemas.envelope import UndecodableRecord, decode
from schemas.events import CompanySettingsChanged
from streams.context import StreamContext

log = logging.getLogger(__name__)


def register(app: faust.App, ctx: StreamContext) -> None:
    @app.agent(ctx.company_settings, name="apply-settings", concurrency=1)
    async def apply_settings(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, "apply-settings", apply_one)

    async def apply_one(message: faust.types.Message) -> None:
        try:
            company = decode(message.value, message.headers, default=CompanySettingsChanged)
            if not isinstance(company, CompanySettingsChanged):
                raise UndecodableRecord(f"unexpected {type(company).__name__} on the settings topic")
        except UndecodableRecord as exc:
            await ctx.dead_letter(message, str(exc), "apply-settings")
            return
        # Stored as the event's own JSON text: the table is a cache of the topic, decoded on read.
        ctx.company_settings_table[str(company.company_id)] = (message.value or b"").decode()
        log.info("company %s settings: cloud=%s emails=%s certificates=%s threshold=%s", company.company_id,
                 company.cloud_enabled, company.use_cloud_for_emails, company.use_cloud_for_certificates,
                 company.user_threshold)
