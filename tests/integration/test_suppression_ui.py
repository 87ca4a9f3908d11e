"""The company page's suppression actions, against the real API app and broker: an admin adds and removes a
learner with a reason, each change published as the API's own routes publish it; a bad form publishes
nothing and says so."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from eventlog.topics import create_topics
from schemas.events import SuppressionAdded, SuppressionRemoved
from tests.support.api import api_keys
from tests.support.observe import events

pytestmark = pytest.mark.integration

OPS, OPS_SECRET = "ops", "ops-admin-secret-0123456789abcdef"


async def test_an_admin_adds_and_removes_a_suppression_on_the_company_page_and_a_bad_form_publishes_nothing(
        settings_factory, serve):
    settings = settings_factory(api_keys=api_keys(**{OPS: (OPS_SECRET, None)}))
    await create_topics(settings)
    server = await serve(settings)
    base = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{base}/ui/login", data={"key_id": OPS, "secret": OPS_SECRET, "next": "/ui/jobs"},
                             allow_redirects=False) as signed_in:
            assert signed_in.status == 303
        async with http.get(f"{base}/ui/companies/7") as page:
            assert page.status == 200, await page.text()
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
        assert csrf is not None

        async def post(path: str, form: dict[str, str]) -> str:
            async with http.post(f"{base}/ui/companies/7/{path}", data={"csrf_token": csrf.group(1), **form},
                                 headers={"Origin": base}, allow_redirects=False) as reply:
                assert reply.status == 303, await reply.text()
                return reply.headers["Location"]

        assert await post("suppressions", {"userid": " 12 ", "scope": "weekly_digest",
                                           "reason": " asked at the desk "}) == "/ui/companies/7?notice=suppression_added"
        assert await post("suppressions", {"userid": "13", "scope": "", "reason": "by phone"}) == \
            "/ui/companies/7?notice=suppression_added"
        for bad in ({"userid": "x", "reason": "r"}, {"userid": "0", "reason": "r"}, {"userid": "²", "reason": "r"},
                    {"userid": "14", "reason": ""}):
            assert await post("suppressions", bad) == "/ui/companies/7?notice=suppression_invalid"
            assert await post("suppressions/remove", bad) == "/ui/companies/7?notice=suppression_invalid"
        assert await post("suppressions/remove", {"userid": "12", "scope": "weekly_digest", "reason": "fixed"}) == \
            "/ui/companies/7?notice=suppression_removed"
        async with http.post(f"{base}/ui/companies/7/suppressions", data={"csrf_token": "0" * 64, "userid": "15",
                                                                          "reason": "r"},
                             headers={"Origin": base}, allow_redirects=False) as forged:
            assert forged.status in (400, 403)

    logged = await asyncio.to_thread(events, settings, "suppressions")
    changes = [(type(e).__name__, e.company_id, e.userid, e.scope, e.reason, e.changed_by)
               for e in logged if isinstance(e, SuppressionAdded | SuppressionRemoved)]
    assert changes == [
        ("SuppressionAdded", 7, 12, "weekly_digest", "asked at the desk", f"ui:{OPS}"),
        ("SuppressionAdded", 7, 13, "*", "by phone", f"ui:{OPS}"),
        ("SuppressionRemoved", 7, 12, "weekly_digest", "fixed", f"ui:{OPS}"),
    ]
    added = [e for e in logged if isinstance(e, SuppressionAdded)]
    assert {e.source for e in added} == {"manual"}
