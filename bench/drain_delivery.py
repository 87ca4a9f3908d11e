"""Benchmark: CPU per record of Faust's drain loop handing a record to its callback (``streams.first_inline``).

``python -m bench.drain_delivery [-n 50000] [--rounds 3]`` builds the worker's own consumer (``streams.app``, not
started: no broker) and hands ``n`` records to a callback that does what Faust's conductor does when nothing has to
wait (the flow-control check, a put on the stream's queue), the way Faust's drain loop does:
``wait_first(callback(record), suspend_flow.wait())``. Once through mode's ``Service.wait_first`` (Faust's own:
four tasks per record), once through the worker consumer's, alternated ``--rounds`` times. One JSON line: per way
the best round's CPU µs per record, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mode import Service  # noqa: E402

from config.settings import Settings  # noqa: E402
from streams.app import create_app  # noqa: E402


async def _round(wait_first: Any, n: int) -> float:
    flow = asyncio.Event()
    flow.set()
    suspend = asyncio.Event()
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def callback(record: int) -> None:
        await flow.wait()  # set: returns without waiting, as Faust's flow control does while the flow runs
        queue.put_nowait(record)

    started = time.process_time()
    for record in range(n):
        await wait_first(callback(record), suspend.wait())
        if queue.qsize() >= 1000:  # the stream's agent takes them
            while not queue.empty():
                queue.get_nowait()
    elapsed = time.process_time() - started
    while not queue.empty():
        queue.get_nowait()
    return elapsed / n * 1e6


async def _measure(n: int, rounds: int) -> dict[str, Any]:
    consumer = create_app(Settings(environment="test", certificate_code_secret_allow_default=True)).consumer

    async def modes(*coros: Any) -> Any:
        return await Service.wait_first(consumer, *coros)

    figures: dict[str, list[float]] = {"mode_wait_first_us": [], "first_inline_us": []}
    for _ in range(rounds):
        figures["mode_wait_first_us"].append(await _round(modes, n))
        figures["first_inline_us"].append(await _round(consumer.wait_first, n))
    best = {name: round(min(values), 2) for name, values in figures.items()}
    return {"records": n, "rounds": rounds, **best,
            "rounds_us": {name: [round(v, 2) for v in values] for name, values in figures.items()},
            "ratio_inline_to_mode": round(best["first_inline_us"] / best["mode_wait_first_us"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="records per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each way, alternated")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_measure(args.n, args.rounds))))


if __name__ == "__main__":
    main()
