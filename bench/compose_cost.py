"""Benchmark: CPU per learner to render and compose the pipeline's own message, against the stock way in one run.

``python -m bench.compose_cost [-n 20000] [--rounds 3]`` renders course_reminder for ``n`` learners of the
benchmark job and composes each message as the worker does (``content.email``: the three parts from one shared
context, then ``compose_message``), timing render and compose apart in this process's CPU time. The baseline, in
the same run, for the same learners: Jinja's ``Template.render`` for each part and Python's ``EmailMessage``
(``set_content`` and ``add_alternative``, then ``as_bytes``), the way a message is usually built. Rounds alternate
the two ways; each figure is the best round. One JSON line: µs per learner for each step and way, the ratios
(ours / stock), each way's message size and the transfer encodings of the pipeline's parts.
"""

from __future__ import annotations

import argparse
import email.policy
import json
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jinja2  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from content.email import EmailRenderer, RenderedEmail, TemplateStore, compose_message, message_id_for  # noqa: E402
from schemas.events import Recipient  # noqa: E402
from tests.support.jobs import job_payload  # noqa: E402

_FROM = "noreply@moodle.example.org"
_HEADERS = {"X-Offload-Job": "bench-compose", "List-Unsubscribe": "<https://moodle.example.org/u?t=0123456789abcdef>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def _cpu(step: Callable[[], list[Any]]) -> tuple[float, list[Any]]:
    """The CPU seconds ``step`` took, and what it made."""
    started = time.process_time()
    made = step()
    return time.process_time() - started, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    payload = job_payload("bench-compose", args.n, start=30_000_000)
    learners = [Recipient(**fields) for fields in payload["recipients"]]
    source = TemplateStore().get(payload["template_id"])
    data = payload["template_data"]
    ids = [message_id_for("bench-compose", r.userid, "bench.local", key=b"bench") for r in learners]

    renderer = EmailRenderer(TemplateStore())
    common = {"undefined": jinja2.StrictUndefined, "keep_trailing_newline": True}
    text_env = ImmutableSandboxedEnvironment(autoescape=False, **common)
    stock = (text_env.from_string(source.subject), text_env.from_string(source.text),
             ImmutableSandboxedEnvironment(autoescape=True, **common).from_string(source.html))

    def ours_render() -> list[RenderedEmail]:
        return [renderer.render_template(source, r.template_fields(), data) for r in learners]

    def stock_render() -> list[RenderedEmail]:
        out = []
        for r in learners:
            names = {**data, **r.template_fields()}
            out.append(RenderedEmail(*(t.render(names) for t in stock)))
        return out

    rendered = ours_render()
    if rendered != stock_render():
        raise SystemExit("the two ways render different text")

    def ours_compose() -> list[bytes]:
        return [compose_message(m, from_address=_FROM, from_name="Moodle", to_address=r.email, to_name=r.full_name,
                                message_id=i, headers=_HEADERS)
                for m, r, i in zip(rendered, learners, ids, strict=True)]

    def stock_compose() -> list[bytes]:
        out = []
        for m, r, i in zip(rendered, learners, ids, strict=True):
            msg = EmailMessage(policy=email.policy.SMTP)
            msg["From"], msg["To"] = f"Moodle <{_FROM}>", f"{r.full_name} <{r.email}>"
            msg["Subject"], msg["Message-ID"] = m.subject, i
            for name, value in _HEADERS.items():
                msg[name] = value
            msg.set_content(m.text)
            msg.add_alternative(m.html, subtype="html")
            out.append(msg.as_bytes())
        return out

    best: dict[str, float] = {}
    made: dict[str, list[Any]] = {}
    for _ in range(args.rounds):
        for name, step in (("render", ours_render), ("stock_render", stock_render),
                           ("compose", ours_compose), ("stock_compose", stock_compose)):
            seconds, made[name] = _cpu(step)
            best[name] = min(best.get(name, seconds), seconds)
    per = {name: round(seconds / args.n * 1e6, 1) for name, seconds in best.items()}
    ours_total, stock_total = per["render"] + per["compose"], per["stock_render"] + per["stock_compose"]
    sample = made["compose"][0]
    parts = email.message_from_bytes(sample, policy=email.policy.default)
    print(json.dumps({
        "n": args.n, "rounds": args.rounds,
        "us_per_learner": {"render": per["render"], "compose": per["compose"], "total": round(ours_total, 1)},
        "stock_us_per_learner": {"render": per["stock_render"], "compose": per["stock_compose"],
                                 "total": round(stock_total, 1)},
        "ratio_render": round(per["render"] / per["stock_render"], 3),
        "ratio_compose": round(per["compose"] / per["stock_compose"], 3),
        "ratio_total": round(ours_total / stock_total, 3),
        "message_bytes": len(sample), "stock_message_bytes": len(made["stock_compose"][0]),
        "transfer_encodings": [p["Content-Transfer-Encoding"] for p in parts.walk() if not p.is_multipart()],
    }))


if __name__ == "__main__":
    main()
