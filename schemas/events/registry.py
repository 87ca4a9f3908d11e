"""Every event type the service writes or reads, and the lookup by CloudEvents type.

A new event type is added to ``EVENT_TYPES`` here (at the end: the order is the order the schemas were added),
or ``BY_CE_TYPE`` cannot decode it and ``python -m schemas.generate`` writes no schema for it.
"""

from __future__ import annotations

from schemas.events.base import Event
from schemas.events.batches import (
    BatchCompleted,
    BatchDispatched,
    BatchesDispatched,
    BatchWaitingForDependency,
    BatchWaitingForQuota,
    JobFellBackToLocal,
)
from schemas.events.budget import JobWaitingForBudget
from schemas.events.callbacks import CallbackDelivered, CallbackFailed
from schemas.events.certificates import CertificateIssued
from schemas.events.chunked import ChunkedJobExpired, JobCommitted, JobOpened, RecipientChunkReceived
from schemas.events.company import CompanySettingsChanged
from schemas.events.dead_letters import DeadLettered
from schemas.events.jobs import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobOverBudget,
    JobRejected,
    JobRequested,
    JobRetryRequested,
)
from schemas.events.outcomes import (
    RecipientBounced,
    RecipientComplained,
    RecipientDelivered,
    RecipientFailed,
    RecipientSent,
)
from schemas.events.pauses import JobPaused, JobResumed
from schemas.events.provider_health import ProviderCircuitClosed, ProviderCircuitOpened
from schemas.events.suppression import (
    RecipientSuppressed,
    RecipientUnsubscribed,
    SuppressionAdded,
    SuppressionRemoved,
)
from schemas.events.templates import TemplatePublished, TemplateRetired

EVENT_TYPES: tuple[type[Event], ...] = (
    JobRequested,
    JobRejected,
    JobAccepted,
    BatchDispatched,
    BatchesDispatched,
    RecipientSent,
    RecipientFailed,
    CertificateIssued,
    BatchCompleted,
    BatchWaitingForQuota,
    JobFellBackToLocal,
    JobCompleted,
    CompanySettingsChanged,
    DeadLettered,
    JobOverBudget,
    JobCancelled,
    JobRetryRequested,
    CallbackDelivered,
    CallbackFailed,
    RecipientDelivered,
    RecipientBounced,
    RecipientComplained,
    ProviderCircuitOpened,
    ProviderCircuitClosed,
    JobWaitingForBudget,
    JobPaused,
    JobResumed,
    RecipientUnsubscribed,
    SuppressionAdded,
    SuppressionRemoved,
    RecipientSuppressed,
    TemplatePublished,
    TemplateRetired,
    JobOpened,
    RecipientChunkReceived,
    JobCommitted,
    ChunkedJobExpired,
    BatchWaitingForDependency,
)
BY_CE_TYPE: dict[str, type[Event]] = {cls.ce_type: cls for cls in EVENT_TYPES}
