"""One account's rate shared by two real worker processes: together they never send faster than the account
allows, however the job's batches fall on their partitions. Each worker reaches the same local SendGrid
account through its own port, so the server can tell their calls apart."""

from __future__ import annotations

import asyncio

import pytest

from devtools.provider_servers import Call, SendGridServer
from offload.client import change_company_settings, submit_job
from tests.support.observe import wait_for_job

pytestmark = pytest.mark.integration
KEY = "SG.shared-account-key"
RATE = 40.0  # the account's messages per second
TOLERANCE = 0.75  # seconds' worth of the rate: arrival jitter of one process's calls, and each worker's first call


def assert_account_rate_kept(calls: list[Call], rate: float, tolerance: float) -> None:
    """Between the arrival of any two accepted calls, the calls before the later one carried no more than the
    account's rate over that time (plus ``tolerance`` seconds' worth). Two workers each sending at the full
    rate break this within two seconds; two workers sharing it keep it over the whole job."""
    accepted = sorted((c for c in calls if c.status < 300), key=lambda c: c.at)
    for i, first in enumerate(accepted):
        running = 0
        for j in range(i + 1, len(accepted)):
            running += accepted[j - 1].recipients
            allowed = rate * (accepted[j].at - first.at + tolerance)
            assert running <= allowed, (f"{running} recipients in {accepted[j].at - first.at:.3f} s "
                                        f"with the account at {rate}/s")


def test_two_workers_sharing_one_account_never_exceed_its_rate_together(
    settings_factory, topics_for, processes, job_factory, mail_sink
):
    with SendGridServer(api_key=KEY) as server:
        second_port = server.add_port()
        settings = settings_factory(smtp_port=mail_sink.port, sendgrid_api_key=KEY,
                                    sendgrid_base_url=server.base_url, provider_rate_limits={"sendgrid": RATE},
                                    job_batch_size=40)
        topics_for(settings)
        asyncio.run(change_company_settings(settings, 7, cloud_enabled=True, use_cloud_for_emails=True,
                                            user_threshold=1, email_provider="sendgrid"))
        first = processes("worker", settings)
        first.wait_for_log("company 7 settings", timeout=30)
        # The same worker group, reaching the same account through the server's second port.
        processes("worker", settings.model_copy(update={"sendgrid_base_url": second_port}))
        processes("projector", settings)
        asyncio.run(submit_job(settings, job_factory("shared", 480)))
        job = wait_for_job(settings, "shared", timeout=120)

        assert (job["route"], job["provider"], job["succeeded"], job["failed"], job["fell_back"]) == (
            "cloud", "sendgrid", 480, 0, False)
        assert len(server.by_recipient()) == 480 and len(server.delivered) == 480
        ports = {c.port for c in server.calls}
        assert len(ports) == 2, f"only one worker sent: {ports}"  # both workers did send for the account
        assert "this worker's share" in job["pacing"]
        assert all(c.status < 300 for c in server.calls)
        assert_account_rate_kept(server.calls, RATE, TOLERANCE)
