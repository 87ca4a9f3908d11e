"""Reads of the companies' template read models (projections/templates.py) for the API and the admin UI."""

from __future__ import annotations

from typing import Any

from api.store import ReadStore
from content.email import EmailTemplate

_VERSION_COLUMNS = """v.company_id, v.template_id, v.version, v.subject, v.html, v.text, v.variables, v.sha256,
    v.description, v.published_by, v.published_at"""


async def templates_of(store: ReadStore, company_id: int) -> list[dict[str, Any]]:
    """Every template id the company has published, with its latest version's summary."""
    return await store._rows(  # noqa: SLF001 - the read store's pooled query helper
        f"""SELECT {_VERSION_COLUMNS}, t.latest_version, t.retired, t.retired_by, t.retire_reason, t.updated_at
            FROM email_templates t JOIN email_template_versions v
              ON v.company_id = t.company_id AND v.template_id = t.template_id AND v.version = t.latest_version
            WHERE t.company_id = %s ORDER BY t.template_id""", (company_id,))


async def template_head(store: ReadStore, company_id: int, template_id: str) -> dict[str, Any] | None:
    rows = await store._rows(  # noqa: SLF001
        """SELECT company_id, template_id, latest_version, retired, retired_by, retire_reason, updated_at
           FROM email_templates WHERE company_id = %s AND template_id = %s""", (company_id, template_id))
    return rows[0] if rows else None


async def template_version(store: ReadStore, company_id: int, template_id: str,
                           version: int) -> dict[str, Any] | None:
    rows = await store._rows(  # noqa: SLF001
        f"""SELECT {_VERSION_COLUMNS} FROM email_template_versions v
            WHERE v.company_id = %s AND v.template_id = %s AND v.version = %s""", (company_id, template_id, version))
    return rows[0] if rows else None


async def template_versions(store: ReadStore, company_id: int, template_id: str) -> list[dict[str, Any]]:
    """Every version, newest first, without their sources (a list, not a download)."""
    return await store._rows(  # noqa: SLF001
        """SELECT version, sha256, variables, description, published_by, published_at
           FROM email_template_versions WHERE company_id = %s AND template_id = %s ORDER BY version DESC""",
        (company_id, template_id))


async def company_template(store: ReadStore, company_id: int, template_id: str) -> EmailTemplate | None:
    """The company's own template a job naming ``template_id`` would use now (None: the built-in one)."""
    rows = await store._rows(  # noqa: SLF001 - one round trip: this runs on every job submission
        """SELECT v.version, v.subject, v.html, v.text FROM email_templates t JOIN email_template_versions v
             ON v.company_id = t.company_id AND v.template_id = t.template_id AND v.version = t.latest_version
           WHERE t.company_id = %s AND t.template_id = %s AND NOT t.retired""", (company_id, template_id))
    if not rows:
        return None
    row = rows[0]
    return EmailTemplate(id=template_id, subject=row["subject"], text=row["text"], html=row["html"],
                         source="company", version=row["version"])


def version_json(row: dict[str, Any], *, with_sources: bool = True) -> dict[str, Any]:
    out = {"version": row["version"], "sha256": row["sha256"], "variables": row["variables"],
           "description": row["description"], "published_by": row["published_by"],
           "published_at": row["published_at"]}
    if with_sources:
        out.update(subject=row["subject"], html=row["html"], text=row["text"])
    return out
