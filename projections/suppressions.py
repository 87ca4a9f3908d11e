"""suppressions: every company's current suppression list, one row per learner and scope.

Built from the ``suppressions`` topic alone (RecipientUnsubscribed, SuppressionAdded, SuppressionRemoved), so
``offload replay`` rebuilds it; the history of each entry (who added or removed it, and why) is in audit_log,
which keeps these events like every other non-recipient event.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncCursor

from projections.base import Applied
from schemas.events.suppression import RecipientUnsubscribed, SuppressionAdded, SuppressionRemoved

DDL = """
CREATE TABLE IF NOT EXISTS suppressions (
    company_id int    NOT NULL,
    userid     bigint NOT NULL,
    scope      text   NOT NULL,   -- '*' every message, 'bulk' every bulk message, or a list id
    source     text   NOT NULL,   -- unsubscribe | bounce | complaint | manual
    reason     text   NOT NULL,
    email      text,              -- bounces: the address that bounced
    job_id     text,
    changed_by text,
    since      timestamptz NOT NULL,
    PRIMARY KEY (company_id, userid, scope)
);
CREATE INDEX IF NOT EXISTS suppressions_company_since ON suppressions (company_id, since DESC);
"""

_UPSERT = """
INSERT INTO suppressions (company_id, userid, scope, source, reason, email, job_id, changed_by, since)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (company_id, userid, scope) DO UPDATE SET
    source = EXCLUDED.source, reason = EXCLUDED.reason, email = EXCLUDED.email, job_id = EXCLUDED.job_id,
    changed_by = EXCLUDED.changed_by, since = EXCLUDED.since
"""


async def apply(cur: AsyncCursor, events: Sequence[Applied]) -> None:
    # Few and in order (one partition): applied one by one, so an add and a removal in one poll keep their order.
    for _, event in events:
        if isinstance(event, RecipientUnsubscribed):
            await cur.execute(_UPSERT, (event.company_id, event.userid, event.list_id, "unsubscribe",
                                        f"unsubscribed from {event.list_id} ({event.method})", None, None, None,
                                        event.unsubscribed_at))
        elif isinstance(event, SuppressionAdded):
            await cur.execute(_UPSERT, (event.company_id, event.userid, event.scope, event.source, event.reason,
                                        event.email, event.job_id, event.changed_by, event.added_at))
        elif isinstance(event, SuppressionRemoved):
            await cur.execute("DELETE FROM suppressions WHERE company_id = %s AND userid = %s AND scope = %s",
                              (event.company_id, event.userid, event.scope))
