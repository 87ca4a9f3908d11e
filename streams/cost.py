"""Estimated cost of a job from the settings' price table (``OFFLOAD_PRICES``): what each provider sent.

Each batch reports how many learners each provider (email) or storage backend (certificates) served
(``BatchCompleted.sent_by``); a job's cost is the sum over every run so far of
``served × (per_1000 / 1000 + per_request)``. Storage by the GB-month is a running cost of the bucket, not of
one job, so it is left out here (docs/setup-aws.md and docs/setup-cloudflare.md give the figures).
"""

from __future__ import annotations

from collections.abc import Mapping

from config.settings import Settings
from streams.state import JobProgress


def cost_of(settings: Settings, sent_by: Mapping[str, int]) -> float:
    total = 0.0
    for provider, count in sent_by.items():
        price = settings.price_of(provider)
        total += count * (price.per_1000 / 1000 + price.per_request)
    return total


def job_cost(settings: Settings, state: JobProgress) -> float:
    """Rounded to a ten-thousandth of the currency unit (a cent would hide a 1,000-message SES job)."""
    return round(cost_of(settings, state.served), 4)
