"""The event loop of the worker, the projector and the API: uvloop's (libuv, in C) unless OFFLOAD_EVENT_LOOP=asyncio.

The worker's event loop is what an email job waits for once the machine has a free core: every SMTP session's
writes and replies, every outcome produced and every record Faust hands over run on it. asyncio's own loop (its
selector, handles and socket transports are Python) was about a fifth of it (py-spy, docs/benchmarks.md); uvloop
runs the same asyncio code on libuv (14 % less of the worker's CPU per email). ``asyncio`` keeps Python's own
loop, to rule the loop out when chasing a fault.
"""

from __future__ import annotations

import asyncio

from config.settings import EventLoop


def use_event_loop(choice: EventLoop) -> None:
    """Every loop this process makes from now on (``asyncio.run``, Faust's, aiohttp's ``run_app``) is ``choice``'s.
    Call before anything makes a loop."""
    if choice == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)  # Python's own
