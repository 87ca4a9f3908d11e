"""The admin monitoring UI, served by the API process under /ui/: server-rendered pages and a little JS.

Reads the Postgres read models like the rest of the API; writes only by producing events (JobRetryRequested,
JobCancelled, CompanySettingsChanged), exactly as api/jobs.py and api/companies.py do.

Auth: an admin API key (``company_id`` null in ``OFFLOAD_API_KEYS``) signs in once through a form; the browser
then holds an HttpOnly, SameSite=Strict session cookie signed with HMAC-SHA256 under ``ui_session_secret``.
The signature also covers a hash of the key's secret, so rotating or removing the key ends its sessions.
Every POST needs the session's CSRF token and, when the browser sends an Origin, our own origin.
No page ever renders a secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
import psycopg
from aiohttp import web
from psycopg.rows import dict_row
from pydantic import ValidationError

from api.companies import CompanySettingsChange
from api.errors import Handler
from api.state import STATE, ApiState
from api.store import JOB_STATUSES, progress
from projections.jobs import FINISHED, JobStatus
from schemas.events import CompanySettingsChanged, JobCancelled, JobRetryRequested

log = logging.getLogger(__name__)

PREFIX = "/ui"
HERE = Path(__file__).with_name("ui")
COOKIE = "offload_ui"
JOB_TYPES = ("email", "certificate")
STATUSES = JOB_STATUSES
JOBS_PER_PAGE = 25
RECIPIENTS_PER_PAGE = 50
STREAM_INTERVAL = 0.5  # seconds between two reads of the job row for the live page
STREAM_MAX_SECONDS = 3600  # a stream ends after an hour; EventSource reconnects by itself
CANCELLED = JobCancelled.ce_type
SETTINGS_CHANGED = CompanySettingsChanged.ce_type

# Fixed notices the pages show after a POST (the query carries only the key, never text to reflect).
NOTICES = {
    "retry_requested": ("ok", "Retry requested: the failed recipients will be sent again as a new run."),
    "cancel_requested": ("ok", "Cancel requested: recipients not yet served will not be sent."),
    "job_finished": ("error", "The job has already finished; it cannot be cancelled."),
    "job_not_finished": ("error", "Only a completed job can be retried."),
    "nothing_to_retry": ("error", "The job has no failed recipients to retry."),
    "settings_saved": ("ok", "Settings saved."),
    "settings_pending": ("ok", "Settings change sent; it appears here as soon as the projector applies it."),
    "signed_out": ("ok", "You are signed out."),
}

routes = web.RouteTableDef()


# --- wiring ----------------------------------------------------------------------------------------


def exempt_from_signing(middleware: Callable[..., Awaitable[web.StreamResponse]]):
    """Wrap the API's request-signing middleware so /ui/ (session cookie) and /metrics (its own optional
    bearer token) are not asked for a Moodle request signature; every other path is unchanged."""

    @web.middleware
    async def signed_unless_ui(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path == PREFIX or path.startswith(PREFIX + "/") or path == "/metrics":
            return await handler(request)
        return await middleware(request, handler)

    return signed_unless_ui


@dataclass
class UiState:
    sessions: Sessions
    templates: jinja2.Environment
    failed_logins: dict[str, list[float]] = field(default_factory=dict)
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set on shutdown: live streams end at once


UI_STATE = web.AppKey("ui_state", UiState)


def setup(app: web.Application) -> None:
    """Register the UI's routes and state on the API application (after app[STATE] is set)."""
    settings = app[STATE].settings
    secret = settings.ui_session_secret
    if secret is None:
        if any(k.company_id is None for k in settings.api_keys.values()):
            log.warning("ui_session_secret is not set: UI sessions use a random secret and end when this "
                        "process restarts")
        key = secrets.token_bytes(32)
    else:
        key = secret.get_secret_value().encode()
    secure = settings.ui_secure_cookies if settings.ui_secure_cookies is not None \
        else settings.environment == "production"
    app[UI_STATE] = UiState(
        sessions=Sessions(key, hours=settings.ui_session_hours, secure=secure),
        templates=_templates(),
    )
    app.add_routes(routes)
    app.router.add_static(f"{PREFIX}/static", HERE / "static", append_version=False)
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    app[UI_STATE].closing.set()


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["dt"] = _format_time
    env.filters["number"] = lambda n: f"{n:,}" if isinstance(n, int) else ("-" if n is None else str(n))
    env.filters["short_type"] = _short_type
    env.globals["prefix"] = PREFIX
    return env


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
        return
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if not request.path.startswith(f"{PREFIX}/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


# --- sessions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    key_id: str
    nonce: str
    expires: int
    csrf: str


class Sessions:
    """Stateless signed sessions: ``base64(json{k, n, e}).hmac``; nothing secret inside, nothing stored."""

    def __init__(self, secret: bytes, *, hours: float, secure: bool) -> None:
        self._secret = secret
        self.seconds = int(hours * 3600)
        self.secure = secure

    def _sign(self, payload: str, key_secret: str) -> str:
        # The key's secret enters only as a hash inside the MAC: a changed or removed key ends its sessions.
        fingerprint = hashlib.sha256(key_secret.encode()).hexdigest()
        mac = hmac.new(self._secret, f"session|{payload}|{fingerprint}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def csrf_for(self, nonce: str) -> str:
        return hmac.new(self._secret, f"csrf|{nonce}".encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str, key_secret: str, now: float | None = None) -> str:
        body = {"k": key_id, "n": secrets.token_urlsafe(16), "e": int((now or time.time()) + self.seconds)}
        payload = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload, key_secret)}"

    def read(self, value: str | None, admin_secrets: dict[str, str], now: float | None = None) -> Session | None:
        if not value or len(value) > 1024 or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            key_id, nonce, expires = str(body["k"]), str(body["n"]), int(body["e"])
        except (ValueError, KeyError, TypeError):
            return None
        key_secret = admin_secrets.get(key_id)
        if key_secret is None or not hmac.compare_digest(mac, self._sign(payload, key_secret)):
            return None
        if expires < (now or time.time()):
            return None
        return Session(key_id, nonce, expires, self.csrf_for(nonce))


