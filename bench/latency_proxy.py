"""A TCP proxy that holds every chunk for half a round trip each way: a relay that is not on this machine.

``python -m bench.latency_proxy --target 127.0.0.1:2525 --rtt-ms 10`` prints ``latency proxy listening on
127.0.0.1:PORT`` and forwards each connection to the target, every chunk in each direction delivered ``rtt/2``
after it arrived, in order. The benchmarks run it in a process of its own, so its CPU is not the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    except OSError:
        pass
    queue.put_nowait((0.0, b""))
    with contextlib.suppress(OSError):
        await delivering


async def _serve(host: str, target: tuple[str, int], rtt: float) -> None:
    async def connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pump(client_reader, server_writer, rtt / 2), _pump(server_reader, client_writer, rtt / 2))

    server = await asyncio.start_server(connection, host, 0)
    port = server.sockets[0].getsockname()[1]
    print(f"latency proxy listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


class LatencyProxy:
    """The proxy in a child process, in front of ``127.0.0.1:target_port``; entered, the port to use instead."""

    def __init__(self, target_port: int, rtt_ms: float) -> None:
        self.target_port, self.rtt_ms = target_port, rtt_ms
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> int:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.latency_proxy", "--target", f"127.0.0.1:{self.target_port}",
             "--rtt-ms", str(self.rtt_ms)], stdout=subprocess.PIPE, text=True, cwd=_REPO)
        assert self._proc.stdout is not None
        return int(self._proc.stdout.readline().rsplit(":", 1)[1])  # "latency proxy listening on HOST:PORT"

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="the round trip it adds, in milliseconds")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    asyncio.run(_serve(args.host, (host, int(port)), args.rtt_ms / 1000))


if __name__ == "__main__":
    main()
