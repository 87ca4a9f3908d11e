"""Benchmark: CPU the worker's SMTP client spends per message (``adapters.email.smtp.SmtpProvider``).

``python -m bench.smtp_client_cost [-n 5000] [--rtt-ms 10]`` starts a ``devtools.devmail`` sink in its own
process, composes ``n`` of the pipeline's own messages (course_reminder, ~2.8 KB), opens the provider's 8
sessions and sends them in chunks of 25, all chunks handed over at once as the worker does: pipelined (the relay
advertises PIPELINING, as the sink does), then in lockstep (the baseline: a relay without it). One JSON line: per
mode the rate and this process's CPU time per message while sending (composing excluded; the sink's CPU is not
counted), and their ratios. With ``--rtt-ms`` the relay sits behind ``bench.latency_proxy`` (its own process),
that far away as a relay on another host is, and each mode also says how many round trips a message waited for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from adapters.email.base import OutgoingEmail  # noqa: E402
from adapters.email.smtp import SmtpProvider  # noqa: E402
from bench.latency_proxy import LatencyProxy  # noqa: E402
from bench.smtp_baselines import pipeline_messages  # noqa: E402

WARMUP = 200


def messages(n: int) -> list[OutgoingEmail]:
    return [OutgoingEmail(key=str(r.userid), to_address=r.email, to_name=r.full_name, subject=rendered.subject,
                          text=rendered.text, html=rendered.html, message_id=message_id, raw=raw)
            for r, rendered, message_id, raw in pipeline_messages("bench-client", n, start=20_000_000)]


async def client_cost(port: int, n: int, connections: int, chunk: int, *, pipelining: bool = True,
                      prepared: list[OutgoingEmail]) -> tuple[float, float]:
    """(messages/s, client CPU microseconds per message) over ``n`` messages after a warm-up."""
    provider = SmtpProvider("127.0.0.1", port, mail_from="noreply@moodle.example.org", connections=connections,
                            pipelining=pipelining)
    await provider.start()
    try:
        await provider.send_batch(prepared[:WARMUP])
        chunks = [prepared[i:i + chunk] for i in range(WARMUP, len(prepared), chunk)]
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(provider.send_batch(part) for part in chunks))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await provider.stop()
    return n / wall, cpu / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=25, help="messages per send_batch call (the worker's: 25)")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="put the relay this many milliseconds of round trip away (bench.latency_proxy)")
    args = parser.parse_args()
    sink = subprocess.Popen([sys.executable, "-m", "devtools.devmail", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    out: dict = {"n": args.n, "sessions": args.connections, "chunk": args.chunk, "rtt_ms": args.rtt_ms}
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline().split()[3].rsplit(":", 1)[1])  # "devmail listening on HOST:PORT ..."
        with LatencyProxy(port, args.rtt_ms) if args.rtt_ms else nullcontext(port) as relay:
            prepared = messages(args.n + WARMUP)
            for name, pipelining in (("pipelined", True), ("lockstep", False)):  # lockstep: the baseline
                rate, micros = asyncio.run(client_cost(relay, args.n, args.connections, args.chunk,
                                                       pipelining=pipelining, prepared=prepared))
                out[name] = {"messages_per_s": round(rate), "client_cpu_us_per_message": round(micros)}
                if args.rtt_ms:  # how many round trips each message waited for, on average, per session
                    out[name]["round_trips_per_message"] = round(args.connections / (rate * args.rtt_ms / 1000), 2)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    out["rate_ratio_to_lockstep"] = round(out["pipelined"]["messages_per_s"] / out["lockstep"]["messages_per_s"], 2)
    out["cpu_ratio_to_lockstep"] = round(out["pipelined"]["client_cpu_us_per_message"]
                                         / out["lockstep"]["client_cpu_us_per_message"], 2)
    out["load"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
