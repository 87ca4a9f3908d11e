"""Schema evolution: the tree against the committed baseline, and the checker's rules one by one."""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
from pydantic import Field

from schemas import upcasters
from schemas.envelope import UndecodableRecord, decode, encode
from schemas.events import BY_CE_TYPE, Event, RecipientSent
from schemas.evolution import BASELINE_DIR, TREE_DIR, check, compare, load
from schemas.generate import schema_for

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
    tree = load(BASELINE_DIR)
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


def test_a_version_bump_with_an_upcaster_passes_and_the_decoder_reads_the_old_records(monkeypatch):
    """RecipientSent v1 -> v2 renames ``attempts`` to ``tries``; v1 records in the log are read as v2."""

    class RecipientSentV2(RecipientSent):
        ce_type: ClassVar[str] = "org.manireports.offload.recipient.sent.v2"
        attempts: int = Field(default=0, exclude=True)
        tries: int

    v2_schema = schema_for(RecipientSentV2)
    tree = {k: v for k, v in load(BASELINE_DIR).items() if k != SENT} | {RecipientSentV2.ce_type: v2_schema}
    assert check(load(BASELINE_DIR), tree, upcasters={})  # the bump alone is not enough
    assert check(load(BASELINE_DIR), tree, upcasters={SENT: RecipientSentV2.ce_type}) == []

    monkeypatch.setattr(upcasters, "UPCASTERS", {})
    monkeypatch.setitem(BY_CE_TYPE, RecipientSentV2.ce_type, RecipientSentV2)

    @upcasters.upcaster(SENT, RecipientSentV2.ce_type)
    def _sent_v1_to_v2(data: dict) -> dict:
        data = dict(data)
        data["tries"] = data.pop("attempts")
        return data

    old = encode(RecipientSent(job_id="j1", batch_no=0, userid=5, email="a@example.org", provider="smtp",
                               message_id="<m@x>", attempts=3))
    event = decode(old.value, old.headers)
    assert isinstance(event, RecipientSentV2) and event.tries == 3 and event.userid == 5
    assert upcasters.upcaster_targets() == {SENT: RecipientSentV2.ce_type}

    broken = encode(RecipientSent(job_id="j1", batch_no=0, userid=5, email="a@example.org", provider="smtp",
                                  message_id="<m@x>", attempts=3))
    with pytest.raises(UndecodableRecord, match="cannot upcast"):
        decode(b'{"job_id": "j1"}', broken.headers)  # no attempts to rename: a clear error, not a crash


def test_a_type_without_a_version_is_refused():
    tree = load(BASELINE_DIR)
    with pytest.raises(ValueError, match="no .vN version"):
        check({"org.manireports.offload.unversioned": {}}, tree,
              upcasters={"org.manireports.offload.unversioned": SENT})
