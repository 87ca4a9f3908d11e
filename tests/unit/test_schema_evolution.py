"""Schema evolution: the tree against the committed baseline, and the checker's rules one by one."""

from __future__ import annotations

import copy
import json
import shutil
from typing import ClassVar

import pytest
from pydantic import Field

from schemas import evolution, generate, upcasters
from schemas.envelope import UndecodableRecord, decode, encode
from schemas.events import BY_CE_TYPE, Event, RecipientSent
from schemas.evolution import BASELINE_DIR, TREE_DIR, check, compare, load, validation_errors, version_of
from schemas.generate import schema_for
from schemas.samples import samples

SENT = RecipientSent.ce_type


def sent_schema() -> dict:
    return schema_for(RecipientSent)


def test_the_tree_is_backward_compatible_with_the_baseline():
    baseline, tree = load(BASELINE_DIR), load(TREE_DIR)
    assert baseline, "the committed baseline is missing"
    problems = check(baseline, tree)
    assert not problems, (
        "backward-incompatible schema changes (bump the type to .vN+1 and add an upcaster in"
        " schemas/upcasters.py; see schemas/README.md):\n  " + "\n  ".join(problems))


# --- incompatible changes are caught ----------------------------------------------------------------------
def test_removing_a_field_is_caught():
    new = sent_schema()
    del new["properties"]["attempts"]
    new["required"].remove("attempts")
    assert compare(sent_schema(), new) == ["attempts: field removed (or renamed)"]


def test_renaming_a_field_is_caught():
    new = sent_schema()
    new["properties"]["message_ident"] = new["properties"].pop("message_id")
    new["required"] = ["message_ident" if r == "message_id" else r for r in new["required"]]
    problems = compare(sent_schema(), new)
    assert "message_id: field removed (or renamed)" in problems
    assert any(p.startswith("message_ident: new field is required") for p in problems)


def test_changing_a_type_is_caught():
    new = sent_schema()
    new["properties"]["attempts"] = {"type": "string", "title": "Attempts"}
    assert compare(sent_schema(), new) == ["attempts: type integer is no longer accepted (now string)"]


def test_making_an_optional_field_required_is_caught():
    new = sent_schema()
    new["required"].append("provider_message_id")
    assert compare(sent_schema(), new) == ["provider_message_id: optional field made required"]


def test_dropping_null_from_a_nullable_field_is_caught():
    new = sent_schema()
    new["properties"]["provider_message_id"] = {"type": "string", "default": None}
    assert compare(sent_schema(), new) == [
        "provider_message_id: type null is no longer accepted (now string)"]


def test_narrowing_an_enum_is_caught():
    from schemas.events import CompanySettingsChanged

    old = schema_for(CompanySettingsChanged)
    new = copy.deepcopy(old)
    new["properties"]["email_provider"]["enum"] = ["ses", "sendgrid"]
    assert compare(old, new) == ["email_provider: enum narrowed: ['mailgun'] no longer allowed"]


def test_narrowing_a_constraint_inside_a_nested_definition_is_caught():
    from schemas.events import JobRequested

    old = schema_for(JobRequested)
    new = copy.deepcopy(old)
    new["$defs"]["Recipient"]["properties"]["email"]["maxLength"] = 100
    assert compare(old, new) == ["recipients[].email: maxLength narrowed: 254 -> 100"]


def test_removing_a_type_without_an_upcaster_is_caught():
    tree = load(TREE_DIR)
    del tree[SENT]
    assert check(load(BASELINE_DIR), tree, upcasters={}) == [
        f"{SENT}: type removed without an upcaster to a newer version"]


# --- compatible changes pass ------------------------------------------------------------------------------
def test_a_new_optional_field_passes():
    class RecipientSentWithCost(RecipientSent):
        cost_micros: int | None = Field(default=None, description="what the provider charged")

    assert compare(sent_schema(), schema_for(RecipientSentWithCost)) == []


def test_widening_passes():
    from schemas.events import CompanySettingsChanged

    old = schema_for(CompanySettingsChanged)
    new = copy.deepcopy(old)
    new["properties"]["email_provider"]["enum"].append("postmark")  # enum widened
    new["properties"]["user_threshold"]["type"] = "number"  # integer -> number
    del new["properties"]["user_threshold"]["minimum"]  # constraint dropped
    new["properties"]["changed_by"]["anyOf"].append({"type": "integer"})  # another branch
    assert compare(old, new) == []


