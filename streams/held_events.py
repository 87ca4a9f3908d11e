"""Which records the worker's streams hold unacked, so a rebalance waits for those and for nothing else.

On a rebalance Faust stops its flow, **drops every record still buffered ahead of an agent, without acking it**,
and then waits (``Consumer.wait_empty``, with no deadline) until no record a stream has started on is unacked,
trusting the garbage collector to take the dropped ones out of that set. On a topic read by several agents (the
jobs topic feeds progress, callbacks and finished jobs) a record is one message shared by their events: an agent
that already took and acked it keeps it alive (its stream iterator holds the last event while it waits for the
next), while the copy dropped from a lagging agent's buffer is never acked. The wait then lasts for ever: the
group evicts the worker at the rebalance timeout, and the worker, stuck there, does not even stop on SIGTERM.

:class:`HeldEvents` counts what each stream has taken and not yet acked (a Faust sensor: ``on_stream_event_in``
and ``on_stream_event_out`` fire in the same step as the take and the ack). :func:`release_orphans` takes out of
the consumer's unacked set every record no stream holds: it is not acked, so its offset is not committed and it is
read again after the rebalance, which is what dropping it from the buffers means. Records a stream is still working
on (a batch still sending) are waited for as before. A worker's stop drops and waits the same way, and hung there
too (a SIGTERM did not stop it; only its supervisor's SIGKILL did).

A stream may also give up a record it holds (:meth:`HeldEvents.let_go`): it will not ack it, so it is read again
after the rebalance or restart like a dropped one. The batch agent does so for a batch whose sends all wait, for an
account's 24-hour quota or an unreachable relay, which may take hours, or for a slow rate limit: while the consumer
waits, it asks each stream to give up what cannot end soon (:meth:`HeldEvents.when_waited_on`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableSet
from typing import Any
from weakref import WeakKeyDictionary

import faust
from faust.types import TP, EventT, Message, StreamT

log = logging.getLogger(__name__)


class HeldEvents(faust.Sensor):
    """For each message a stream has taken: the streams that hold one of its events unacked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Weak keys: a message nobody references any more is held by nobody (a crashed agent's, say).
        self._holders: WeakKeyDictionary[Message, list[int]] = WeakKeyDictionary()
        self._on_wait: list[Callable[[], object]] = []

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT, event: EventT) -> dict[str, Any] | None:
        self._holders.setdefault(event.message, []).append(id(stream))
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: StreamT, event: EventT,
                            state: dict[str, Any] | None = None) -> None:
        self.let_go(event.message, stream)

    def let_go(self, message: Message, stream: StreamT) -> None:
        """``stream`` no longer holds ``message`` (acked, or given up unacked: then it is read again later)."""
        holders = self._holders.get(message)
        # Faust's pure-Python iterator (NO_CYTHON) also calls this for an event it skipped, never handed in.
        if holders is not None and id(stream) in holders:
            holders.remove(id(stream))
            if not holders:
                del self._holders[message]

    def holds(self, message: Message) -> bool:
        return message in self._holders

    def when_waited_on(self, hook: Callable[[], object]) -> Callable[[], None]:
        """Call ``hook`` each time the consumer waits for held records (a rebalance, a stop), about once a second;
        returns what takes the hook off again."""
        self._on_wait.append(hook)
        return lambda: self._on_wait.remove(hook)

    def waited_on(self) -> None:
        for hook in list(self._on_wait):
            hook()


def release_orphans(unacked: MutableSet[Message], held: HeldEvents) -> list[Message]:
    """Take out of ``unacked`` (without acking them) the messages no stream holds; returns them."""
    orphans = [message for message in unacked if not held.holds(message)]
    for message in orphans:
        unacked.discard(message)
    if orphans:
        log.warning("not waiting for %d record(s) dropped unacked from the agents' buffers that no stream holds "
                    "any longer; they are read again after the rebalance or restart: %s", len(orphans),
                    ", ".join(f"{message.tp.topic}[{message.tp.partition}]@{message.offset}"
                              for message in orphans[:10]))
    return orphans
