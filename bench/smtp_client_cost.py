"""Benchmark: CPU the worker's SMTP client spends per message (``adapters.email.smtp.SmtpProvider``).

``python -m bench.smtp_client_cost [-n 5000]`` starts a ``devtools.devmail`` sink in its own process, composes
``n`` of the pipeline's own messages (course_reminder, ~2.8 KB), opens the provider's 8 sessions and sends them
in chunks of 25, all chunks handed over at once as the worker does. It prints the rate and this process's CPU
time per message while sending (composing excluded), so run it from two checkouts back to back to compare
client code on the same machine; the sink's CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from adapters.email.base import OutgoingEmail  # noqa: E402
from adapters.email.smtp import SmtpProvider  # noqa: E402
from bench.smtp_baselines import pipeline_messages  # noqa: E402

WARMUP = 200


def messages(n: int) -> list[OutgoingEmail]:
    return [OutgoingEmail(key=str(r.userid), to_address=r.email, to_name=r.full_name, subject=rendered.subject,
                          text=rendered.text, html=rendered.html, message_id=message_id, raw=raw)
            for r, rendered, message_id, raw in pipeline_messages("bench-client", n, start=20_000_000)]


async def client_cost(port: int, n: int, connections: int) -> tuple[float, float]:
    """(messages/s, client CPU microseconds per message) over ``n`` messages after a warm-up."""
    prepared = messages(n + WARMUP)
    provider = SmtpProvider("127.0.0.1", port, mail_from="noreply@moodle.example.org", connections=connections)
    await provider.start()
    try:
        await provider.send_batch(prepared[:WARMUP])
        chunks = [prepared[i:i + 25] for i in range(WARMUP, len(prepared), 25)]
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(provider.send_batch(chunk) for chunk in chunks))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await provider.stop()
    return n / wall, cpu / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "devtools.devmail", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[3].rsplit(":", 1)[1])  # "devmail listening on HOST:PORT ..."
        rate, micros = asyncio.run(client_cost(port, args.n, args.connections))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"SmtpProvider: {rate:,.0f} messages/s, client CPU {micros:.0f} us/message "
          f"({args.n} messages, {args.connections} sessions, load {' '.join(load)})")


if __name__ == "__main__":
    main()
