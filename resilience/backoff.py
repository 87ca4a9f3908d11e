"""How long to wait before trying again: one exponential back-off with the jitter each caller needs.

- ``full``: a uniform draw below the ceiling; spreads many workers' retries of one provider furthest apart
  (email delivery).
- ``equal``: half the ceiling fixed, half random; never retries sooner than half the ceiling, so a Moodle that
  comes back is not hit by every worker at once, and not too soon (callbacks).
- ``none``: the ceiling itself; for a short local retry whose timing nobody else shares (an agent retrying
  one record after a broker or database hiccup).
"""

from __future__ import annotations

import math
import random
from typing import Literal

Jitter = Literal["full", "equal", "none"]

_MAX_EXPONENT = 32  # base * 2**32 is past any sane cap; avoids huge floats for absurd attempt counts


def backoff(attempt: int, *, base: float, cap: float = math.inf, jitter: Jitter = "full",
            rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``base * 2**(attempt-1)``, capped, jittered."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, _MAX_EXPONENT))
    if jitter == "none":
        return ceiling
    draw = (rng or random).uniform
    if jitter == "equal":
        return ceiling / 2 + draw(0.0, ceiling / 2)
    return draw(0.0, ceiling)