def test_a_new_event_type_passes():
    class SomethingNew(Event):
        ce_type: ClassVar[str] = "org.manireports.offload.something.new.v1"
        topic: ClassVar[str] = "jobs"
        job_id: str

    tree = {**load(BASELINE_DIR), SomethingNew.ce_type: schema_for(SomethingNew)}
    assert check(load(BASELINE_DIR), tree) == []


class RecipientSentV2(RecipientSent):
    """recipient.sent v2 for the tests: ``attempts`` renamed ``tries`` (a breaking change: a new version)."""

    ce_type: ClassVar[str] = "org.manireports.offload.recipient.sent.v2"
    attempts: int = Field(default=0, exclude=True)
    tries: int


def sent_v1_to_v2(data: dict) -> dict:
    data = dict(data)
    data["tries"] = data.pop("attempts")
    return data


def bumped_tree() -> dict:
    """The tree after the bump: v2 current, v1's baseline schema kept (retired, as generate keeps it)."""
    return load(TREE_DIR) | {RecipientSentV2.ce_type: schema_for(RecipientSentV2)}


def upcaster_of(function, examples=()) -> dict[str, upcasters.Upcaster]:
    return {SENT: upcasters.Upcaster(SENT, RecipientSentV2.ce_type, function, tuple(examples))}


def test_a_version_bump_with_an_upcaster_passes_and_the_decoder_reads_the_old_records(monkeypatch):
    """RecipientSent v1 -> v2 renames ``attempts`` to ``tries``; v1 records in the log are read as v2."""
    assert check(load(BASELINE_DIR), bumped_tree(), upcasters=upcaster_of(sent_v1_to_v2)) == []

    monkeypatch.setattr(upcasters, "UPCASTERS", {})
    monkeypatch.setitem(BY_CE_TYPE, RecipientSentV2.ce_type, RecipientSentV2)
    upcasters.upcaster(SENT, RecipientSentV2.ce_type)(sent_v1_to_v2)

    old = encode(RecipientSent(job_id="j1", batch_no=0, userid=5, email="a@example.org", provider="smtp",
                               message_id="<m@x>", attempts=3))
    event = decode(old.value, old.headers)
    assert isinstance(event, RecipientSentV2) and event.tries == 3 and event.userid == 5
    with pytest.raises(UndecodableRecord, match="cannot upcast"):
        decode(b'{"job_id": "j1"}', old.headers)  # no attempts to rename: a clear error, not a crash


def test_a_breaking_change_without_the_upcaster_is_caught():
    """The bump alone is not enough: v1 is no longer produced, and nothing reads its records as v2."""
    tree = {k: v for k, v in bumped_tree().items() if k != SENT}
    assert check(load(BASELINE_DIR), tree, upcasters={}) == [
        f"{SENT}: type removed without an upcaster to a newer version"]


def test_a_retired_version_must_stay_published():
    """Consumers in other languages validate the v1 records still in the log with v1's schema file."""
    tree = {k: v for k, v in bumped_tree().items() if k != SENT}
    assert check(load(BASELINE_DIR), tree, upcasters=upcaster_of(sent_v1_to_v2)) == [
        f"{SENT}: retired, but its schema left the tree: consumers in other languages validate its records"
        " with it (python -m schemas.generate keeps it)"]


def test_an_upcaster_that_does_not_make_the_new_version_is_caught():
    def forgets_the_rename(data: dict) -> dict:
        return dict(data)

    problems = check(load(BASELINE_DIR), bumped_tree(), upcasters=upcaster_of(forgets_the_rename))
    assert problems == [
        f"{SENT}: the minimal old record, upcast, is not a valid {RecipientSentV2.ce_type}:"
        " (root): 'tries' is a required property",
        f"{SENT}: the full old record, upcast, is not a valid {RecipientSentV2.ce_type}:"
        " (root): 'tries' is a required property"]


def test_an_upcaster_that_cannot_read_an_old_record_without_its_optional_fields_is_caught():
    def needs_the_optional_field(data: dict) -> dict:
        return {**sent_v1_to_v2(data), "provider_message_id": data["provider_message_id"].lower()}

    problems = check(load(BASELINE_DIR), bumped_tree(), upcasters=upcaster_of(needs_the_optional_field))
    assert problems == [f"{SENT}: the upcaster cannot read the minimal old record: {SENT} -> "
                        f"{RecipientSentV2.ce_type}: KeyError('provider_message_id')"]


