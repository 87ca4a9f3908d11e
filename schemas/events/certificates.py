"""A certificate issued for one learner (topic ``outcomes``): where it is stored, and what it says."""

from __future__ import annotations

from datetime import date
from typing import ClassVar

from pydantic import AwareDatetime, Field

from schemas.events.base import StorageProviderName, utcnow
from schemas.events.outcomes import RecipientOutcome


class CertificateIssued(RecipientOutcome):
    """A certificate rendered and stored for one recipient."""

    ce_type: ClassVar[str] = "org.manireports.offload.certificate.issued.v1"

    url: str
    object_key: str
    sha256: str
    size: int
    code: str
    template_id: str
    template_version: int
    backend: StorageProviderName
    attempts: int = 1
    emailed: bool | None = Field(default=None, description="None: no email asked for; else whether it went out")
    email_message_id: str | None = None
    email_error: str | None = None
    issued_at: AwareDatetime = Field(default_factory=utcnow)
    # Added within v1 (optional): the notification mail was not sent because the company's suppression list
    # holds the learner for every message (scope '*': an admin entry, or a hard bounce of this address). The
    # certificate is issued all the same; email_error says which entry. docs/suppression.md.
    email_suppressed: bool | None = Field(
        default=None, description="True: not emailed, the learner is on the company's suppression list ('*')")
    # What the certificate says, so /verify answers from the read model (absent on certificates issued before
    # these fields existed: they verify as valid without details).
    holder_name: str | None = Field(default=None, description="the learner's name as printed")
    course_name: str | None = Field(default=None, description="the course as printed")
    completion_date: date | None = Field(default=None, description="the completion date as printed")
