"""apply-settings: copy each CompanySettingsChanged into the global table the router reads on every worker."""

from __future__ import annotations

import logging

import faust

from schemas.events import CompanySettingsChanged
from streams.agents.table_copies import register_table_copy
from streams.context import StreamContext

log = logging.getLogger(__name__)


def register(app: faust.App, ctx: StreamContext) -> None:
    async def apply_one(company: CompanySettingsChanged, message: faust.types.Message) -> None:
        # Stored as the event's own JSON text: the table is a cache of the topic, decoded on read.
        ctx.company_settings_table[str(company.company_id)] = (message.value or b"").decode()
        log.info("company %s settings: cloud=%s emails=%s certificates=%s threshold=%s", company.company_id,
                 company.cloud_enabled, company.use_cloud_for_emails, company.use_cloud_for_certificates,
                 company.user_threshold)

    register_table_copy(app, ctx, ctx.company_settings, name="apply-settings", what="settings",
                        kinds=(CompanySettingsChanged,), apply=apply_one, default=CompanySettingsChanged)
