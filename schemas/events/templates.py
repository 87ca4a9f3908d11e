"""Companies' own email templates (topic ``templates``, keyed company:template_id, kept forever): published
versions and retirements. Which template a job renders: docs/templates.md."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AwareDatetime, Field

from schemas.events.base import Event, utcnow
from schemas.events.jobs import TemplateId


class _TemplateEvent(Event):
    """Something that happened to one company's email template of one id."""

    topic: ClassVar[str] = "templates"

    company_id: int = Field(ge=0)
    template_id: TemplateId

    def subject(self) -> str:
        return f"{self.company_id}:{self.template_id}"


class TemplatePublished(_TemplateEvent):
    """A new version of a company's own email template, validated before it was published.

    Jobs of that company naming ``template_id`` use its latest version instead of the built-in template; a
    job keeps the version it was accepted with (``JobAccepted.template_version``) for all its batches and runs.
    """

    ce_type: ClassVar[str] = "org.manireports.offload.template.published.v1"

    version: int = Field(ge=1, description="1, 2, … per company and template id")
    subject_template: str = Field(min_length=1, max_length=2000, description="Jinja2 source of the subject line")
    html: str = Field(default="", max_length=4 * 1024 * 1024, description="Jinja2 source of the HTML part")
    text: str = Field(default="", max_length=4 * 1024 * 1024, description="Jinja2 source of the text part")
    variables: list[str] = Field(
        default_factory=list, description="the names the template reads beyond the learner's own fields")
    sha256: str = Field(description="of subject, html and text: tells versions with the same content apart")
    description: str | None = Field(default=None, max_length=500)
    published_by: str | None = Field(default=None, description="the API key id that published it; never a secret")
    published_at: AwareDatetime = Field(default_factory=utcnow)


class TemplateRetired(_TemplateEvent):
    """A company's own template of this id no longer applies: new jobs use the built-in one again.

    Versions stay in the log, so a job accepted with one keeps rendering it; publishing again revives the id.
    """

    ce_type: ClassVar[str] = "org.manireports.offload.template.retired.v1"

    version: int = Field(ge=1, description="the latest version when it was retired")
    reason: str | None = Field(default=None, max_length=500)
    retired_by: str | None = Field(default=None, description="the API key id that retired it; never a secret")
    retired_at: AwareDatetime = Field(default_factory=utcnow)
