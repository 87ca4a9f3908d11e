"""Write the JSON Schema files under ``schemas/json/`` from the event classes (the one source of truth).

Run ``python -m schemas.generate`` after changing ``schemas/events/``; ``--check`` exits 1 on drift.

Besides the current types, ``json/`` keeps the schema of every retired version (a type with an upcaster,
``schemas/upcasters.py``): its records stay in the log, and consumers in other languages validate them with
it. That file is the baseline's, frozen, marked ``x-superseded-by`` with the type its upcaster produces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from schemas import upcasters as registry
from schemas.events import EVENT_TYPES, Event
from schemas.evolution import version_of

OUT_DIR = Path(__file__).parent / "json"
BASELINE_DIR = Path(__file__).parent / "baseline"


def schema_for(cls: type[Event]) -> dict[str, Any]:
    schema = cls.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:manireports:offload:schema:{cls.ce_type}",
        **schema,
        "x-cloudevents-type": cls.ce_type,
        "x-version": version_of(cls.ce_type),
        "x-topic": cls.topic,
    }


def retired_schema(ce_type: str, superseded_by: str) -> dict[str, Any]:
    """A retired version's schema: the baseline's (or, if it never reached a release, the tree's), frozen."""
    for directory in (BASELINE_DIR, OUT_DIR):
        path = directory / f"{ce_type}.schema.json"
        if path.exists():
            # x-version too: a baseline written before schemas carried it has none.
            return {**json.loads(path.read_text()), "x-version": version_of(ce_type),
                    "x-superseded-by": superseded_by}
    raise FileNotFoundError(f"{ce_type} has an upcaster but no schema in {BASELINE_DIR} or {OUT_DIR}")


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def rendered() -> dict[str, str]:
    """File name -> file text for every event type, current and retired."""
    files = {f"{cls.ce_type}.schema.json": _text(schema_for(cls)) for cls in EVENT_TYPES}
    for old, step in registry.UPCASTERS.items():
        name = f"{old}.schema.json"
        if name in files:
            raise ValueError(f"{old} has an upcaster but is still a current type in EVENT_TYPES")
        files[name] = _text(retired_schema(old, step.to_type))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed files differ")
    args = parser.parse_args(argv)
    files = rendered()
    existing = {p.name: p.read_text() for p in OUT_DIR.glob("*.schema.json")}
    if args.check:
        drift = sorted(set(files) ^ set(existing) | {n for n in files if existing.get(n) != files[n]})
        for name in drift:
            print(f"drift: schemas/json/{name}", file=sys.stderr)
        return 1 if drift else 0
    OUT_DIR.mkdir(exist_ok=True)
    for stale in set(existing) - set(files):
        (OUT_DIR / stale).unlink()
    for name, text in files.items():
        (OUT_DIR / name).write_text(text)
    print(f"wrote {len(files)} schemas to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
