"""What a job's email is made of, when it is not only a built-in template: inline content, and where the
template a job renders comes from (see docs/templates.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TemplateSource = Literal["builtin", "company", "inline"]


class InlineContent(BaseModel):
    """A message Moodle composed itself: rendered in the same sandbox as a template, checked the same way."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Hard bounds of the contract; the deployment's own cap (Settings.template_max_bytes) is checked at intake.
    subject: str = Field(min_length=1, max_length=2000)
    html: str = Field(default="", max_length=4 * 1024 * 1024)
    text: str = Field(default="", max_length=4 * 1024 * 1024)
