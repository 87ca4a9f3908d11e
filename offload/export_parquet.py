"""The event log as Parquet for analysts: one dataset per event type, with typed columns.

Column types come from the event contract (the JSON Schemas ``schemas.generate`` writes): integers are int64,
booleans bool, ``date-time`` strings timestamps (UTC, microseconds), lists and objects JSON text. Every row
also has the record's place (topic, partition, offset), its CloudEvents attributes, and ``company_id``: the
event's own, or for outcome events the company of their job (from its JobAccepted). ``partition_by`` writes
Hive-style directories (``company_id=7/date=2026-11-30/``) that DuckDB, pyarrow and Spark read as columns.

Needs the ``analytics`` extra: ``pip install 'manireports-offload[analytics]'``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from offload.logtools import (
    EXCLUDED_FIELDS,
    TYPE_PREFIX,
    EventFilter,
    companies_of_jobs,
    company_of,
    read_log,
)
from schemas.events import EVENT_TYPES, Event
from schemas.generate import schema_for

if TYPE_CHECKING:
    import pyarrow as pa

PARTITION_KEYS = ("company", "date")
ROWS_PER_GROUP = 50_000


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the writer lives there
    except ImportError:
        raise SystemExit("Parquet export needs pyarrow: "
                         "pip install 'manireports-offload[analytics]'") from None
    return pyarrow


def column_type(prop: dict, root: dict) -> pa.DataType:
    """The Arrow type of one JSON Schema property (nullable either way: Parquet columns all are)."""
    pa = _pyarrow()
    branches = [_resolve(b, root) for b in prop.get("anyOf", [prop])]
    branches = [b for b in branches if b.get("type") != "null"]
    if len(branches) != 1:
        return pa.string()  # a union of types: kept as JSON text
    branch = branches[0]
    kind = branch.get("type", "string" if "enum" in branch or "const" in branch else None)
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "string" and branch.get("format") == "date-time":
        return pa.timestamp("us", tz="UTC")
    return pa.string()  # strings, and arrays/objects as JSON text


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    return schema


def envelope_schema() -> pa.Schema:
    pa = _pyarrow()
    return pa.schema([
        ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
        ("record_time", pa.timestamp("us", tz="UTC")), ("ce_id", pa.string()), ("ce_source", pa.string()),
        ("ce_type", pa.string()), ("ce_time", pa.timestamp("us", tz="UTC")), ("ce_subject", pa.string()),
    ])


def arrow_schema(cls: type[Event]) -> pa.Schema:
    """Envelope columns, the event's own fields in the contract's order, then company_id if it has none."""
    pa = _pyarrow()
    contract = schema_for(cls)
    fields = list(envelope_schema())
    for name, prop in contract["properties"].items():
        if name not in EXCLUDED_FIELDS:
            fields.append(pa.field(name, column_type(prop, contract)))
    if "company_id" not in contract["properties"]:
        fields.append(pa.field("company_id", pa.int64()))
    return pa.schema(fields)


@dataclass
class _Dataset:
    """The rows of one event type (and one partition directory), written as row groups of one file."""

    path: Path
    schema: pa.Schema
    rows: list[dict[str, Any]] = field(default_factory=list)
    writer: Any = None
    count: int = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= ROWS_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        pa = _pyarrow()
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pa.parquet.ParquetWriter(self.path, self.schema, compression="zstd")
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _row(entry: Any, company_id: int | None, json_columns: Iterable[str]) -> dict[str, Any]:
    event: Event = entry.event
    row: dict[str, Any] = {
        "topic": entry.topic, "partition": entry.partition, "offset": entry.offset, "record_time": entry.when,
        **{f"ce_{k}": v or None for k, v in entry.attrs.items()},
        **event.model_dump(mode="python", exclude=set(EXCLUDED_FIELDS)),
        "company_id": company_id,
    }
    row["ce_time"] = datetime.fromisoformat(row["ce_time"]) if row["ce_time"] else None
    if json_columns:
        as_json = event.model_dump(mode="json", include=set(json_columns))
        for name in json_columns:
            row[name] = None if as_json.get(name) is None else json.dumps(as_json[name], ensure_ascii=False)
    return row


def _partition_dir(out_dir: Path, name: str, keys: tuple[str, ...], company_id: int | None,
                   day: date) -> Path:
    path = out_dir / name
    if "company" in keys:
        path /= f"company_id={'__HIVE_DEFAULT_PARTITION__' if company_id is None else company_id}"
    if "date" in keys:
        path /= f"date={day.isoformat()}"
    return path


async def export_parquet(settings: Settings, flt: EventFilter, out_dir: Path,
                         partition_by: tuple[str, ...] = ()) -> dict[str, int]:
    """Write the matching events as Parquet; returns event type (without prefix) -> rows written.

    Without ``partition_by``: ``out_dir/<type>.parquet``. With ``("company", "date")`` (either or both):
    ``out_dir/<type>/company_id=<id>/date=<YYYY-MM-DD>/part-0.parquet``, the date being the event's
    ``ce_time`` in UTC; the partition values are then in the path, not in the file.
    """
    _pyarrow()  # fail before reading anything when the extra is missing
    unknown = set(partition_by) - set(PARTITION_KEYS)
    if unknown:
        raise ValueError(f"cannot partition by {sorted(unknown)}; choose from {PARTITION_KEYS}")
    schemas = {cls.ce_type: arrow_schema(cls) for cls in EVENT_TYPES}
    json_columns = {cls.ce_type: json_fields(cls) for cls in EVENT_TYPES}
    if "company" in partition_by:  # the value is in the directory name instead
        schemas = {t: s.remove(s.get_field_index("company_id")) for t, s in schemas.items()}
    companies = await companies_of_jobs(settings)
    datasets: dict[Path, _Dataset] = {}
    counts: dict[str, int] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        async for entry in read_log(settings, follow=False, from_beginning=True):
            event = entry.event
            company_id = company_of(event, companies)
            if not flt.matches(event, entry.when):
                continue
            if flt.company_id is not None and company_id != flt.company_id:
                continue
            name = event.ce_type.removeprefix(TYPE_PREFIX)
            row = _row(entry, company_id, json_columns[event.ce_type])
            if partition_by:
                day = (row["ce_time"] or entry.when).date()
                path = _partition_dir(out_dir, name, partition_by, company_id, day) / "part-0.parquet"
            else:
                path = out_dir / f"{name}.parquet"
            if path not in datasets:
                datasets[path] = _Dataset(path, schemas[event.ce_type])
            datasets[path].add(row)
            counts[name] = counts.get(name, 0) + 1
    finally:
        for dataset in datasets.values():
            dataset.close()
    return counts


def json_fields(cls: type[Event]) -> list[str]:
    """The exported fields that are not a plain scalar in the contract: written as JSON text."""
    contract = schema_for(cls)
    out = []
    for name, prop in contract["properties"].items():
        branches = [_resolve(b, contract) for b in prop.get("anyOf", [prop])]
        branches = [b for b in branches if b.get("type") != "null"]
        scalar = len(branches) == 1 and (branches[0].get("type") in ("integer", "number", "boolean", "string")
                                         or "enum" in branches[0] or "const" in branches[0])
        if not scalar and name not in EXCLUDED_FIELDS:
            out.append(name)
    return out
