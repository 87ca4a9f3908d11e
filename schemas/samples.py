"""Records made from a JSON Schema: the evidence that an upcaster really reads an old version.

The evolution check (``schemas/evolution.py``) takes a retired type's baseline schema, builds two records that
schema accepts — the *minimal* one (required fields only, ``null`` where allowed, the lowest values) and the
*full* one (every field, non-null branches, the last enum value) — runs each through the type's upcasters and
validates the result against the newer type's schema. An upcaster that forgets an optional field, or that
crashes on a record without one, fails the check instead of the first replay.

This covers what our generated schemas use ($ref, anyOf, enum/const, formats, bounds, simple patterns); a
schema it cannot satisfy (an unusual ``pattern``) is reported, and the upcaster can carry hand-written
``examples`` instead (``schemas.upcasters.upcaster``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Schema = Mapping[str, Any]

_FORMATS = {
    "date-time": "2026-01-02T03:04:05+00:00",
    "date": "2026-01-02",
    "time": "03:04:05+00:00",
    "email": "learner@example.org",
    "uri": "https://example.org/a",
    "uuid": "7d1f3c2e-0a4b-4c5d-8e6f-0123456789ab",
    "duration": "P1D",
}
# Tried in order against a string's pattern and length bounds; covers the ids, slugs and codes we use.
_STRING_CANDIDATES = ("a", "a1", "job-1", "abc_1", "A1b2C3d4", "x" * 8, "https://example.org/a",
                      "learner@example.org", "0123456789abcdef" * 4)


class NoSample(ValueError):
    """The schema asks for something this generator does not build."""


def samples(schema: Schema) -> dict[str, Any]:
    """``{"minimal": …, "full": …}``: two instances of ``schema`` (an event's JSON object)."""
    return {"minimal": _Builder(schema, full=False).build(schema, "$"),
            "full": _Builder(schema, full=True).build(schema, "$")}


class _Builder:
    def __init__(self, root: Schema, *, full: bool) -> None:
        self.root, self.full = root, full

    def resolve(self, schema: Schema) -> Schema:
        for _ in range(20):
            if "$ref" not in schema:
                return schema
            ref = schema["$ref"]
            if not ref.startswith("#/"):
                raise NoSample(f"unsupported $ref {ref!r}")
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target[part]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        raise NoSample("$ref chain too deep")

    def build(self, schema: Schema, path: str) -> Any:
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][-1 if self.full else 0]
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        if alternatives:
            shared = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            return self.build({**shared, **self.pick(alternatives)}, path)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = self.pick([{"type": t} for t in kind])["type"]
        if kind is None and "properties" in schema:
            kind = "object"
        return self.value(kind, schema, path)

    def pick(self, alternatives: list[Schema]) -> Schema:
        """Minimal: the null branch when there is one; full: the first that is not null."""
        resolved = [self.resolve(a) for a in alternatives]
        nulls = [a for a in resolved if a.get("type") == "null"]
        others = [a for a in resolved if a.get("type") != "null"]
        if self.full:
            return (others or nulls)[0]
        return (nulls or others)[0]

    def value(self, kind: object, schema: Schema, path: str) -> Any:
        if kind == "object":
            properties: Mapping[str, Schema] = schema.get("properties", {})
            wanted = properties if self.full else [n for n in properties if n in schema.get("required", [])]
            return {name: self.build(properties[name], f"{path}.{name}") for name in wanted}
        if kind == "array":
            prefix = [self.build(s, f"{path}[{i}]") for i, s in enumerate(schema.get("prefixItems", []))]
            count = max(schema.get("minItems", 0), 1 if self.full else 0) - len(prefix)
            items = schema.get("items", {})
            if items is False:
                return prefix
            return prefix + [self.build(items, f"{path}[]") for _ in range(max(count, 0))]
        if kind in ("integer", "number"):
            low = schema.get("minimum")
            if low is None:
                low = schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else 0
            number = max(low, 1) if self.full else low
            if "maximum" in schema:
                number = min(number, schema["maximum"])
            return int(number) if kind == "integer" else float(number)
        if kind == "boolean":
            return self.full
        if kind == "null":
            return None
        if kind == "string":
            return self.string(schema, path)
        if kind is None:
            return "any"
        raise NoSample(f"{path}: unsupported type {kind!r}")

    def string(self, schema: Schema, path: str) -> str:
        if schema.get("format") in _FORMATS:
            return _FORMATS[schema["format"]]
        pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
        low, high = schema.get("minLength", 0), schema.get("maxLength", 10_000)
        for candidate in _STRING_CANDIDATES:
            candidate = candidate if len(candidate) >= low else candidate * -(-low // len(candidate))
            candidate = candidate[:high]
            if len(candidate) >= low and (pattern is None or pattern.search(candidate)):
                return candidate
        raise NoSample(f"{path}: no sample string for pattern {schema.get('pattern')!r} and length "
                       f"{low}..{high}; give the upcaster examples")
