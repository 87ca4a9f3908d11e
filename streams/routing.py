"""The routing rule of DESIGN.md as a pure function: where a job goes and, in words, why."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import CompanySettingsChanged, JobType, Route


@dataclass(frozen=True, slots=True)
class RouteDecision:
    route: Route
    reason: str
    provider: str  # email: smtp|ses|sendgrid|mailgun; certificate: local|s3|r2


def decide_route(
    *,
    job_type: JobType,
    company_id: int,
    recipient_count: int,
    company: CompanySettingsChanged | None,
    offload_enabled: bool,
) -> RouteDecision:
    """Cloud only if offload is on globally and for the company, for this job type, at or above the threshold.

    A company with no settings row is local. The reason names the first condition that kept the job local,
    or all the conditions met for the cloud, so anyone can see why a job went where it went.
    """
    local = "smtp" if job_type == "email" else "local"
    if not offload_enabled:
        return RouteDecision("local", "offload is disabled globally", local)
    if company is None:
        return RouteDecision("local", f"company {company_id} has no cloud settings", local)
    if not company.cloud_enabled:
        return RouteDecision("local", f"cloud is disabled for company {company_id}", local)
    uses_cloud = company.use_cloud_for_emails if job_type == "email" else company.use_cloud_for_certificates
    if not uses_cloud:
        return RouteDecision("local", f"company {company_id} does not use the cloud for {job_type} jobs", local)
    if recipient_count < company.user_threshold:
        return RouteDecision(
            "local",
            f"{recipient_count} recipients is below company {company_id}'s threshold of {company.user_threshold}",
            local,
        )
    provider = company.email_provider if job_type == "email" else company.storage_provider
    return RouteDecision(
        "cloud",
        f"cloud enabled for company {company_id} {job_type} jobs and {recipient_count} recipients "
        f"is at or above the threshold of {company.user_threshold}",
        provider,
    )
