"""Provider settings: region URLs, prices, pacing checks, secrets; and the guides name only variables we read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices, ValidationError

from config.settings import Settings
from streams.cost import cost_of, job_cost
from streams.state import JobProgress
from tests.support.production import PRODUCTION_SECRETS

REPO = Path(__file__).resolve().parents[2]
GUIDES = ["docs/setup-aws.md", "docs/setup-cloudflare.md", "docs/troubleshooting.md", "README.md"]


def known_variables() -> set[str]:
    names = {f"OFFLOAD_{name.upper()}" for name in Settings.model_fields}
    return names


def read_by_other_code() -> set[str]:
    """OFFLOAD_* names the project's own scripts read from the environment outside Settings (e.g. the tests)."""
    names: set[str] = set()
    for path in REPO.rglob("*.py"):
        if ".venv" not in path.parts and path.name != Path(__file__).name:
            names |= set(re.findall(r"environ(?:\.get)?\(?\[?\s*[\"'](OFFLOAD_[A-Z0-9_]+)", path.read_text()))
    # and the shell scripts, e.g. scripts/test.sh and .ci/image-smoke
    for path in [*(REPO / "scripts").glob("*.sh"), *(p for p in (REPO / ".ci").iterdir() if p.suffix == "")]:
        names |= set(re.findall(r"\$\{(OFFLOAD_[A-Z0-9_]+)", path.read_text()))
    return names


@pytest.mark.parametrize("path", GUIDES)
def test_every_variable_a_guide_names_is_one_the_settings_read(path: str) -> None:
    text = (REPO / path).read_text()
    named = set(re.findall(r"OFFLOAD_[A-Z0-9_]*[A-Z0-9]", text))
    # The guides name only settings; the README may also name what the test harness reads itself.
    known = known_variables() | (read_by_other_code() if path == "README.md" else set())
    unknown = sorted(named - known)
    assert not unknown, f"{path} names variables the code does not read: {unknown}"
    if path != "README.md":
        assert named, f"{path} names no variable at all"


def readme_table_variables() -> set[str]:
    """The variables the README's configuration table names, ``_PORT`` after ``OFFLOAD_SMTP_HOST`` as
    ``OFFLOAD_SMTP_PORT``."""
    names: set[str] = set()
    for line in (REPO / "README.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        prefix = ""
        for name in re.findall(r"`([A-Z_][A-Z0-9_]*)`", line.split("|")[1]):
            if name.startswith("_"):
                names.add(prefix + name)
            else:
                names.add(name)
                prefix = name.rsplit("_", 1)[0]
    return names


def test_the_readme_table_names_every_variable_the_settings_read() -> None:
    """The reverse of the guides' test: an operator finds every setting in one table."""
    named = readme_table_variables()
    missing = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [f"OFFLOAD_{name.upper()}"]
        if not named & {str(choice) for choice in choices}:
            missing.append(f"OFFLOAD_{name.upper()}")
    assert not missing, f"README's configuration table lacks: {missing}"


def test_the_guides_name_the_provider_variables() -> None:
    text = "".join((REPO / p).read_text() for p in GUIDES[:2])
    for name in ("OFFLOAD_SENDGRID_API_KEY", "OFFLOAD_MAILGUN_API_KEY", "OFFLOAD_MAILGUN_DOMAIN",
                 "OFFLOAD_MAILGUN_REGION", "OFFLOAD_WEBHOOK_SNS_TOPIC_ARNS", "OFFLOAD_R2_ENDPOINT_URL",
                 "OFFLOAD_WEBHOOK_SENDGRID_PUBLIC_KEY", "OFFLOAD_WEBHOOK_MAILGUN_SIGNING_KEY"):
        assert name in text


def test_the_aws_guide_grants_what_the_code_calls() -> None:
    text = (REPO / "docs/setup-aws.md").read_text()
    for action in ("ses:SendRawEmail", "ses:GetAccount", "ses:GetSendQuota", "s3:PutObject", "s3:GetObject"):
        assert f'"{action}"' in text
    code = (REPO / "adapters/email/ses.py").read_text()
    assert "get_account" in code and "get_send_quota" in code and "send_email" in code


def test_mailgun_region_picks_the_base_url() -> None:
    assert Settings(mailgun_region="eu").mailgun_url() == "https://api.eu.mailgun.net"
    assert Settings(mailgun_region="us").mailgun_url() == "https://api.mailgun.net"
    assert Settings(mailgun_region="eu", mailgun_base_url="http://127.0.0.1:9/").mailgun_url() == "http://127.0.0.1:9"


def test_api_keys_never_show_in_a_repr_or_dump() -> None:
    settings = Settings(sendgrid_api_key="SG.very-secret", mailgun_api_key="key-very-secret")
    assert "very-secret" not in repr(settings) and "very-secret" not in str(settings.model_dump())


def test_placeholder_provider_keys_are_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="sendgrid_api_key is a placeholder"):
        Settings(**{**PRODUCTION_SECRETS, "environment": "production", "sendgrid_api_key": "changeme"})


def test_rate_limits_are_checked() -> None:
    with pytest.raises(ValidationError, match="unknown provider postmark"):
        Settings(provider_rate_limits={"postmark": 10})
    with pytest.raises(ValidationError, match="negative rate"):
        Settings(company_rate_limits={7: -1})
    assert Settings(company_rate_limits={"7": 2.5}).company_rate_limits == {7: 2.5}


def test_cost_uses_the_price_table_and_keeps_defaults_for_unlisted_providers() -> None:
    settings = Settings(prices={"sendgrid": {"per_1000": 0.35}})
    assert cost_of(settings, {"sendgrid": 2000}) == pytest.approx(0.70)
    assert cost_of(settings, {"ses": 1000, "smtp": 500}) == pytest.approx(0.10)  # ses default, smtp free
    assert cost_of(Settings(), {"r2": 1_000_000}) == pytest.approx(4.50)
    state = JobProgress(total=205)
    state.record_batch(0, 0, 2, 180, 20, {"ses": 150, "smtp": 30})
    state.record_batch(0, 1, 2, 5, 0)  # a batch that said nothing of its providers
    state.record_batch(1, 0, 1, 20, 0, {"ses": 20})
    assert job_cost(Settings(), state) == pytest.approx(0.017)  # 170 on SES over both runs; old entries count 0


def test_a_job_that_would_pass_the_monthly_budget_is_over() -> None:
    from schemas.events import CompanySettingsChanged
    from streams.budget import check_budget, spend_key, spent

    company = CompanySettingsChanged(company_id=7, monthly_budget=0.05)
    fits = check_budget(Settings(), company, provider="sendgrid", recipients=50, spent_this_month=0.0)
    assert (fits.over, fits.estimated_cost) == (False, pytest.approx(0.045))
    over = check_budget(Settings(), company, provider="sendgrid", recipients=10, spent_this_month=0.045)
    assert over.over and "monthly budget 0.05 USD: spent 0.04" in over.reason
    unlimited = CompanySettingsChanged(company_id=7)
    assert not check_budget(Settings(), unlimited, provider="ses", recipients=10**6, spent_this_month=1e9).over
    entries = [(spend_key(7, "2026-11", "a"), 0.5), (spend_key(7, "2026-10", "b"), 9.0),
               (spend_key(77, "2026-11", "c"), 9.0), (spend_key(7, "2026-11", "d"), 0.25)]
    assert spent(entries, 7, "2026-11") == pytest.approx(0.75)
