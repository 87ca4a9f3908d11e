"""The event contract: frozen, typed values named in the past tense, free of Faust and Kafka types.

These classes are the one source of truth. ``python -m schemas.generate`` writes the JSON Schema files under
``schemas/json/`` from them for other teams; a test fails when the committed files drift from this code.
Within a version only optional fields are added; a breaking change is a new ``.vN`` type.

The modules hold one part of the story each (``jobs``, ``batches``, ``outcomes``, ``certificates``,
``callbacks``, ``company``, ``budget``, ``provider_health``, ``dead_letters``, ``chunked``, ``pauses``, ``suppression``,
``templates``; ``content``: what a job's email is made of); ``registry`` lists every type. Import from here:
``from schemas.events import JobAccepted``.
"""

from schemas.events.base import (
    EmailProviderName,
    Event,
    JobType,
    MailCategory,
    Route,
    StorageProviderName,
    utcnow,
)
from schemas.events.batches import (
    BatchCompleted,
    BatchDispatched,
    BatchesDispatched,
    BatchWaitingForDependency,
    BatchWaitingForQuota,
    FailedRecipient,
    JobFellBackToLocal,
)
from schemas.events.budget import JobWaitingForBudget
from schemas.events.callbacks import CallbackDelivered, CallbackFailed, CallbackName
from schemas.events.certificates import CertificateIssued
from schemas.events.chunked import (
    CHUNK_ORDER,
    NOT_COMMITTED,
    ChunkedJobExpired,
    JobCommitted,
    JobOpened,
    RecipientChunkReceived,
)
from schemas.events.company import CompanySettingsChanged
from schemas.events.content import InlineContent, TemplateSource
from schemas.events.dead_letters import DeadLettered
from schemas.events.jobs import (
    SCOPED_SUFFIX,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobId,
    JobOverBudget,
    JobRejected,
    JobRequested,
    JobRetryRequested,
    Problem,
    Recipient,
    TemplateId,
    client_job_id,
    scoped_id_room,
    scoped_job_id,
)
from schemas.events.outcomes import (
    RecipientBounced,
    RecipientComplained,
    RecipientDelivered,
    RecipientFailed,
    RecipientOutcome,
    RecipientSent,
)
from schemas.events.pauses import JobPaused, JobResumed
from schemas.events.provider_health import ProviderCircuitClosed, ProviderCircuitOpened
from schemas.events.registry import BY_CE_TYPE, EVENT_TYPES
from schemas.events.suppression import (
    RecipientSuppressed,
    RecipientUnsubscribed,
    SuppressionAdded,
    SuppressionRemoved,
)
from schemas.events.templates import TemplatePublished, TemplateRetired

__all__ = [
    "BY_CE_TYPE",
    "CHUNK_ORDER",
    "EVENT_TYPES",
    "NOT_COMMITTED",
    "SCOPED_SUFFIX",
    "BatchCompleted",
    "BatchDispatched",
    "BatchWaitingForDependency",
    "BatchWaitingForQuota",
    "BatchesDispatched",
    "CallbackDelivered",
    "CallbackFailed",
    "CallbackName",
    "CertificateIssued",
    "ChunkedJobExpired",
    "CompanySettingsChanged",
    "DeadLettered",
    "EmailProviderName",
    "Event",
    "FailedRecipient",
    "InlineContent",
    "JobAccepted",
    "JobCancelled",
    "JobCommitted",
    "JobCompleted",
    "JobFellBackToLocal",
    "JobId",
    "JobOpened",
    "JobOverBudget",
    "JobPaused",
    "JobRejected",
    "JobRequested",
    "JobResumed",
    "JobRetryRequested",
    "JobType",
    "JobWaitingForBudget",
    "MailCategory",
    "Problem",
    "ProviderCircuitClosed",
    "ProviderCircuitOpened",
    "Recipient",
    "RecipientBounced",
    "RecipientChunkReceived",
    "RecipientComplained",
    "RecipientDelivered",
    "RecipientFailed",
    "RecipientOutcome",
    "RecipientSent",
    "RecipientSuppressed",
    "RecipientUnsubscribed",
    "Route",
    "StorageProviderName",
    "SuppressionAdded",
    "SuppressionRemoved",
    "TemplateId",
    "TemplatePublished",
    "TemplateRetired",
    "TemplateSource",
    "client_job_id",
    "scoped_id_room",
    "scoped_job_id",
    "utcnow",
]
