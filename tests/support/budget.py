"""A stack whose company 7 sends email through a local SendGrid server with a monthly budget it waits for when a
job would pass it: the budget-wait tests and the chunked-job tests start from it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from config.settings import Settings
from devtools.devmail import DevMailSink
from devtools.processes import ServiceProcess
from devtools.provider_servers import SendGridServer
from offload.client import change_company_settings
from schemas.events import CompanySettingsChanged

COMPANY = 7
# Cloud for every email job of company 7, through SendGrid; a job over the budget waits for it.
WAITS_ON_SENDGRID = dict(cloud_enabled=True, use_cloud_for_emails=True, user_threshold=1, email_provider="sendgrid",
                         over_budget="wait")


@dataclass(frozen=True)
class BudgetStack:
    settings: Settings
    sendgrid: SendGridServer
    worker: ServiceProcess

    def set_budget(self, monthly_budget: float) -> CompanySettingsChanged:
        """Company 7's monthly budget, in USD (SendGrid's default price: $0.90 per 1,000 messages)."""
        return asyncio.run(change_company_settings(self.settings, COMPANY, monthly_budget=monthly_budget,
                                                   **WAITS_ON_SENDGRID))


@contextmanager
def sendgrid_budget_stack(settings_factory: Callable[..., Settings], topics_for: Callable[[Settings], object],
                          processes: Callable[..., ServiceProcess], mail_sink: DevMailSink, *, api_key: str,
                          monthly_budget: float) -> Iterator[BudgetStack]:
    """Topics, a worker that has company 7's settings and a projector; budget waits rechecked every 0.5 s."""
    with SendGridServer(api_key=api_key) as server:
        settings = settings_factory(smtp_port=mail_sink.port, sendgrid_api_key=api_key,
                                    sendgrid_base_url=server.base_url, budget_recheck_seconds=0.5)
        topics_for(settings)
        asyncio.run(change_company_settings(settings, COMPANY, monthly_budget=monthly_budget, **WAITS_ON_SENDGRID))
        worker = processes("worker", settings)
        worker.wait_for_log(f"company {COMPANY} settings", timeout=30)
        processes("projector", settings)
        yield BudgetStack(settings, server, worker)
