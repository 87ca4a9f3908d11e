"""Which email template a job uses: its inline content, its company's own latest version, or the built-in one.

The worker learns companies' templates only from the templates topic (never from Postgres): the
apply-templates agent copies every TemplatePublished into a global table that every worker holds, under
``company:template_id:version``, and keeps a head per ``company:template_id`` (latest version, retired or not).
Versions are never removed from the table, so a job keeps rendering the version it was accepted with.

Pinning: the route agent resolves the template once, when it accepts the job, and records the outcome in
JobAccepted and in every BatchDispatched (``template_source``, ``template_version``); retry runs copy it. A
version published while a job runs therefore changes only jobs accepted after it, and one job never mixes two
versions, even across a crash, a restart or a retry a week later.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import lru_cache

from faust.types.tables import GlobalTableT
from pydantic import BaseModel, ConfigDict

from content.email import EmailTemplate, TemplateStore, UnknownTemplate
from content.email.sources import inline_template, published_template
from schemas.envelope import UndecodableRecord, decode
from schemas.events import (
    BatchDispatched,
    JobRequested,
    TemplatePublished,
    TemplateRetired,
    TemplateSource,
)

log = logging.getLogger(__name__)
# How long a batch waits for a company template version its worker has not seen yet: the table is fed from the
# templates topic, and another worker may have accepted the job a moment earlier.
TEMPLATE_VERSION_WAIT = 30.0


class TemplateHead(BaseModel):
    """The latest version of one company template id, and whether it was retired since."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    retired: bool


@dataclass(frozen=True, slots=True)
class ResolvedTemplate:
    template: EmailTemplate
    source: TemplateSource
    version: int | None


@dataclass(frozen=True, slots=True)
class TemplateUnavailable:
    """Why a batch's template cannot be had: every learner of the batch fails with this error."""

    error: str
    retryable: bool


class UnknownTemplateVersion(LookupError):
    """A batch names a company template version this worker's table does not hold (yet)."""


def head_key(company_id: int, template_id: str) -> str:
    return f"{company_id}:{template_id}"


def version_key(company_id: int, template_id: str, version: int) -> str:
    return f"{company_id}:{template_id}:{version}"


class CompanyTemplates:
    """Companies' published templates as the worker knows them (a view over the global table)."""

    def __init__(self, table: GlobalTableT, builtin: TemplateStore) -> None:
        self.table = table
        self.builtin = builtin

    def apply(self, event: TemplatePublished | TemplateRetired, raw: str) -> None:
        """Log order per key decides: a later version replaces the head; a retirement of the head retires it.
        Applying an event twice (at-least-once delivery) changes nothing."""
        key = head_key(event.company_id, event.template_id)
        stored = self.table.get(key)
        head = TemplateHead.model_validate_json(stored) if stored else None
        if isinstance(event, TemplatePublished):
            self.table[version_key(event.company_id, event.template_id, event.version)] = raw
            if head is None or event.version > head.version:
                self.table[key] = TemplateHead(version=event.version, retired=False).model_dump_json()
        elif head is not None and event.version >= head.version and not head.retired:
            self.table[key] = TemplateHead(version=head.version, retired=True).model_dump_json()

    def latest(self, company_id: int, template_id: str) -> TemplatePublished | None:
        stored = self.table.get(head_key(company_id, template_id))
        if not stored:
            return None
        head = TemplateHead.model_validate_json(stored)
        return None if head.retired else self.version(company_id, template_id, head.version)

    def version(self, company_id: int, template_id: str, version: int) -> TemplatePublished | None:
        raw = self.table.get(version_key(company_id, template_id, version))
        return _decode(raw) if raw else None

    def for_job(self, job: JobRequested) -> ResolvedTemplate | None:
        """The email template a new job will use (None: the built-in one, for the check to find or miss)."""
        if job.content is not None:
            return ResolvedTemplate(inline_template(job.template_id, job.content), "inline", None)
        if job.type != "email":
            return None
        own = self.latest(job.company_id, job.template_id)
        if own is not None:
            return ResolvedTemplate(published_template(own), "company", own.version)
        return None

    def for_batch(self, batch: BatchDispatched) -> EmailTemplate:
        """The template a batch was dispatched with. Raises UnknownTemplate / UnknownTemplateVersion."""
        if batch.template_source == "inline":
            if batch.content is None:
                raise UnknownTemplate(batch.template_id)
            return inline_template(batch.template_id, batch.content)
        if batch.template_source == "company":
            assert batch.template_version is not None  # set with the source by the route agent
            found = self.version(batch.company_id, batch.template_id, batch.template_version)
            if found is None:
                raise UnknownTemplateVersion(
                    f"version {batch.template_version} of company {batch.company_id}'s template "
                    f"{batch.template_id!r} is not known to this worker yet")
            return published_template(found)
        return self.builtin.get(batch.template_id)


    async def wait_for_batch(self, batch: BatchDispatched,
                             wait: float = TEMPLATE_VERSION_WAIT) -> EmailTemplate | TemplateUnavailable:
        """The batch's template, waiting a little for a version this worker has not learnt yet; or why not."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            try:
                return self.for_batch(batch)
            except UnknownTemplate as exc:
                return TemplateUnavailable(f"template error: {exc}", retryable=False)
            except UnknownTemplateVersion as exc:
                if asyncio.get_running_loop().time() >= deadline:
                    # A retry run later may find the version known.
                    return TemplateUnavailable(f"template error: {exc}", retryable=True)
                await asyncio.sleep(0.5)


@lru_cache(maxsize=1024)
def _decode(raw: str) -> TemplatePublished | None:
    try:
        event = decode(raw.encode(), None, default=TemplatePublished)
    except UndecodableRecord:
        log.error("undecodable template record in the company-templates table ignored")
        return None
    return event if isinstance(event, TemplatePublished) else None
