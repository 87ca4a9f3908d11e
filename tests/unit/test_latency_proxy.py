"""bench.latency_proxy: every byte arrives, in order, and never sooner than the round trip it adds."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from bench.latency_proxy import LatencyProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_bytes_come_back_whole_in_order_and_a_round_trip_later(echo_port: int) -> None:
    sent = b"".join(f"line {i}\r\n".encode() for i in range(2000))  # several chunks each way
    with LatencyProxy(echo_port, rtt_ms=40) as port, socket.create_connection(("127.0.0.1", port)) as conn:
        conn.settimeout(10)
        started = time.monotonic()
        conn.sendall(sent[:10])
        first = conn.recv(10)
        waited = time.monotonic() - started
        conn.sendall(sent[10:])
        received = bytearray(first)
        while len(received) < len(sent):
            received += conn.recv(65536)
    assert bytes(received) == sent
    assert waited >= 0.040  # half of it each way: never less, however fast the machine
