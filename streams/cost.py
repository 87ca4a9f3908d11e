"""Estimated cost of a job from the settings' price table (``OFFLOAD_PRICES``): what each provider sent.

Each batch reports how many learners each provider (email) or storage backend (certificates) served
(``BatchCompleted.sent_by``); a job's cost is the sum over every run so far of
``served × (per_1000 / 1000 + per_request)``. Storage by the GB-month is a running cost of the bucket, not of
one job, so it is left out here (docs/setup-aws.md and docs/setup-cloudflare.md give the figures).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config.settings import Settings


def cost_of(settings: Settings, sent_by: Mapping[str, int]) -> float:
    total = 0.0
    for provider, count in sent_by.items():
        price = settings.price_of(provider)
        total += count * (price.per_1000 / 1000 + price.per_request)
    return total


def job_cost(settings: Settings, state: Mapping[str, Any]) -> float:
    """Rounded to a thousandth of the currency unit (a cent would hide a 1,000-message SES job)."""
    served: dict[str, int] = {}
    for run in state.get("done", {}).values():
        for counts in run.values():
            for provider, count in (counts[2] if len(counts) > 2 else {}).items():
                served[provider] = served.get(provider, 0) + count
    return round(cost_of(settings, served), 4)
