"""The price table behind each job's ``estimated_cost``: list prices per provider, overridable by settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ProviderPrice(BaseModel):
    """A provider's list price: per 1,000 messages, per request, per GB stored (certificates)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_1000: float = Field(default=0.0, ge=0)
    per_request: float = Field(default=0.0, ge=0)
    per_gb: float = Field(default=0.0, ge=0)


DEFAULT_PRICES: dict[str, ProviderPrice] = {
    "smtp": ProviderPrice(),  # Moodle's own relay: no per-message price
    "local": ProviderPrice(),
    "ses": ProviderPrice(per_1000=0.10, per_gb=0.12),
    "sendgrid": ProviderPrice(per_1000=0.90),
    "mailgun": ProviderPrice(per_1000=0.70),
    "s3": ProviderPrice(per_request=0.000005, per_gb=0.023),
    "r2": ProviderPrice(per_request=0.0000045, per_gb=0.015),
}

