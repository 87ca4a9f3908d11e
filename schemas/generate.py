"""Write the JSON Schema files under ``schemas/json/`` from the event classes (the one source of truth).

Run ``python -m schemas.generate`` after changing ``schemas/events/``; ``--check`` exits 1 on drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from schemas.events import EVENT_TYPES, Event

OUT_DIR = Path(__file__).parent / "json"


def schema_for(cls: type[Event]) -> dict[str, Any]:
    schema = cls.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:manireports:offload:schema:{cls.ce_type}",
        **schema,
        "x-cloudevents-type": cls.ce_type,
        "x-topic": cls.topic,
    }


def rendered() -> dict[str, str]:
    """File name -> file text for every event type."""
    return {
        f"{cls.ce_type}.schema.json": json.dumps(schema_for(cls), indent=2, sort_keys=True) + "\n"
        for cls in EVENT_TYPES
    }


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