def _admin_secrets(state: ApiState) -> dict[str, str]:
    return {key_id: key.secret.get_secret_value() for key_id, key in state.settings.api_keys.items()
            if key.company_id is None}


def _ui(request: web.Request) -> UiState:
    return request.app[UI_STATE]


def _session(request: web.Request) -> Session | None:
    return _ui(request).sessions.read(request.cookies.get(COOKIE), _admin_secrets(request.app[STATE]))


def _require(request: web.Request) -> Session:
    session = _session(request)
    if session is None:
        target = request.path_qs if request.method == "GET" else f"{PREFIX}/jobs"
        raise web.HTTPSeeOther(f"{PREFIX}/login?{urlencode({'next': target})}")
    return session


async def _require_post(request: web.Request) -> tuple[Session, Any]:
    """A signed-in admin, a same-origin request and the right CSRF token; returns the form."""
    session = _require(request)
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="cross-origin request refused")
    form = await request.post()
    token = form.get("csrf_token")
    if not isinstance(token, str) or not hmac.compare_digest(token, session.csrf):
        raise web.HTTPForbidden(text="invalid or missing CSRF token; reload the page and try again")
    return session, form


def _render(request: web.Request, template: str, session: Session | None, status: int = 200,
            **context: Any) -> web.Response:
    notice = NOTICES.get(request.query.get("notice", ""))
    html = _ui(request).templates.get_template(template).render(
        session=session, csrf_token=session.csrf if session else "", notice=notice, path=request.path,
        **context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _safe_next(target: str | None) -> str:
    """Only a path of our own UI: never another site, never a scheme-relative //host URL."""
    if not target or not target.startswith(PREFIX + "/") or target.startswith("//") or "\\" in target:
        return f"{PREFIX}/jobs"
    parts = urlsplit(target)
    return f"{PREFIX}/jobs" if parts.scheme or parts.netloc else target


# --- sign in / out ---------------------------------------------------------------------------------

_LOGIN_WINDOW = 300.0
_LOGIN_MAX_FAILURES = 10


@routes.get(PREFIX)
@routes.get(PREFIX + "/")
async def index(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(f"{PREFIX}/jobs")


@routes.get(PREFIX + "/login")
async def login_form(request: web.Request) -> web.Response:
    if _session(request) is not None:
        raise web.HTTPSeeOther(_safe_next(request.query.get("next")))
    return _render(request, "login.html", None, next=_safe_next(request.query.get("next")), error=None)


@routes.post(PREFIX + "/login")
async def login(request: web.Request) -> web.Response:
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="cross-origin request refused")
    ui, state = _ui(request), request.app[STATE]
    peer = request.remote or "?"
    now = time.monotonic()
    recent = [t for t in ui.failed_logins.get(peer, []) if now - t < _LOGIN_WINDOW]
    form = await request.post()
    key_id, secret = str(form.get("key_id", ""))[:64], str(form.get("secret", ""))[:512]
    target = _safe_next(str(form.get("next", "")))
    if len(recent) >= _LOGIN_MAX_FAILURES:
        return _render(request, "login.html", None, status=429, next=target,
                       error="Too many failed attempts. Wait a few minutes and try again.")
    admin = _admin_secrets(state)
    expected = admin.get(key_id, "")
    # compare_digest on a dummy too, so an unknown key id costs the same as a wrong secret
    good = hmac.compare_digest(secret.encode(), (expected or secrets.token_hex(16)).encode()) and bool(expected)
    if not good:
        recent.append(now)
        ui.failed_logins[peer] = recent
        if len(ui.failed_logins) > 10_000:  # bounded memory whatever the number of peers
            for stale in [p for p, ts in ui.failed_logins.items() if now - ts[-1] > _LOGIN_WINDOW]:
                del ui.failed_logins[stale]
        log.warning("UI sign-in refused for key id %r from %s", key_id, peer)
        await asyncio.sleep(0.3)
        return _render(request, "login.html", None, status=401, next=target,
                       error="Sign-in failed: unknown key id, wrong secret, or not an admin key.")
    ui.failed_logins.pop(peer, None)
    log.info("UI sign-in by admin key %s from %s", key_id, peer)
    response = web.HTTPSeeOther(target)
    response.set_cookie(COOKIE, ui.sessions.issue(key_id, expected), max_age=ui.sessions.seconds, path=PREFIX,
                        httponly=True, samesite="Strict", secure=ui.sessions.secure)
    raise response


@routes.post(PREFIX + "/logout")
async def logout(request: web.Request) -> web.Response:
    await _require_post(request)
    response = web.HTTPSeeOther(f"{PREFIX}/login?notice=signed_out")
    response.del_cookie(COOKIE, path=PREFIX)
    raise response


# --- reading -------------------------------------------------------------------------------------


async def _rows(state: ApiState, query: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
    async with state.store.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        try:
            await cur.execute(query, params)
        except psycopg.errors.UndefinedTable:
            return []
        return await cur.fetchall()


def _job_view(row: dict[str, Any], errors: list[dict[str, Any]], cancel_requested: bool) -> dict[str, Any]:
    view = progress(row, errors)
    p = view["progress"]
    total = p["total"] or 0
    p["sent_pct"] = round(100.0 * p["sent"] / total, 2) if total else 0.0
    p["failed_pct"] = round(100.0 * p["failed"] / total, 2) if total else 0.0
    p["done"] = p["sent"] + p["failed"]
    # Asked for but not yet effective (the job ends as "cancelled" once the worker has stopped it).
    view["cancel_requested"] = cancel_requested and row["status"] not in FINISHED
    view["can_retry"] = row["status"] == JobStatus.COMPLETED and bool(row["failed"])  # as POST /api/v1/jobs/{id}/retry
    view["can_cancel"] = row["status"] not in FINISHED and not cancel_requested
    view["timecreated"], view["timestarted"] = row["timecreated"], row["timestarted"]
    view["timecompleted"] = row["timecompleted"]
    return view


def _int_param(request: web.Request, name: str, default: int | None = None, high: int = 10**9) -> int | None:
    raw = request.query.get(name, "")
    return int(raw) if raw.isdigit() and int(raw) <= high else default


@routes.get(PREFIX + "/jobs")
async def jobs_page(request: web.Request) -> web.Response:
    session = _require(request)
    state = request.app[STATE]
    company = _int_param(request, "company")
    status = request.query.get("status") if request.query.get("status") in STATUSES else None
    job_type = request.query.get("type") if request.query.get("type") in JOB_TYPES else None
    page = max(_int_param(request, "page", 1, high=10**6) or 1, 1)
    rows = await _rows(
        state,
        """SELECT j.*, count(*) OVER () AS total_rows,
                  EXISTS (SELECT 1 FROM audit_log a WHERE a.subject = j.job_id AND a.event_type = %(cancel)s)
                    AS cancel_requested
           FROM jobs j
           WHERE (%(company)s::int IS NULL OR j.company_id = %(company)s)
             AND (%(status)s::text IS NULL OR j.status = %(status)s)
             AND (%(type)s::text IS NULL OR j.type = %(type)s)
           ORDER BY j.timecreated DESC NULLS LAST, j.job_id DESC
           LIMIT %(limit)s OFFSET %(offset)s""",
        {"company": company, "status": status, "type": job_type, "cancel": CANCELLED, "limit": JOBS_PER_PAGE,
         "offset": (page - 1) * JOBS_PER_PAGE},
    )
    total = rows[0]["total_rows"] if rows else 0
    if not rows and page > 1:
        counted = await _rows(state, """SELECT count(*) AS n FROM jobs WHERE (%(company)s::int IS NULL OR
            company_id = %(company)s) AND (%(status)s::text IS NULL OR status = %(status)s)
            AND (%(type)s::text IS NULL OR type = %(type)s)""", {"company": company, "status": status,
                                                                  "type": job_type})
        total = counted[0]["n"] if counted else 0
    companies = [r["company_id"] for r in await _rows(
        state, "SELECT DISTINCT company_id FROM jobs WHERE company_id IS NOT NULL ORDER BY 1")]
    pages = max((total + JOBS_PER_PAGE - 1) // JOBS_PER_PAGE, 1)
    filters = {k: v for k, v in (("company", company), ("status", status), ("type", job_type)) if v is not None}

    def page_url(n: int) -> str:
        return f"{PREFIX}/jobs?{urlencode({**filters, 'page': n})}"

    return _render(request, "jobs.html", session, title="Jobs",
                   jobs=[_job_view(r, [], r["cancel_requested"]) for r in rows], total=total, page=page,
                   pages=pages, page_url=page_url, companies=companies, statuses=STATUSES, types=JOB_TYPES,
                   filters=filters)


async def _job(state: ApiState, job_id: str) -> dict[str, Any] | None:
    row, errors = await state.store.job_with_errors(job_id)
    if row is None:
        return None
    cancelled = await _rows(state, "SELECT 1 FROM audit_log WHERE subject = %s AND event_type = %s LIMIT 1",
                            (job_id, CANCELLED))
    return _job_view(row, errors, bool(cancelled))


async def _history(state: ApiState, job_id: str, after: int = 0) -> list[dict[str, Any]]:
    rows = await _rows(
        state,
        """SELECT id, occurred_at, event_type, actor, detail FROM audit_log
           WHERE subject = %s AND id > %s ORDER BY occurred_at, id LIMIT 500""",
        (job_id, after),
    )
    return [_history_item(r) for r in rows]


_SUMMARY_FIELDS = {
    "job.accepted": ("route", "provider", "reason", "total_recipients", "batch_count"),
    "job.rejected": ("problems",),
    "job.fell-back-to-local": ("from_provider", "to_provider", "reason"),
    "job.completed": ("run", "succeeded", "failed", "cancelled"),
    "job.cancelled": ("reason",),
    "job.retry-requested": ("only_retryable",),
}


def _short_type(ce_type: str) -> str:
    name = ce_type.removeprefix("org.manireports.offload.")
    return name.rsplit(".v", 1)[0] if ".v" in name else name


def _history_item(row: dict[str, Any]) -> dict[str, Any]:
    kind = _short_type(row["event_type"])
    detail = row["detail"] if isinstance(row["detail"], dict) else {}
    parts = []
    for name in _SUMMARY_FIELDS.get(kind, ()):
        value = detail.get(name)
        if value is None:
            continue
        if name == "problems" and isinstance(value, list):
            value = "; ".join(f"{p.get('field')}: {p.get('message')}" for p in value[:5] if isinstance(p, dict))
        parts.append(f"{name.replace('_', ' ')}: {value}")
    actor = str(detail.get("requested_by") or row["actor"] or "")
    if actor.isdigit():  # the audit log's actor of a job event is Moodle's createdby
        actor = f"Moodle user {actor}"
    return {"id": row["id"], "at": _format_time(row["occurred_at"]), "type": kind, "actor": actor,
            "summary": "; ".join(parts)[:600]}


def _safe_link(url: str | None) -> str | None:
    if not url:
        return None
    return url if urlsplit(url).scheme in ("http", "https") else None


@routes.get(PREFIX + "/jobs/{job_id}")
async def job_page(request: web.Request) -> web.Response:
    session = _require(request)
    state = request.app[STATE]
    job_id = request.match_info["job_id"]
    job = await _job(state, job_id) if len(job_id) <= 128 else None
    if job is None:
        return _render(request, "error.html", session, status=404, title="Job not found",
                       message="No job with this id is known (yet). A job just submitted appears once the "
                               "worker has accepted it.")
    failed_only = request.query.get("failed") == "1"
    page = max(_int_param(request, "page", 1, high=10**6) or 1, 1)
    recipients = await _rows(
        state,
        f"""SELECT userid, email, status, run, attempts, retryable, error_message, provider, certificate_url,
                   timesent FROM job_recipients WHERE job_id = %s {"AND status = 'failed'" if failed_only else ""}
            ORDER BY userid LIMIT %s OFFSET %s""",
        (job_id, RECIPIENTS_PER_PAGE + 1, (page - 1) * RECIPIENTS_PER_PAGE),
    )
    has_next = len(recipients) > RECIPIENTS_PER_PAGE
    recipients = recipients[:RECIPIENTS_PER_PAGE]
    for r in recipients:
        r["certificate_link"] = _safe_link(r.pop("certificate_url"))
    history = await _history(state, job_id)

    def page_url(n: int, failed: bool = failed_only) -> str:
        query = {"failed": "1"} if failed else {}
        if n > 1:
            query["page"] = str(n)
        return f"{PREFIX}/jobs/{job_id}" + (f"?{urlencode(query)}" if query else "") + "#recipients"

    return _render(request, "job.html", session, title=f"Job {job_id}", job=job, recipients=recipients,
                   failed_only=failed_only, page=page, has_next=has_next, page_url=page_url, history=history,
                   last_event=history[-1]["id"] if history else 0)


def _live(job: dict[str, Any]) -> dict[str, Any]:
    """What the live page needs of a job: counters, state and which buttons apply."""
    p = job["progress"]
    return {"status": job["status"], "cancel_requested": job["cancel_requested"], "can_retry": job["can_retry"],
            "can_cancel": job["can_cancel"], "total": p["total"], "sent": p["sent"], "failed": p["failed"],
            "pending": p["pending"], "done": p["done"], "percent": p["percent"], "sent_pct": p["sent_pct"],
            "failed_pct": p["failed_pct"], "rate": p["rate_per_second"],
            "started": _format_time(job["timestarted"]), "finished": _format_time(job["timecompleted"]),
            "errors": job["errors"]}


@routes.get(PREFIX + "/jobs/{job_id}/stream")
async def job_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``progress`` whenever the job row changes (read every 500 ms), ``history`` for each
    new audit_log row of the job (its id as the event id, so a reconnect resumes after it)."""
    if _session(request) is None:
        raise web.HTTPUnauthorized(text="sign in first")
    state = request.app[STATE]
    job_id = request.match_info["job_id"][:128]
    last_id = request.headers.get("Last-Event-ID") or request.query.get("after", "0")
    after = int(last_id) if last_id.isdigit() else 0
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    previous: str | None = None
    closing = _ui(request).closing
    started = last_write = time.monotonic()
    try:
        while time.monotonic() - started < STREAM_MAX_SECONDS and not closing.is_set():
            if _session(request) is None:  # the key was removed or rotated, or the session expired
                await response.write(b"event: signed-out\ndata: {}\n\n")
                break
            job = await _job(state, job_id)
            if job is not None:
                data = json.dumps(_live(job), default=str)
                if data != previous:
                    await response.write(f"event: progress\ndata: {data}\n\n".encode())
                    previous, last_write = data, time.monotonic()
                for item in await _history(state, job_id, after):
                    await response.write(f"id: {item['id']}\nevent: history\ndata: {json.dumps(item)}\n\n".encode())
                    after, last_write = item["id"], time.monotonic()
            if time.monotonic() - last_write > 15:
                await response.write(b": keep-alive\n\n")
                last_write = time.monotonic()
            # A finished job changes only if someone retries it: read it less often.
            interval = STREAM_INTERVAL if job is None or job["status"] not in FINISHED else 4 * STREAM_INTERVAL
            try:
                await asyncio.wait_for(closing.wait(), timeout=interval)
            except TimeoutError:
                pass
    except ConnectionResetError:
        pass  # the browser went away
    return response


# --- acting ----------------------------------------------------------------------------------------


@routes.post(PREFIX + "/jobs/{job_id}/retry")
async def retry(request: web.Request) -> web.Response:
    session, form = await _require_post(request)
    state = request.app[STATE]
    job_id = request.match_info["job_id"][:128]
    job = await _job(state, job_id)
    if job is None:
        raise web.HTTPNotFound(text="no such job")
    back = f"{PREFIX}/jobs/{job_id}"
    if job["status"] != JobStatus.COMPLETED:
        raise web.HTTPSeeOther(f"{back}?notice=job_not_finished")
    if not job["progress"]["failed"]:
        raise web.HTTPSeeOther(f"{back}?notice=nothing_to_retry")
    only_retryable = form.get("which", "retryable") != "all"
    event = JobRetryRequested(job_id=job_id, company_id=job["company_id"], requested_by=f"ui:{session.key_id}",
                              only_retryable=only_retryable)
    await state.publisher.send_and_wait(event)
    log.info("UI: retry of job %s requested by %s (only retryable: %s)", job_id, session.key_id, only_retryable)
    raise web.HTTPSeeOther(f"{back}?notice=retry_requested")


@routes.post(PREFIX + "/jobs/{job_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    session, form = await _require_post(request)
    state = request.app[STATE]
    job_id = request.match_info["job_id"][:128]
    job = await _job(state, job_id)
    if job is None:
        raise web.HTTPNotFound(text="no such job")
    back = f"{PREFIX}/jobs/{job_id}"
    if job["status"] in FINISHED:
        raise web.HTTPSeeOther(f"{back}?notice=job_finished")
    reason = str(form.get("reason", "")).strip()[:500] or None
    event = JobCancelled(job_id=job_id, company_id=job["company_id"], requested_by=f"ui:{session.key_id}",
                         reason=reason)
    await state.publisher.send_and_wait(event)
    log.info("UI: cancel of job %s requested by %s", job_id, session.key_id)
    raise web.HTTPSeeOther(f"{back}?notice=cancel_requested")


# --- company cloud settings ------------------------------------------------------------------------

_SETTINGS_FIELDS = ("cloud_enabled", "use_cloud_for_emails", "use_cloud_for_certificates", "user_threshold",
                    "email_provider", "storage_provider")


@routes.get(PREFIX + "/companies")
async def companies_page(request: web.Request) -> web.Response:
    session = _require(request)
    state = request.app[STATE]
    if request.query.get("company", "").isdigit() and len(request.query["company"]) <= 9:
        raise web.HTTPSeeOther(f"{PREFIX}/companies/{int(request.query['company'])}")
    rows = await _rows(state, """
        SELECT c.company_id, s.cloud_enabled, s.use_cloud_for_emails, s.use_cloud_for_certificates,
               s.user_threshold, s.email_provider, s.storage_provider, s.changed_by, s.changed_at,
               (SELECT count(*) FROM jobs j WHERE j.company_id = c.company_id) AS jobs
        FROM (SELECT company_id FROM company_cloud_settings UNION SELECT DISTINCT company_id FROM jobs
              WHERE company_id IS NOT NULL) c
        LEFT JOIN company_cloud_settings s USING (company_id) ORDER BY c.company_id LIMIT 1000""")
    return _render(request, "companies.html", session, title="Companies", companies=rows)


def _defaults(company_id: int) -> dict[str, Any]:
    return CompanySettingsChanged(company_id=company_id).model_dump(include=set(_SETTINGS_FIELDS))


async def _company(state: ApiState, company_id: int) -> tuple[dict[str, Any], bool, list[dict[str, Any]]]:
    row = await state.store.company_settings(company_id)
    history = await _rows(
        state,
        """SELECT id, occurred_at, actor, detail FROM audit_log WHERE event_type = %s AND subject = %s
           ORDER BY occurred_at DESC, id DESC LIMIT 200""",
        (SETTINGS_CHANGED, str(company_id)),
    )
    changes = []
    for i, h in enumerate(history):
        detail = h["detail"] if isinstance(h["detail"], dict) else {}
        before = history[i + 1]["detail"] if i + 1 < len(history) else None
        changed = [f for f in _SETTINGS_FIELDS if before is None or before.get(f) != detail.get(f)]
        changes.append({"at": _format_time(h["occurred_at"]), "actor": h["actor"] or "(unknown)",
                        "values": {f: detail.get(f) for f in _SETTINGS_FIELDS}, "changed": changed})
    return (row or _defaults(company_id)), row is not None, changes


def _company_id(request: web.Request) -> int:
    raw = request.match_info["company_id"]
    if not raw.isdigit() or len(raw) > 9:
        raise web.HTTPNotFound(text="no such company")
    return int(raw)


@routes.get(PREFIX + "/companies/{company_id}")
async def company_page(request: web.Request) -> web.Response:
    session = _require(request)
    company_id = _company_id(request)
    current, configured, changes = await _company(request.app[STATE], company_id)
    return _render(request, "company.html", session, title=f"Company {company_id}", company_id=company_id,
                   current=current, configured=configured, changes=changes, problems=[],
                   fields=_SETTINGS_FIELDS)


@routes.post(PREFIX + "/companies/{company_id}")
async def save_company(request: web.Request) -> web.Response:
    session, form = await _require_post(request)
    state = request.app[STATE]
    company_id = _company_id(request)
    threshold = str(form.get("user_threshold", "")).strip()
    values: dict[str, Any] = {
        "cloud_enabled": form.get("cloud_enabled") == "on",
        "use_cloud_for_emails": form.get("use_cloud_for_emails") == "on",
        "use_cloud_for_certificates": form.get("use_cloud_for_certificates") == "on",
        "user_threshold": int(threshold) if threshold.isdigit() and len(threshold) <= 9 else -1,
        "email_provider": str(form.get("email_provider", "")),
        "storage_provider": str(form.get("storage_provider", "")),
    }
    try:
        change = CompanySettingsChange.model_validate(values)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_url=False, include_input=False)]
        _, configured, changes = await _company(state, company_id)
        return _render(request, "company.html", session, status=422, title=f"Company {company_id}",
                       company_id=company_id, current={**values, "user_threshold": threshold[:12]},
                       configured=configured, changes=changes,
                       problems=problems, fields=_SETTINGS_FIELDS)
    event = CompanySettingsChanged(company_id=company_id, changed_by=f"ui:{session.key_id}", **change.model_dump())
    await state.publisher.send_and_wait(event)
    log.info("UI: settings of company %s changed by %s", company_id, session.key_id)
    # Wait briefly for the projector so the page shows the change it just made.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        row = await state.store.company_settings(company_id)
        if row is not None and row["changed_at"] >= event.changed_at:
            raise web.HTTPSeeOther(f"{PREFIX}/companies/{company_id}?notice=settings_saved")
        await asyncio.sleep(0.2)
    raise web.HTTPSeeOther(f"{PREFIX}/companies/{company_id}?notice=settings_pending")


# --- formatting ------------------------------------------------------------------------------------


def _format_time(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        value = parsed
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
