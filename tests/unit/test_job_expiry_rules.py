"""Which jobs' table state the expiry timer deletes (the timer: tests/integration/test_job_expiry.py)."""

from streams.expiry import expired_jobs, job_of


def test_table_keys_belong_to_the_job_before_the_first_colon():
    assert job_of("job-2026.11_a") == "job-2026.11_a"
    assert job_of("job-2026.11_a:3:17") == "job-2026.11_a"


def test_a_job_expires_once_the_retention_has_passed_since_it_finished():
    finished = [("old", 1000.0), ("edge", 1900.0), ("new", 1900.5)]
    assert expired_jobs(finished, now=2000.0, retention_seconds=100.0) == {"old", "edge"}
    assert expired_jobs(finished, now=2000.0, retention_seconds=5000.0) == set()
