"""SendGrid v3 provider: ``POST /v3/mail/send`` with up to 1,000 personalizations per call.

Per-learner content — substitutions, not per-call grouping. Every learner's subject, text and HTML are
rendered by our own templates (the same bytes the SMTP path sends), so no two learners share a body. Grouping
learners by identical content would therefore mean one call per learner: 200 calls for a 200-learner batch.
Instead the call carries one ``content`` made of two substitution tags, and each personalization carries its
own ``subject`` and the learner's rendered text and HTML as the tags' values: one call per batch (up to 1,000
learners). SendGrid caps substitutions at 10,000 bytes per personalization; a learner whose text+HTML is
bigger is sent in a call of its own with the body as plain ``content`` (grouping of one).

Measured (``python -m bench.http_provider_forms -n 2000``, local API servers on loopback, batches of 200):
one call per batch made 10 calls, 454 request bytes per learner, 20,900 learners/s; one call per learner made
2,000 calls, 638 bytes per learner, 880 learners/s. Against the real API each call also costs a round trip
of ~100-300 ms and counts against the account's request rate limit, so the gap is wider there. Whole jobs
(``python -m bench.email_job``, 5,000 learners, worker + Kafka + Postgres): 1,650 learners/s, 25 calls,
2,369 request bytes per learner for the 2.8 KB course-reminder message.

Each personalization also carries our ``Message-ID`` header (SendGrid reports it back as ``smtp-id`` in its
Event Webhook, which ``api/webhooks/`` matches to the learner) and ``custom_args`` with the learner key.
The 202's ``X-Message-Id`` is stored as the provider message id (webhooks' ``sg_message_id`` begins with it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import aiohttp

from adapters.email.base import OnEachResult, Outcome, OutgoingEmail, SendResult
from adapters.email.http_api import Answer, HttpEmailProvider
from adapters.email.pacing import RateLimiter

TEXT_TAG = "-offload-text-"
HTML_TAG = "-offload-html-"
MAX_SUBSTITUTION_BYTES = 10_000
_PERSONALIZATION = re.compile(r"personalizations\.(\d+)")


def _substitutable(msg: OutgoingEmail) -> bool:
    return len(msg.text.encode()) + len(msg.html.encode()) + len(TEXT_TAG) + len(HTML_TAG) <= MAX_SUBSTITUTION_BYTES


class SendGridProvider(HttpEmailProvider):
    name = "sendgrid"
    max_batch = 1000

    def __init__(self, *, api_key: str, base_url: str, mail_from: str, mail_from_name: str = "",
                 timeout: float = 30.0, concurrency: int = 4, limiter: RateLimiter | None = None) -> None:
        super().__init__(timeout=timeout, concurrency=concurrency, limiter=limiter)
        self._key = api_key
        self.url = base_url.rstrip("/") + "/v3/mail/send"
        self.mail_from, self.mail_from_name = mail_from, mail_from_name

    async def send_batch(
        self, messages: Sequence[OutgoingEmail], on_result: OnEachResult | None = None
    ) -> list[SendResult]:
        # Messages too big to substitute go alone, each in a call of its own, after the others.
        alone = {i for i, m in enumerate(messages) if not _substitutable(m)}
        groups = [[i for i in range(len(messages)) if i not in alone], *([i] for i in sorted(alone))]
        return await self.send_groups(messages, groups, on_result)

    def body(self, messages: Sequence[OutgoingEmail]) -> dict[str, Any]:
        sender: dict[str, str] = {"email": self.mail_from}
        if self.mail_from_name:
            sender["name"] = self.mail_from_name
        if len(messages) == 1 and not _substitutable(messages[0]):
            msg = messages[0]
            return {"personalizations": [self._personalization(msg, substitute=False)], "from": sender,
                    "content": [{"type": "text/plain", "value": msg.text}, {"type": "text/html", "value": msg.html}]}
        return {
            "personalizations": [self._personalization(m, substitute=True) for m in messages],
            "from": sender,
            "content": [{"type": "text/plain", "value": TEXT_TAG}, {"type": "text/html", "value": HTML_TAG}],
        }

    @staticmethod
    def _personalization(msg: OutgoingEmail, *, substitute: bool) -> dict[str, Any]:
        to: dict[str, str] = {"email": msg.to_address}
        if msg.to_name:
            to["name"] = msg.to_name
        headers = {**dict(msg.headers), "Message-ID": msg.message_id}  # e.g. List-Unsubscribe, per learner
        out: dict[str, Any] = {"to": [to], "subject": msg.subject, "headers": headers,
                               "custom_args": {"offload_key": msg.key}}
        if substitute:
            out["substitutions"] = {TEXT_TAG: msg.text, HTML_TAG: msg.html}
        return out

    async def _call(self, session: aiohttp.ClientSession, messages: Sequence[OutgoingEmail]) -> Answer:
        payload = json.dumps(self.body(messages)).encode()
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
        async with session.post(self.url, data=payload, headers=headers) as response:
            return Answer(response.status, response.headers, await response.read())

    def _accepted(self, answer: Answer, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        provider_id = answer.headers.get("X-Message-Id")
        return [SendResult(m.key, Outcome.SENT, provider_message_id=provider_id) for m in messages]

    def _refused_positions(self, answer: Answer, messages: Sequence[OutgoingEmail]) -> set[int] | None:
        data = answer.json()
        if not isinstance(data, dict) or not isinstance(data.get("errors"), list):
            return None
        named = set()
        for error in data["errors"]:
            match = _PERSONALIZATION.match(str(error.get("field") or "")) if isinstance(error, dict) else None
            if match is None:
                return None  # an error about the whole request: let the halving find out
            position = int(match.group(1))
            if position < len(messages):
                named.add(position)
        return named or None
