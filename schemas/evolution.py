"""Schema evolution rules, checked: the JSON Schemas in the tree against a committed baseline.

A consumer built against an earlier release must keep reading every event type it knows. So, per ``ce_type``
(whose ``.vN`` is the type's version), comparing the baseline schema (``schemas/baseline/``) with the one in
the tree (``schemas/json/``), these are BACKWARD-incompatible and fail the check:

- a field removed or renamed (a rename is a removal plus an addition);
- a field's type changed (widening is allowed: a new ``null`` branch, ``integer`` -> ``number``);
- an optional field made required, or a new field added as required;
- an enum narrowed (a value dropped), or a constraint narrowed (shorter ``maxLength``, higher ``minimum``,
  a new or changed ``pattern`` or ``format``, fewer tuple items);
- a type dropped from the tree without an upcaster (``schemas/upcasters.py``) that reads it as a newer type;
- a schema whose ``x-version`` is not its type's ``.vN``.

A breaking change is made as a new version: the type becomes ``….v2`` (a new type, always compatible), and
an upcaster turns a ``….v1`` record into a ``….v2`` one, so records already in the log stay readable. The
upcaster is proven, not trusted: records built from the old schema (``schemas/samples.py``) and its own
examples must come out of it valid for the new schema. The old version's schema stays in the tree (frozen,
``x-superseded-by``) for consumers in other languages.

``python -m schemas.evolution`` checks (exit 1 and one line per break); ``--refresh-baseline`` copies the
tree's schemas into the baseline at a release.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schemas import upcasters as registry
from schemas.samples import NoSample, samples
from schemas.upcasters import Upcaster, upcast_data

HERE = Path(__file__).parent
TREE_DIR = HERE / "json"
BASELINE_DIR = HERE / "baseline"
SUFFIX = ".schema.json"

Schema = Mapping[str, Any]

# Narrowing a bound: the new value refuses something the old one allowed.
_UPPER_BOUNDS = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")
_LOWER_BOUNDS = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
_EXACT = ("pattern", "format")


def load(directory: Path) -> dict[str, Schema]:
    """ce_type -> JSON Schema for every ``*.schema.json`` in ``directory``."""
    files = sorted(directory.glob(f"*{SUFFIX}"))
    return {p.name.removesuffix(SUFFIX): json.loads(p.read_text()) for p in files}


class _Comparison:
    def __init__(self, old_root: Schema, new_root: Schema) -> None:
        self.old_root, self.new_root = old_root, new_root
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '(root)'}: {message}")

    def resolve(self, schema: Schema, root: Schema) -> Schema:
        seen = 0
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/") or seen > 20:
                raise ValueError(f"unsupported $ref {ref!r}")
            target: Any = root
            for part in ref[2:].split("/"):
                target = target[part]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def branches(self, schema: Schema, root: Schema) -> list[Schema]:
        """The alternatives a schema accepts, one per JSON type (anyOf/oneOf flattened, $refs resolved)."""
        schema = self.resolve(schema, root)
        alternatives = schema.get("anyOf") or schema.get("oneOf")
        if alternatives:
            shared = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            return [b for alt in alternatives for b in self.branches({**shared, **alt}, root)]
        types = schema.get("type")
        if isinstance(types, list):
            return [{**schema, "type": t} for t in types]
        if types is None and "properties" in schema:
            return [{**schema, "type": "object"}]
        return [schema]

    def compare(self, old: Schema, new: Schema, path: str) -> None:
        new_branches = self.branches(new, self.new_root)
        if any("type" not in b and "const" not in b and "enum" not in b for b in new_branches):
            return  # the new schema accepts anything at this place
        for old_branch in self.branches(old, self.old_root):
            old_type = old_branch.get("type")
            match = _matching_branch(old_type, new_branches)
            if match is None:
                accepted = sorted({str(b.get("type")) for b in new_branches})
                self.fail(path, f"type {old_type} is no longer accepted (now {' | '.join(accepted)})")
                continue
            self.compare_branch(old_branch, match, path)

    def compare_branch(self, old: Schema, new: Schema, path: str) -> None:
        self.compare_values(old, new, path)
        self.compare_bounds(old, new, path)
        kind = old.get("type")
        if kind == "object":
            self.compare_object(old, new, path)
        elif kind == "array":
            self.compare_array(old, new, path)

    def compare_values(self, old: Schema, new: Schema, path: str) -> None:
        """enum and const: the values a field may take must not shrink."""
        if "enum" in new:
            allowed = new["enum"]
            before = old["enum"] if "enum" in old else [old["const"]] if "const" in old else None
            if before is None:
                self.fail(path, f"restricted to the values {allowed}")
            elif dropped := [v for v in before if v not in allowed]:
                self.fail(path, f"enum narrowed: {dropped} no longer allowed")
        if "const" in new:
            before = [old["const"]] if "const" in old else old.get("enum")
            if before != [new["const"]]:
                self.fail(path, f"restricted to the value {new['const']!r} (was {before or 'any'})")

    def compare_bounds(self, old: Schema, new: Schema, path: str) -> None:
        """Formats, patterns and limits must stay, or widen."""
        for key in _EXACT:
            if key in new and new[key] != old.get(key):
                self.fail(path, f"{key} changed: {old.get(key)!r} -> {new[key]!r}")
        for key in _UPPER_BOUNDS:
            if key in new and (key not in old or new[key] < old[key]):
                self.fail(path, f"{key} narrowed: {old.get(key)!r} -> {new[key]!r}")
        for key in _LOWER_BOUNDS:
            if key in new and (key not in old or new[key] > old[key]):
                self.fail(path, f"{key} narrowed: {old.get(key)!r} -> {new[key]!r}")

    def compare_object(self, old: Schema, new: Schema, path: str) -> None:
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
        prefix = f"{path}." if path else ""
        for name in old_props:
            if name not in new_props:
                self.fail(f"{prefix}{name}", "field removed (or renamed)")
            else:
                self.compare(old_props[name], new_props[name], f"{prefix}{name}")
        for name in sorted(new_required - old_required):
            if name in old_props:
                self.fail(f"{prefix}{name}", "optional field made required")
            else:
                self.fail(f"{prefix}{name}",
                          "new field is required (a new field must be optional, with a default)")
        if new.get("additionalProperties") is False and old.get("additionalProperties") is not False:
            self.fail(path, "additional properties no longer allowed")

    def compare_array(self, old: Schema, new: Schema, path: str) -> None:
        old_prefix, new_prefix = old.get("prefixItems", []), new.get("prefixItems", [])
        if len(new_prefix) != len(old_prefix):
            self.fail(path, f"tuple length changed: {len(old_prefix)} -> {len(new_prefix)}")
        for i, (o, n) in enumerate(zip(old_prefix, new_prefix, strict=False)):
            self.compare(o, n, f"{path}[{i}]")
        if "items" in old and "items" in new and old["items"] is not False:
            self.compare(old["items"], new["items"], f"{path}[]")
        elif "items" in new and "items" not in old and not old_prefix:
            self.compare({}, new["items"], f"{path}[]")


def _matching_branch(old_type: object, new_branches: list[Schema]) -> Schema | None:
    for branch in new_branches:
        if branch.get("type") == old_type:
            return branch
    if old_type == "integer":  # every integer is a number: widening
        return next((b for b in new_branches if b.get("type") == "number"), None)
    if old_type is None:  # const/enum-only old branch
        return new_branches[0] if len(new_branches) == 1 else None
    return None


def compare(old: Schema, new: Schema) -> list[str]:
    """Every BACKWARD-incompatible difference from ``old`` to ``new`` (one type's schemas); [] if none."""
    comparison = _Comparison(old, new)
    comparison.compare(old, new, "")
    return comparison.problems


def check(baseline: Mapping[str, Schema], tree: Mapping[str, Schema],
          upcasters: Mapping[str, Upcaster] | None = None) -> list[str]:
    """Breaks of the evolution rules, as lines ``ce_type: path: what``; [] when the tree may be released.

    ``upcasters`` maps an old ce_type to its upcaster (default: the registry in ``schemas.upcasters``).
    """
    upcasters = registry.UPCASTERS if upcasters is None else upcasters
    problems: list[str] = []
    for ce_type, old in sorted(baseline.items()):
        version_of(ce_type)
        if ce_type in tree:
            problems += [f"{ce_type}: {p}" for p in compare(old, tree[ce_type])]
        elif ce_type in upcasters:
            problems.append(f"{ce_type}: retired, but its schema left the tree: consumers in other languages"
                            " validate its records with it (python -m schemas.generate keeps it)")
        else:
            problems.append(f"{ce_type}: type removed without an upcaster to a newer version")
    for ce_type, schema in sorted(tree.items()):
        if schema.get("x-version", version_of(ce_type)) != version_of(ce_type):
            problems.append(f"{ce_type}: x-version {schema['x-version']} is not the type's version")
    for ce_type in sorted(upcasters):
        problems += [f"{ce_type}: {p}" for p in prove_upcaster(ce_type, baseline, tree, upcasters)]
    return problems


def prove_upcaster(ce_type: str, baseline: Mapping[str, Schema], tree: Mapping[str, Schema],
                   upcasters: Mapping[str, Upcaster]) -> list[str]:
    """An upcaster reads the old version: its chain ends at a newer type in the tree, and records of the old
    version (generated from its schema, and the upcaster's own examples) come out valid for that type."""
    old_schema = baseline.get(ce_type) or tree.get(ce_type)  # as released; else as retired since
    if old_schema is None:
        return ["upcaster for a type with no schema in the tree or the baseline"]
    target, step = ce_type, upcasters[ce_type]
    seen = set()
    while target in upcasters and target not in seen:
        seen.add(target)
        target = upcasters[target].to_type
    if target in seen:
        return [f"upcasters go round in a circle at {target}"]
    if target not in tree:
        return [f"its upcaster leads to {target}, which is not in the tree"]
    if version_of(target) <= version_of(ce_type):
        return [f"its upcaster leads to {target}, which is not a newer version"]
    examples = {f"example {i}": dict(e) for i, e in enumerate(step.examples)}
    try:
        records = {**samples(old_schema), **examples}
    except NoSample as exc:
        if not examples:
            return [f"cannot build a record of the old version ({exc}): give the upcaster examples"]
        records = examples
    problems = []
    for name, record in records.items():
        if errors := validation_errors(old_schema, record):
            problems.append(f"{name} is not a valid {ce_type} record: {errors}")
            continue
        try:
            new_type, new_record = upcast_data(ce_type, record, upcasters)
        except ValueError as exc:
            problems.append(f"the upcaster cannot read the {name} old record: {exc}")
            continue
        if errors := validation_errors(tree[new_type], new_record):
            problems.append(f"the {name} old record, upcast, is not a valid {new_type}: {errors}")
    return problems


def validation_errors(schema: Schema, record: object) -> str:
    """The first few reasons ``record`` does not match ``schema`` (formats checked); '' when it does."""
    # a test dependency (no stubs): the check runs in CI, not in the service
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    return "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:3])


def version_of(ce_type: str) -> int:
    """The N of a ``….vN`` type: every type carries a version."""
    head, _, tail = ce_type.rpartition(".v")
    if not head or not tail.isdigit():
        raise ValueError(f"{ce_type!r} has no .vN version")
    return int(tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refresh-baseline", action="store_true",
                        help="at a release: make the tree's schemas the new baseline")
    parser.add_argument("--baseline", type=Path, default=BASELINE_DIR, help="default: %(default)s")
    parser.add_argument("--tree", type=Path, default=TREE_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.refresh_baseline:
        args.baseline.mkdir(exist_ok=True)
        for stale in args.baseline.glob(f"*{SUFFIX}"):
            stale.unlink()
        for source in args.tree.glob(f"*{SUFFIX}"):
            shutil.copyfile(source, args.baseline / source.name)
        print(f"baseline refreshed: {len(list(args.baseline.glob(f'*{SUFFIX}')))} schemas in {args.baseline}")
        return 0
    baseline, tree = load(args.baseline), load(args.tree)
    problems = check(baseline, tree)
    for line in problems:
        print(f"incompatible: {line}", file=sys.stderr)
    if not problems:
        print(f"compatible: {len(tree)} schemas in {args.tree} against {len(baseline)} in {args.baseline}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
