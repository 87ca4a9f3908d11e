"""Issue 11 finding 12: the worker's note of who holds a job id, and the room a company has for its ids."""

from __future__ import annotations

import pytest

from schemas.events import JobRequested, scoped_id_room, scoped_job_id
from streams.state import KnownJob
from tests.support.jobs import job_payload


def test_a_known_job_noted_before_companies_were_kept_reads_as_held_by_nobody_in_particular():
    legacy = KnownJob.from_stored("accepted")
    assert legacy == KnownJob("accepted", None)
    assert not legacy.held_by_another(8)  # the old behaviour: a repeated request, ignored


def test_a_known_job_is_held_by_another_company_only_when_both_companies_are_known():
    note = KnownJob.from_stored(KnownJob("waiting", 7).to_dict())
    assert note == KnownJob("waiting", 7)
    assert note.held_by_another(8) and not note.held_by_another(7) and not note.held_by_another(None)


def test_a_misspelt_known_job_fails_loudly():
    with pytest.raises(ValueError, match="unknown"):
        KnownJob.from_stored({"outcome": "accepted", "company": 7})
    with pytest.raises(ValueError, match="unknown outcome"):
        KnownJob.from_stored("acepted")


@pytest.mark.parametrize("company_id", [0, 7, 12345, 10**9])
def test_an_id_of_the_longest_length_a_company_may_choose_still_scopes_to_a_valid_job_id(company_id):
    longest = "j" * scoped_id_room(company_id)
    payload = job_payload(scoped_job_id(longest, company_id), 1, company_id=company_id)
    assert JobRequested.model_validate(payload).job_id.endswith(f"..c{company_id}")
    with pytest.raises(ValueError, match="128"):
        JobRequested.model_validate({**payload, "job_id": scoped_job_id(longest + "j", company_id)})
