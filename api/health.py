"""``GET /api/v1/health``: ready, or degraded with the reason, from checks that run in the background.

A task pings Postgres (``SELECT 1`` through the read pool) and Kafka (a metadata request through the job
producer) every ``api_health_interval`` seconds, the shared replay store (``replay-store``: without it every
signed request and webhook is refused) and the shared rate limits (``rate-limit-store``: without them each
replica limits on its own), and records the result in ``resilience.dependencies``; the
endpoint only reads that record, so it answers at once even while a dependency hangs. Both states answer 200
(the process itself is alive and serves what it can); ``status`` says which, ``checks`` say why.
While Postgres is down reads answer 503 (``database_unavailable``), while Kafka is down job hand-offs answer
503 (``broker_unavailable``), each with ``Retry-After``; both come back by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psycopg
from aiohttp import web
from aiokafka.errors import KafkaError
from psycopg_pool import PoolTimeout

from adapters.email.dkim_dns import check_published, dns_txt_lookup
from api.errors import REPLAY_STORE, REPLAY_STORE_REFUSES, json_response
from api.public import LIMIT_STORE, LIMITS, ReplicaLimits
from api.state import STATE, ApiState
from config.base import DEV_CALLBACK_URL_SECRET, DEV_MESSAGE_ID_SECRET, DEV_UNSUBSCRIBE_SECRET
from config.settings import Settings
from resilience.dependencies import DEPENDENCIES
from resilience.reasons import reason
from security.limits import LimitStoreUnavailable
from security.seen import SeenUnavailable

log = logging.getLogger(__name__)
CHECKER = web.AppKey("health_checker", asyncio.Task)
STOPPING = web.AppKey("health_stopping", asyncio.Event)
STOP_TIMEOUT_S = 10.0


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/health", health)
    app.on_startup.append(_start_checks)
    app.on_cleanup.append(_stop_checks)


async def health(request: web.Request) -> web.Response:
    states = DEPENDENCIES.snapshot()
    down = {name: s for name, s in states.items() if not s.up}
    return json_response({
        "status": "degraded" if down else "ready",
        "reasons": [f"{name}: {s.reason}" for name, s in down.items()],
        "warnings": configuration_warnings(request.app[STATE].settings),
        "checks": {name: {"up": s.up, "reason": s.reason, "since": round(s.since, 3), "losses": s.losses,
                          "reconnects": s.reconnects} for name, s in sorted(states.items())},
    })


# The other secrets with a public development default (production refuses each) and what anyone can do with it.
_PUBLIC_DEFAULTS = (
    ("unsubscribe_secret", DEV_UNSUBSCRIBE_SECRET, "anyone can make unsubscribe links for any learner"),
    ("message_id_secret", DEV_MESSAGE_ID_SECRET, "anyone can compute the Message-IDs of learners' messages"),
    ("callback_url_secret", DEV_CALLBACK_URL_SECRET, "a reader of the log can open sealed callback URL queries"),
)


def configuration_warnings(settings: Settings) -> list[str]:
    """What is unsafe about this configuration though the process runs: said in health on every check, not only
    once in a start-up log that nobody reads."""
    warnings = []
    if settings.uses_public_code_secret:
        refusal = settings.code_secret_refusal()
        warnings.append(
            "certificate_code_secret: the public development default; workers refuse to issue certificates with it"
            if refusal is not None else
            "certificate_code_secret: the public development default, allowed here "
            f"({'tests' if settings.environment == 'test' else 'OFFLOAD_CERTIFICATE_CODE_SECRET_ALLOW_DEFAULT'}): "
            "anyone can compute certificate codes; never hand these certificates out")
    for name, default, risk in _PUBLIC_DEFAULTS:
        if getattr(settings, name).get_secret_value() == default:
            warnings.append(f"{name}: the public development default; {risk} (set OFFLOAD_{name.upper()})")
    if not settings.api_keys:
        warnings.append("api_keys: none configured (OFFLOAD_API_KEYS); every signed request is refused")
    return warnings


async def check_once(state: ApiState) -> None:
    timeout = state.settings.api_db_timeout
    try:
        async with state.store.pool.connection(timeout=timeout) as conn:
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout)
        DEPENDENCIES.restored("postgres")
        await _check_replay_store(state)
    except (psycopg.Error, PoolTimeout, OSError, TimeoutError) as exc:
        DEPENDENCIES.lost("postgres", reason(exc))
        DEPENDENCIES.lost(REPLAY_STORE, f"Postgres is down; {REPLAY_STORE_REFUSES}")
    try:
        await state.publisher.ping(state.settings.api_handoff_timeout)
        DEPENDENCIES.restored("kafka")
    except (KafkaError, OSError, TimeoutError) as exc:
        DEPENDENCIES.lost("kafka", reason(exc))


async def _check_replay_store(state: ApiState) -> None:
    """Postgres answers, but can the replay store be used (its table created, read)? Without it nothing signed
    is admitted, so health must say so even while the plain ping succeeds."""
    try:
        await asyncio.wait_for(state.verifier.seen.check(), state.settings.api_db_timeout)
        DEPENDENCIES.restored(REPLAY_STORE)
    except (SeenUnavailable, TimeoutError) as exc:
        DEPENDENCIES.lost(REPLAY_STORE, f"{reason(exc)}; {REPLAY_STORE_REFUSES}")


async def check_limits(limits: ReplicaLimits, timeout: float) -> None:
    """Can the rate limits every replica shares be used? While not, each replica limits on its own."""
    try:
        await asyncio.wait_for(limits.check(), timeout)
        DEPENDENCIES.restored(LIMIT_STORE)
    except (LimitStoreUnavailable, TimeoutError) as exc:
        DEPENDENCIES.lost(LIMIT_STORE, f"{reason(exc)}; rate limits and the sign-in throttle are per replica")


async def _start_checks(app: web.Application) -> None:
    state = app[STATE]
    DEPENDENCIES.track("postgres")
    DEPENDENCIES.track(REPLAY_STORE)
    DEPENDENCIES.track(LIMIT_STORE)
    DEPENDENCIES.track("kafka")
    stopping = app[STOPPING] = asyncio.Event()
    settings = state.settings

    async def loop() -> None:
        dkim = None
        if settings.dkim_dns_check and settings.dkim_keys:  # once at start, beside the checks: warns, never refuses
            dkim = asyncio.create_task(check_published(settings.dkim_keys, dns_txt_lookup(settings.dkim_dns_timeout)))
        try:
            # Ends on the flag, not only on cancellation: Python 3.11's wait_for (used by the checks) can swallow
            # a cancel that lands as its inner call finishes, and the loop would then run on while shutdown waits.
            while not stopping.is_set():
                started = time.monotonic()
                await check_once(state)
                await check_limits(app[LIMITS], settings.api_db_timeout)
                pause = max(0.0, settings.api_health_interval - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), pause)
        finally:
            if dkim is not None:
                dkim.cancel()

    app[CHECKER] = asyncio.create_task(loop(), name="health-checks")


async def _stop_checks(app: web.Application) -> None:
    task = app.get(CHECKER)
    if task is None:
        return
    app[STOPPING].set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
    if not done:
        log.warning("the health checks did not stop within %.0f s at shutdown; left behind", STOP_TIMEOUT_S)
