"""company_cloud_settings: the latest cloud settings of each company (the original design's table)."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncCursor

from projections.base import Applied
from schemas.events import CompanySettingsChanged

DDL = """
CREATE TABLE IF NOT EXISTS company_cloud_settings (
    company_id                 int PRIMARY KEY,
    cloud_enabled              boolean NOT NULL,
    use_cloud_for_emails       boolean NOT NULL,
    use_cloud_for_certificates boolean NOT NULL,
    user_threshold             int NOT NULL,
    email_provider             text NOT NULL,
    storage_provider           text NOT NULL,
    changed_by                 text,
    changed_at                 timestamptz NOT NULL
);
ALTER TABLE company_cloud_settings ADD COLUMN IF NOT EXISTS monthly_budget double precision;
ALTER TABLE company_cloud_settings ADD COLUMN IF NOT EXISTS over_budget text NOT NULL DEFAULT 'local';
"""


async def apply(cur: AsyncCursor, events: Sequence[Applied]) -> None:
    rows = [
        (e.company_id, e.cloud_enabled, e.use_cloud_for_emails, e.use_cloud_for_certificates, e.user_threshold,
         e.email_provider, e.storage_provider, e.changed_by, e.changed_at, e.monthly_budget, e.over_budget)
        for _, e in events
        if isinstance(e, CompanySettingsChanged)
    ]
    if rows:
        await cur.executemany(
            """INSERT INTO company_cloud_settings (company_id, cloud_enabled, use_cloud_for_emails,
                   use_cloud_for_certificates, user_threshold, email_provider, storage_provider, changed_by,
                   changed_at, monthly_budget, over_budget)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (company_id) DO UPDATE SET
                 cloud_enabled = EXCLUDED.cloud_enabled,
                 use_cloud_for_emails = EXCLUDED.use_cloud_for_emails,
                 use_cloud_for_certificates = EXCLUDED.use_cloud_for_certificates,
                 user_threshold = EXCLUDED.user_threshold,
                 email_provider = EXCLUDED.email_provider,
                 storage_provider = EXCLUDED.storage_provider,
                 changed_by = EXCLUDED.changed_by,
                 changed_at = EXCLUDED.changed_at,
                 monthly_budget = EXCLUDED.monthly_budget,
                 over_budget = EXCLUDED.over_budget""",
            rows,
        )
