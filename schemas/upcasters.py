"""Upcasters: read a record of an older version of an event type as the current version.

When a type changes incompatibly it gets a new version (``….v1`` -> ``….v2``, see
``schemas/evolution.py``); the records already in the log keep their old ``ce_type``. Register one function
per old version here; the decoder (``schemas.envelope.decode``) applies them, chained, before it validates
the record::

    @upcaster("org.manireports.offload.recipient.sent.v1", "org.manireports.offload.recipient.sent.v2")
    def _sent_v1_to_v2(data: dict) -> dict:
        return {**data, "provider": {"name": data["provider"]}}

An upcaster takes the old record's JSON object and returns the new one; it must not need anything else
(no lookups), so a replay gives the same answer every time. The evolution check proves each one: records built
from the old version's schema (``schemas/samples.py``: a minimal and a full one), plus any ``examples`` given
here, must come out valid against the new version's schema. The old version's schema file stays published in
``schemas/json/`` (``python -m schemas.generate`` keeps it, marked ``x-superseded-by``) so consumers in other
languages can still validate the old records in the log. None are registered yet: every type is at v1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

UpcastFunction = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Upcaster:
    from_type: str
    to_type: str
    function: UpcastFunction
    examples: tuple[dict[str, Any], ...] = ()  # real old records, checked besides the generated ones


UPCASTERS: dict[str, Upcaster] = {}


def upcaster(from_type: str, to_type: str, *, examples: Iterable[dict[str, Any]] = ()
             ) -> Callable[[UpcastFunction], UpcastFunction]:
    """Register ``function`` as the way to read ``from_type`` records as ``to_type``."""

    def register(function: UpcastFunction) -> UpcastFunction:
        if from_type in UPCASTERS:
            raise ValueError(f"two upcasters for {from_type}")
        UPCASTERS[from_type] = Upcaster(from_type, to_type, function, tuple(examples))
        return function

    return register


def upcast_data(ce_type: str, data: dict[str, Any],
                registry: Mapping[str, Upcaster] | None = None) -> tuple[str, dict[str, Any]]:
    """``data`` (a ``ce_type`` record's JSON object) as the newest type the upcasters reach.

    ValueError when an upcaster cannot read it (a field it needs is missing or of the wrong type) or the
    upcasters go round in a circle.
    """
    registry = UPCASTERS if registry is None else registry
    seen: set[str] = set()
    while ce_type in registry:
        if ce_type in seen:
            raise ValueError(f"upcasters go round in a circle at {ce_type}")
        seen.add(ce_type)
        step = registry[ce_type]
        try:
            data = step.function(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{step.from_type} -> {step.to_type}: {exc!r}") from None
        ce_type = step.to_type
    return ce_type, data


def upcast(ce_type: str, value: bytes) -> tuple[str, bytes]:
    """The record as the newest type its upcasters reach; unchanged when ``ce_type`` has no upcaster."""
    if ce_type not in UPCASTERS:
        return ce_type, value
    ce_type, data = upcast_data(ce_type, json.loads(value))
    return ce_type, json.dumps(data).encode()
