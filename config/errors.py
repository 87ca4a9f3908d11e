"""Configuration errors as an operator reads them at start-up: what is wrong and where, never a value.

Pydantic's own message quotes the input (``input_value={'secret': '...'}``), so a key configured without its
``company_id`` would print its secret into the log of a process that refuses to start.
"""

from __future__ import annotations

from pydantic import ValidationError


class ConfigurationError(Exception):
    """The environment does not make a valid configuration; the message names the settings, not their values."""


def describe_errors(exc: ValidationError) -> str:
    """Each problem as ``location: message``, without the input values pydantic would quote."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)
