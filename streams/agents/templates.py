"""apply-templates: copy each TemplatePublished / TemplateRetired into the table every worker reads."""

from __future__ import annotations

import logging

import faust

from schemas.events import TemplatePublished, TemplateRetired
from streams.agents.table_copies import register_table_copy
from streams.context import StreamContext

log = logging.getLogger(__name__)


def register(app: faust.App, ctx: StreamContext) -> None:
    async def apply_one(event: TemplatePublished | TemplateRetired, message: faust.types.Message) -> None:
        ctx.company_templates.apply(event, (message.value or b"").decode())
        if isinstance(event, TemplatePublished):
            log.info("company %s template %s: version %d published", event.company_id, event.template_id,
                     event.version)
        else:
            log.info("company %s template %s: retired at version %d", event.company_id, event.template_id,
                     event.version)

    # The topic has one partition, so log order is publication order.
    register_table_copy(app, ctx, ctx.templates, name="apply-templates", what="templates",
                        kinds=(TemplatePublished, TemplateRetired), apply=apply_one)
