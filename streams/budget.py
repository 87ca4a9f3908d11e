"""A company's monthly cloud budget: would this job take it past, and what then.

Spend is estimated when a cloud job is accepted (recipients × the provider's price, ``streams.cost``) and kept
per job in the worker's ``company-spend`` table under ``company:YYYY-MM:job_id``; a company's spend this month
is the sum of its keys. Estimating at acceptance (not at completion) means two large jobs accepted a minute
apart cannot both slip under the budget. A job that falls back to SMTP keeps its estimate: the budget errs
on the side of spending less.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from config.settings import Settings
from schemas.events import CompanySettingsChanged
from streams.cost import cost_of


def month_of(when: datetime) -> str:
    return f"{when:%Y-%m}"


def spend_key(company_id: int, month: str, job_id: str) -> str:
    return f"{company_id}:{month}:{job_id}"


def spent(entries: Iterable[tuple[str, float]], company_id: int, month: str) -> float:
    prefix = f"{company_id}:{month}:"
    return sum(float(value) for key, value in entries if key.startswith(prefix))


@dataclass(frozen=True)
class BudgetCheck:
    estimated_cost: float
    spent: float
    over: bool
    reason: str


def check_budget(settings: Settings, company: CompanySettingsChanged | None, *, provider: str, recipients: int,
                 spent_this_month: float) -> BudgetCheck:
    """Whether this job fits the company's monthly budget (always, when it has none)."""
    estimate = round(cost_of(settings, {provider: recipients}), 4)
    if company is None or company.monthly_budget is None:
        return BudgetCheck(estimate, spent_this_month, False, "")
    budget = company.monthly_budget
    over = spent_this_month + estimate > budget
    reason = (f"company {company.company_id} monthly budget {budget:.2f} {settings.currency}: "
              f"spent {spent_this_month:.2f}, this job ~{estimate:.2f} on {provider}")
    return BudgetCheck(estimate, spent_this_month, over, reason)
