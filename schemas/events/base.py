"""What every event shares: the ``Event`` base, its timestamp default and the small vocabularies events use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

JobType = Literal["email", "certificate"]
Route = Literal["cloud", "local"]
EmailProviderName = Literal["smtp", "ses", "sendgrid", "mailgun"]
StorageProviderName = Literal["local", "s3", "r2"]
MailCategory = Literal["bulk", "transactional"]  # bulk mail carries one-click unsubscribe (events/suppression.py)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event. Unknown fields are ignored so old consumers read newer producers."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    ce_type: ClassVar[str]
    topic: ClassVar[str]  # short topic name; the full name is Settings.topic(topic)

    def subject(self) -> str:
        """The CloudEvents subject and the Kafka key: the job id for job events."""
        return str(getattr(self, "job_id"))  # noqa: B009 - job events declare job_id; the others override this

    def kafka_key(self) -> str:
        return self.subject()
