"""Which jobs' table state the expiry timer deletes (the timer: tests/integration/test_job_expiry.py)."""

from datetime import UTC, datetime

from streams.expiry import expired_jobs, expired_spend_keys, job_of


def test_table_keys_belong_to_the_job_before_the_first_colon():
    assert job_of("job-2026.11_a") == "job-2026.11_a"
    assert job_of("job-2026.11_a:3:17") == "job-2026.11_a"


def test_a_job_expires_once_the_retention_has_passed_since_it_finished():
    finished = [("old", 1000.0), ("edge", 1900.0), ("new", 1900.5)]
    assert expired_jobs(finished, now=2000.0, retention_seconds=100.0) == {"old", "edge"}
    assert expired_jobs(finished, now=2000.0, retention_seconds=5000.0) == set()


def test_spend_of_months_before_the_previous_one_expires_across_a_year_end():
    keys = ["7:2026-10:a", "7:2026-11:b", "8:2026-12:c", "7:2025-12:d", "12:2026-09:e"]
    dec_2026 = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC).timestamp()
    assert expired_spend_keys(keys, dec_2026) == ["7:2026-10:a", "7:2025-12:d", "12:2026-09:e"]
    jan_2027 = datetime(2027, 1, 31, 23, 59, tzinfo=UTC).timestamp()
    assert expired_spend_keys(keys, jan_2027) == ["7:2026-10:a", "7:2026-11:b", "7:2025-12:d", "12:2026-09:e"]
    # The current and the previous month are kept (the budget reads the current month only).
    assert expired_spend_keys(["7:2026-12:x", "7:2026-11:y"], datetime(2026, 12, 31, tzinfo=UTC).timestamp()) == []
