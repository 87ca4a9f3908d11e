"""The routing rule, every branch of it, including a company with no settings and the threshold boundary."""

from __future__ import annotations

import pytest

from schemas.events import CompanySettingsChanged
from streams.routing import decide_route


def company(**overrides) -> CompanySettingsChanged:
    values = dict(company_id=7, cloud_enabled=True, use_cloud_for_emails=True, use_cloud_for_certificates=True,
                  user_threshold=100, email_provider="sendgrid", storage_provider="r2")
    values.update(overrides)
    return CompanySettingsChanged(**values)


def route(job_type="email", count=100, settings=None, offload_enabled=True, missing=False):
    return decide_route(job_type=job_type, company_id=7, recipient_count=count,
                        company=None if missing else (settings or company()), offload_enabled=offload_enabled)


@pytest.mark.parametrize("job_type, provider", [("email", "sendgrid"), ("certificate", "r2")])
def test_cloud_when_every_condition_holds(job_type, provider):
    decision = route(job_type=job_type)
    assert (decision.route, decision.provider) == ("cloud", provider)
    assert "at or above the threshold of 100" in decision.reason


@pytest.mark.parametrize("job_type, local", [("email", "smtp"), ("certificate", "local")])
def test_global_switch_off_keeps_everything_local(job_type, local):
    decision = route(job_type=job_type, offload_enabled=False)
    assert (decision.route, decision.provider, decision.reason) == ("local", local, "offload is disabled globally")


def test_company_without_settings_is_local():
    decision = route(missing=True)
    assert decision.route == "local" and decision.reason == "company 7 has no cloud settings"


def test_company_with_cloud_disabled_is_local():
    decision = route(settings=company(cloud_enabled=False))
    assert decision.route == "local" and "cloud is disabled for company 7" in decision.reason


@pytest.mark.parametrize(
    "job_type, overrides",
    [("email", {"use_cloud_for_emails": False}), ("certificate", {"use_cloud_for_certificates": False})],
)
def test_job_type_not_offloaded_is_local(job_type, overrides):
    decision = route(job_type=job_type, settings=company(**overrides))
    assert decision.route == "local" and f"does not use the cloud for {job_type} jobs" in decision.reason


def test_the_other_job_types_switch_does_not_matter():
    assert route(job_type="email", settings=company(use_cloud_for_certificates=False)).route == "cloud"
    assert route(job_type="certificate", settings=company(use_cloud_for_emails=False)).route == "cloud"


@pytest.mark.parametrize("count, expected", [(99, "local"), (100, "cloud"), (101, "cloud")])
def test_threshold_boundary_is_inclusive(count, expected):
    decision = route(count=count)
    assert decision.route == expected
    if expected == "local":
        assert "99 recipients is below company 7's threshold of 100" == decision.reason


def test_zero_threshold_sends_every_job_to_the_cloud():
    assert route(count=1, settings=company(user_threshold=0)).route == "cloud"
