"""Why something failed, in one line: what health, logs, events and error answers quote of an exception or a
provider's answer (whitespace folded, capped, so a multi-line traceback text or an HTML error page stays a line)."""

from __future__ import annotations

from typing import Any

LIMIT = 200


def one_line(text: Any, limit: int = LIMIT) -> str:
    """``text`` with its whitespace folded to single spaces, cut to ``limit`` characters (an ellipsis marks a cut)."""
    folded = " ".join(str(text).split())
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


def reason(exc: BaseException, limit: int = LIMIT) -> str:
    """``Type: message`` of an exception in one line, or just its type when it has no message."""
    text = one_line(exc, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
