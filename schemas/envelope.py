"""CloudEvents 1.0 in Kafka binary mode: the value is the event's JSON, the attributes are ``ce_*`` headers.

A consumer that ignores headers can still read the JSON; a producer that sends no headers to the job-requests
topic (a Moodle plugin with a plain Kafka client) is read as JobRequested, the only type that topic carries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from schemas.events import BY_CE_TYPE, Event
from schemas.upcasters import upcast

SPEC_VERSION = b"1.0"
DEFAULT_SOURCE = "urn:manireports:offload"


class UndecodableRecord(Exception):
    """A record that is not a known, valid event; the agent dead-letters it instead of stopping."""


@dataclass(frozen=True, slots=True)
class Record:
    """An encoded event, ready for a Kafka producer."""

    topic: str  # short name, e.g. "jobs"
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def encode(event: Event, *, source: str = DEFAULT_SOURCE, event_id: str | None = None) -> Record:
    headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", (event_id or str(uuid.uuid4())).encode()),
        ("ce_source", source.encode()),
        ("ce_type", event.ce_type.encode()),
        ("ce_time", datetime.now(UTC).isoformat().encode()),
        ("ce_subject", event.subject().encode()),
        ("content-type", b"application/json"),
    ]
    return Record(event.topic, event.kafka_key().encode(), event.model_dump_json().encode(), headers)


def header_items(headers: object) -> list[tuple[str, object]]:
    """Headers as (name, value) pairs, in whatever shape a client hands them over (list of pairs or mapping)."""
    if not headers:
        return []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)  # type: ignore[call-overload]


def header(headers: object, name: str) -> bytes | None:
    """Look one header up (without copying them: the projector looks up every record's ce_type)."""
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items or ():  # type: ignore[attr-defined]
        if key == name:
            return value if isinstance(value, bytes) else str(value).encode()
    return None


def decode(value: bytes | None, headers: object, *, default: type[Event] | None = None) -> Event:
    """Decode one record's value by its ``ce_type`` header, or as ``default`` when the header is absent."""
    if value is None:
        raise UndecodableRecord("record has no value")
    raw_type = header(headers, "ce_type")
    if raw_type is None:
        if default is None:
            raise UndecodableRecord("record has no ce_type header")
        cls = default
    else:
        try:
            ce_type, value = upcast(raw_type.decode(), value)  # an older version, read as the current one
            cls = BY_CE_TYPE[ce_type]
        except (KeyError, UnicodeDecodeError):
            raise UndecodableRecord(f"unknown event type {raw_type[:200]!r}") from None
        except ValueError as exc:  # an old record its upcaster could not read
            raise UndecodableRecord(f"cannot upcast {raw_type[:200]!r}: {exc}") from None
    try:
        return cls.model_validate_json(value)
    except ValidationError as exc:
        raise UndecodableRecord(f"invalid {cls.__name__}: {_summarise(exc)}") from None


def _summarise(exc: ValidationError, limit: int = 5) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors[:limit]]
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more
