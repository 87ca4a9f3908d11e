"""email_templates and email_template_versions: companies' own email templates, every version kept; and
which template each job renders (jobs.template_source, jobs.template_version).

``email_templates`` holds one row per company and template id (latest version, retired or not), following
the same rules as the worker's table (streams.templates): a later version replaces the head, a retirement of
the head retires it, and applying an event twice changes nothing. Times come from the events, so a replay
builds the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncCursor
from psycopg.types.json import Jsonb

from projections.base import Applied
from schemas.events import JobAccepted, TemplatePublished, TemplateRetired

DDL = """
CREATE TABLE IF NOT EXISTS email_template_versions (
    company_id   int NOT NULL,
    template_id  text NOT NULL,
    version      int NOT NULL,
    subject      text NOT NULL,
    html         text NOT NULL,
    text         text NOT NULL,
    variables    jsonb NOT NULL,
    sha256       text NOT NULL,
    description  text,
    published_by text,
    published_at timestamptz NOT NULL,
    PRIMARY KEY (company_id, template_id, version)
);
CREATE TABLE IF NOT EXISTS email_templates (
    company_id     int NOT NULL,
    template_id    text NOT NULL,
    latest_version int NOT NULL,
    retired        boolean NOT NULL,
    retired_by     text,
    retire_reason  text,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (company_id, template_id)
);
-- Which template each job renders (JobAccepted): applied after projections.jobs, which creates the row.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS template_source text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS template_version int;
"""


async def apply(cur: AsyncCursor, events: Sequence[Applied]) -> None:
    for _, event in events:
        if isinstance(event, TemplatePublished):
            await _published(cur, event)
        elif isinstance(event, JobAccepted) and event.template_source is not None:
            await cur.execute("UPDATE jobs SET template_source = %s, template_version = %s WHERE job_id = %s",
                              (event.template_source, event.template_version, event.job_id))
        elif isinstance(event, TemplateRetired):
            await cur.execute(
                """UPDATE email_templates SET retired = true, retired_by = %s, retire_reason = %s, updated_at = %s
                   WHERE company_id = %s AND template_id = %s AND latest_version <= %s AND NOT retired""",
                (event.retired_by, event.reason, event.retired_at, event.company_id, event.template_id,
                 event.version))


async def _published(cur: AsyncCursor, e: TemplatePublished) -> None:
    await cur.execute(
        """INSERT INTO email_template_versions (company_id, template_id, version, subject, html, text, variables,
               sha256, description, published_by, published_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (company_id, template_id, version) DO NOTHING""",
        (e.company_id, e.template_id, e.version, e.subject_template, e.html, e.text, Jsonb(e.variables), e.sha256,
         e.description, e.published_by, e.published_at))
    await cur.execute(
        """INSERT INTO email_templates AS t (company_id, template_id, latest_version, retired, updated_at)
           VALUES (%s, %s, %s, false, %s)
           ON CONFLICT (company_id, template_id) DO UPDATE SET
             latest_version = EXCLUDED.latest_version, retired = false, retired_by = NULL, retire_reason = NULL,
             updated_at = EXCLUDED.updated_at
           WHERE t.latest_version < EXCLUDED.latest_version""",
        (e.company_id, e.template_id, e.version, e.published_at))
