"""apply-templates: copy each TemplatePublished / TemplateRetired into the table every worker reads."""

from __future__ import annotations

import logging

import faust

from schemas.envelope import UndecodableRecord, decode
from schemas.events import TemplatePublished, TemplateRetired
from streams.context import StreamContext

log = logging.getLogger(__name__)


def register(app: faust.App, ctx: StreamContext) -> None:
    # concurrency=1 (faust-streaming #606); the topic has one partition, so log order is publication order.
    @app.agent(ctx.templates, name="apply-templates", concurrency=1)
    async def apply_templates(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await ctx.guarded(event.message, "apply-templates", apply_one)

    async def apply_one(message: faust.types.Message) -> None:
        try:
            event = decode(message.value, message.headers)
            if not isinstance(event, TemplatePublished | TemplateRetired):
                raise UndecodableRecord(f"unexpected {type(event).__name__} on the templates topic")
        except UndecodableRecord as exc:
            await ctx.dead_letter(message, str(exc), "apply-templates")
            return
        ctx.company_templates.apply(event, (message.value or b"").decode())
        if isinstance(event, TemplatePublished):
            log.info("company %s template %s: version %d published", event.company_id, event.template_id,
                     event.version)
        else:
            log.info("company %s template %s: retired at version %d", event.company_id, event.template_id,
                     event.version)
