"""SMTP baselines for the email benchmark: the best a relay can take, and how Moodle core sends.

``raw_smtp_rate`` is what a tuned stock client sends (pre-built bytes, persistent sessions, concurrent, no
pipeline at all, lockstep DATA: neither PIPELINING nor CHUNKING, which the pipeline uses where the relay offers
them, so it is not the relay's ceiling), and ``raw_smtp_rate_same_message`` the same for the pipeline's own
rendered message;
``naive_moodle_rate`` is the floor we replace (one SMTP session per mail, sequential, a new
``EmailMessage`` each time, as Moodle core does with its default ``smtpmaxbulk=1``).
Run ``python -m bench.smtp_baselines [-n N]`` to print both against an in-process DevMailSink.
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import subprocess
import sys
import time
from collections.abc import Mapping
from email.message import EmailMessage
from types import MappingProxyType

import aiosmtplib

from content.email import EmailRenderer, RenderedEmail, TemplateStore, compose_message, message_id_for
from schemas.events import Recipient
from tests.support.jobs import job_payload

_TEXT = (
    "Dear {name},\n\nThis is a friendly reminder that you have not yet completed the course\n"
    '"Workplace safety 2026". Please finish it by 1 December 2026.\n\n'
    "Continue where you left off:\nhttps://moodle.example.org/course/view.php?id=42\n\nKind regards,\nMoodle\n"
)
_HTML = (
    "<html><body><p>Dear {name},</p><p>This is a friendly reminder that you have not yet completed the "
    "course <strong>Workplace safety 2026</strong>. Please finish it by <strong>1 December 2026</strong>."
    '</p><p><a href="https://moodle.example.org/course/view.php?id=42">Continue the course</a></p>'
    "<p>Kind regards,<br>Moodle</p></body></html>"
)
_FROM = "noreply@moodle.example.org"


def _recipient(i: int) -> tuple[str, str]:
    return f"user{i}@example.org", f"User {i}"


async def raw_smtp_rate(host: str, port: int, n: int, connections: int = 8) -> float:
    """Messages/s through ``connections`` persistent aiosmtplib sessions sending pre-built bytes."""
    prepared = []
    for i in range(n):
        address, name = _recipient(i)
        rendered = RenderedEmail("Reminder: Workplace safety 2026", _TEXT.format(name=name), _HTML.format(name=name))
        raw = compose_message(
            rendered, from_address=_FROM, from_name="Moodle", to_address=address, to_name=name,
            message_id=message_id_for("bench", i, "bench.local", key=b"bench"),
        )
        prepared.append((address, raw))
    return await _send_rate(host, port, prepared, connections)


PipelineMessage = tuple[Recipient, RenderedEmail, str, bytes]


def pipeline_messages(job_id: str, n: int, *, start: int,
                      headers: Mapping[str, str] = MappingProxyType({})) -> list[PipelineMessage]:
    """``n`` of the pipeline's own messages (course_reminder rendered and composed exactly as the worker does):
    each learner with the rendered email, its Message-ID and the composed bytes."""
    payload = job_payload(job_id, n, start=start)
    renderer = EmailRenderer(TemplateStore())
    out = []
    for fields in payload["recipients"]:
        r = Recipient(**fields)
        rendered = renderer.render(payload["template_id"], r.template_fields(), payload["template_data"])
        message_id = message_id_for(job_id, r.userid, "bench.local", key=b"bench")
        raw = compose_message(rendered, from_address=_FROM, from_name="Moodle", to_address=r.email,
                              to_name=r.full_name, message_id=message_id, headers=headers)
        out.append((r, rendered, message_id, raw))
    return out


async def raw_smtp_rate_same_message(host: str, port: int, n: int, connections: int = 8) -> tuple[float, int]:
    """Like ``raw_smtp_rate``, but sending the pipeline's own messages, so the ceiling is measured for the same
    bytes; also returns one message's size."""
    prepared = [(r.email, raw) for r, _, _, raw in
                pipeline_messages("bench-raw-same", n, start=10_000_000, headers={"X-Offload-Job": "bench-raw-same"})]
    return await _send_rate(host, port, prepared, connections), len(prepared[0][1])


async def _send_rate(host: str, port: int, prepared: list[tuple[str, bytes]], connections: int) -> float:
    """Messages/s sending pre-built ``(address, bytes)`` over ``connections`` persistent sessions, after a
    warm-up (fresh sessions, cold interpreter caches on both sides): we want the steady rate."""
    clients = [aiosmtplib.SMTP(hostname=host, port=port, local_hostname="bench.local") for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in clients))

    async def send(client: aiosmtplib.SMTP, share: list[tuple[str, bytes]]) -> None:
        for address, raw in share:
            await client.sendmail(_FROM, [address], raw)

    warmup = prepared[: min(len(prepared), 25 * connections)]
    await asyncio.gather(*(send(c, warmup[k::connections]) for k, c in enumerate(clients)))
    started = time.perf_counter()
    await asyncio.gather(*(send(c, prepared[k::connections]) for k, c in enumerate(clients)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.quit() for c in clients))
    return len(prepared) / elapsed


def naive_moodle_rate(host: str, port: int, n: int) -> float:
    """Messages/s sending like Moodle core: sequential, a new SMTP session and EmailMessage per mail."""
    started = time.perf_counter()
    for i in range(n):
        address, name = _recipient(i)
        msg = EmailMessage()
        msg["From"] = f"Moodle <{_FROM}>"
        msg["To"] = f"{name} <{address}>"
        msg["Subject"] = "Reminder: Workplace safety 2026"
        msg.set_content(_TEXT.format(name=name))
        msg.add_alternative(_HTML.format(name=name), subtype="html")
        with smtplib.SMTP(host, port, local_hostname="bench.local", timeout=30) as smtp:
            smtp.send_message(msg)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description="SMTP baselines against a DevMailSink in its own process")
    parser.add_argument("-n", type=int, default=5000, help="messages for the raw rate (naive uses n/10)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--in-process", action="store_true", help="run the sink in this process (shares the GIL)")
    args = parser.parse_args()
    if args.in_process:
        from devtools.devmail import DevMailSink

        with DevMailSink(keep_messages=False, max_records=1) as sink:
            _report(sink.host, sink.port, args.n, args.connections)
        return
    # A real relay does not share our interpreter; in-process the sink and the client fight over one GIL.
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.devmail", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # "devmail listening on 127.0.0.1:PORT ..."
        port = int(ready.split()[3].rsplit(":", 1)[1])
        _report("127.0.0.1", port, args.n, args.connections)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _report(host: str, port: int, n: int, connections: int) -> None:
    raw = asyncio.run(raw_smtp_rate(host, port, n, connections))
    naive = naive_moodle_rate(host, port, max(1, n // 10))
    print(f"raw smtp ({connections} connections, pre-built bytes): {raw:,.0f} msg/s")
    print(f"naive moodle (session per mail, EmailMessage each): {naive:,.0f} msg/s")


if __name__ == "__main__":
    main()
