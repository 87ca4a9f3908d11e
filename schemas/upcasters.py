"""Upcasters: read a record of an older version of an event type as the current version.

When a type changes incompatibly it gets a new version (``….v1`` -> ``….v2``, see
``schemas/evolution.py``); the records already in the log keep their old ``ce_type``. Register one function
per old version here; the decoder (``schemas.envelope.decode``) applies them, chained, before it validates
the record::

    @upcaster("org.manireports.offload.recipient.sent.v1", "org.manireports.offload.recipient.sent.v2")
    def _sent_v1_to_v2(data: dict) -> dict:
        return {**data, "provider": {"name": data["provider"]}}

An upcaster takes the old record's JSON object and returns the new one; it must not need anything else
(no lookups), so a replay gives the same answer every time. None are registered yet: every type is at v1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

UpcastFunction = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Upcaster:
    from_type: str
    to_type: str
    function: UpcastFunction


UPCASTERS: dict[str, Upcaster] = {}


def upcaster(from_type: str, to_type: str) -> Callable[[UpcastFunction], UpcastFunction]:
    """Register ``function`` as the way to read ``from_type`` records as ``to_type``."""

    def register(function: UpcastFunction) -> UpcastFunction:
        if from_type in UPCASTERS:
            raise ValueError(f"two upcasters for {from_type}")
        UPCASTERS[from_type] = Upcaster(from_type, to_type, function)
        return function

    return register


def upcaster_targets() -> dict[str, str]:
    """Old ce_type -> the ce_type its upcaster produces (what the evolution check needs)."""
    return {name: u.to_type for name, u in UPCASTERS.items()}


def upcast(ce_type: str, value: bytes) -> tuple[str, bytes]:
    """The record as the newest type its upcasters reach; unchanged when ``ce_type`` has no upcaster."""
    if ce_type not in UPCASTERS:
        return ce_type, value
    data = json.loads(value)
    seen: set[str] = set()
    while ce_type in UPCASTERS and ce_type not in seen:
        seen.add(ce_type)
        step = UPCASTERS[ce_type]
        try:
            data = step.function(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{step.from_type} -> {step.to_type}: {exc!r}") from None
        ce_type = step.to_type
    return ce_type, json.dumps(data).encode()
