"""POST /u/TOKEN reads its body whole and within a deadline (issue 11): a body that arrives in several TCP
segments is judged whole, and one that never finishes is answered 408 with nothing written."""

from __future__ import annotations

import socket
import time

import pytest

from schemas.events.suppression import RecipientUnsubscribed
from security.unsubscribe import make_token
from tests.support.api import ApiServer
from tests.support.observe import events

pytestmark = pytest.mark.integration

ONE_CLICK = b"List-Unsubscribe=One-Click"


def exchange(port: int, path: str, parts: list[bytes | float], length: int) -> bytes:
    """Write a request by hand, pausing where ``parts`` holds seconds; the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Content-Type: application/x-www-form-urlencoded\r\n"
                      f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode())
        for part in parts:
            if isinstance(part, float):
                time.sleep(part)
            else:
                sock.sendall(part)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_an_unsubscribe_body_is_read_whole_and_within_the_deadline(settings_factory, topics_for):
    settings = settings_factory(api_body_timeout=5.0)  # far beyond the 0.3 s pause, however busy the machine
    topics_for(settings)
    secret = settings.unsubscribe_key()
    with ApiServer(settings) as api:
        # A mail client whose one-click body arrives in two segments: unsubscribed, and as one-click.
        path = f"/u/{make_token(secret, 7, 1, 'course_reminder')}"
        answer = exchange(api.port, path, [ONE_CLICK[:10], 0.3, ONE_CLICK[10:]], len(ONE_CLICK))
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        # A client that never sends the rest of its body: 408 after the deadline, and nobody unsubscribed.
        slow = f"/u/{make_token(secret, 7, 2, 'course_reminder')}"
        started = time.monotonic()
        answer = exchange(api.port, slow, [ONE_CLICK[:5]], len(ONE_CLICK))
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"Nothing was changed" in answer
        assert time.monotonic() - started < 25  # the deadline (5 s) ended it, not the client
    unsubscribes = [(e.userid, e.method) for e in events(settings, "suppressions")
                    if isinstance(e, RecipientUnsubscribed)]
    assert unsubscribes == [(1, "one-click")]