def test_an_upcasters_example_must_be_a_record_of_the_old_version():
    bad_example = {"job_id": "j1", "userid": 5}
    problems = check(load(BASELINE_DIR), bumped_tree(), upcasters=upcaster_of(sent_v1_to_v2, [bad_example]))
    assert len(problems) == 1 and problems[0].startswith(
        f"{SENT}: example 0 is not a valid {SENT} record: (root): 'batch_no' is a required property")


def test_every_schema_carries_its_version():
    tree = load(TREE_DIR)
    assert {t: s["x-version"] for t, s in tree.items()} == {t: version_of(t) for t in tree}
    wrong = {**tree, SENT: {**tree[SENT], "x-version": 2}}
    assert check(load(BASELINE_DIR), wrong) == [f"{SENT}: x-version 2 is not the type's version"]


def test_records_can_be_built_from_every_schema_so_any_type_can_be_retired():
    """The proof of an upcaster starts from records built from the old schema: that works for every type."""
    for ce_type, schema in load(TREE_DIR).items():
        for kind, record in samples(schema).items():
            assert not validation_errors(schema, record), (ce_type, kind, validation_errors(schema, record))
        assert samples(schema)["minimal"] != samples(schema)["full"]


def test_generate_keeps_a_retired_versions_schema_frozen_and_the_bump_passes_the_check(monkeypatch):
    """The whole workflow: bump the class, register the upcaster, regenerate; the check passes."""
    monkeypatch.setattr(upcasters, "UPCASTERS", {})
    upcasters.upcaster(SENT, RecipientSentV2.ce_type)(sent_v1_to_v2)
    monkeypatch.setattr(generate, "EVENT_TYPES",
                        [RecipientSentV2 if cls is RecipientSent else cls for cls in generate.EVENT_TYPES])
    tree = {name.removesuffix(".schema.json"): json.loads(text) for name, text in generate.rendered().items()}
    retired = tree[SENT]
    assert (retired.pop("x-superseded-by"), retired["x-version"]) == (RecipientSentV2.ce_type, 1)
    assert retired == {**load(BASELINE_DIR)[SENT], "x-version": 1}  # frozen: as released, not regenerated
    assert tree[RecipientSentV2.ce_type]["x-version"] == 2
    assert check(load(BASELINE_DIR), tree) == []


# --- the check as CI runs it, on a copy of the schema files -------------------------------------------------
@pytest.fixture
def schema_copy(tmp_path):
    shutil.copytree(BASELINE_DIR, tmp_path / "baseline")
    shutil.copytree(TREE_DIR, tmp_path / "json")
    return tmp_path


def edit(path, change) -> None:
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))


def test_the_check_fails_on_a_deliberately_incompatible_change_to_a_copy(schema_copy, capsys):
    sent = schema_copy / "json" / f"{SENT}.schema.json"
    edit(sent, lambda s: s["required"].append("provider_message_id"))  # an optional field made required
    edit(sent, lambda s: s["properties"].pop("attempts"))  # a field removed
    assert evolution.main(["--baseline", str(schema_copy / "baseline"), "--tree", str(schema_copy / "json")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"incompatible: {SENT}: attempts: field removed (or renamed)",
        f"incompatible: {SENT}: provider_message_id: optional field made required"]


def test_the_check_passes_a_compatible_change_to_a_copy(schema_copy, capsys):
    sent = schema_copy / "json" / f"{SENT}.schema.json"
    edit(sent, lambda s: s["properties"].update(cost_micros={"anyOf": [{"type": "integer"}, {"type": "null"}],
                                                              "default": None}))  # a new optional field
    edit(sent, lambda s: s["properties"]["email"].update(description="the learner's address"))
    assert evolution.main(["--baseline", str(schema_copy / "baseline"), "--tree", str(schema_copy / "json")]) == 0
    assert capsys.readouterr().out.startswith("compatible: ")


def test_a_type_without_a_version_is_refused():
    tree = load(BASELINE_DIR)
    with pytest.raises(ValueError, match="no .vN version"):
        check({"org.manireports.offload.unversioned": {}}, tree, upcasters={})
