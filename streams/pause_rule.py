"""When a job pauses: the rule, as a pure function that returns its decision with the figures and the reason.

Rates are over the messages sent since the job last paused (all of them before its first pause): a resumed job
pauses again only when, once a fresh minimum sample has gone out, the rates are again above the thresholds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    """What the delivery watch has seen of one job (the delivery-watch table's value)."""

    company_id: int | None = None
    sent: int = 0
    bounced: int = 0
    complained: int = 0
    # The counts when the job last paused: the next decision looks only at what came after.
    base_sent: int = 0
    base_bounced: int = 0
    base_complained: int = 0

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DeliveryCounts:
        return cls(**raw)  # an unknown or misspelt field fails here

    def rebased(self) -> DeliveryCounts:
        return DeliveryCounts(self.company_id, self.sent, self.bounced, self.complained,
                              self.sent, self.bounced, self.complained)


@dataclass(frozen=True, slots=True)
class PauseDecision:
    reason: str
    sent: int
    bounced: int
    complained: int
    bounce_rate: float
    complaint_rate: float


def should_pause(counts: DeliveryCounts, *, bounce_threshold: float, complaint_threshold: float,
                 min_sample: int) -> PauseDecision | None:
    """The decision to pause, or None: strictly above a threshold, and only once min_sample have been sent."""
    sent = counts.sent - counts.base_sent
    if sent < min_sample or sent <= 0:
        return None
    bounced, complained = counts.bounced - counts.base_bounced, counts.complained - counts.base_complained
    bounce_rate, complaint_rate = bounced / sent, complained / sent
    reasons = []
    if bounce_rate > bounce_threshold:
        reasons.append(f"bounce rate {bounce_rate:.1%} ({bounced} of {sent}) above {bounce_threshold:.1%}")
    if complaint_rate > complaint_threshold:
        reasons.append(f"complaint rate {complaint_rate:.2%} ({complained} of {sent}) above "
                       f"{complaint_threshold:.2%}")
    if not reasons:
        return None
    return PauseDecision("; ".join(reasons), sent, bounced, complained, bounce_rate, complaint_rate)
