"""streams.held_events: which messages streams hold unacked, and which ones a rebalance stops waiting for."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from weakref import WeakSet

from faust.types import TP, Message

from streams.held_events import HeldEvents, release_orphans

TOPIC = TP("jobs", 2)


def message(offset: int) -> Message:
    return Message(TOPIC.topic, TOPIC.partition, offset, 0.0, 0, {}, None, b"x", None, tp=TOPIC)


def take(held: HeldEvents, stream: object, msg: Message) -> SimpleNamespace:
    event = SimpleNamespace(message=msg)
    held.on_stream_event_in(TOPIC, msg.offset, stream, event)
    return event


def test_a_message_is_held_until_every_stream_that_took_it_has_acked_it():
    held, fast, slow, msg = HeldEvents(), object(), object(), message(4)
    fast_event, slow_event = take(held, fast, msg), take(held, slow, msg)
    held.on_stream_event_out(TOPIC, 4, fast, fast_event)
    assert held.holds(msg)
    held.on_stream_event_out(TOPIC, 4, slow, slow_event)
    assert not held.holds(msg)


def test_an_ack_by_a_stream_that_never_took_the_event_releases_nobody_elses_hold():
    # Faust's pure-Python iterator reports an event it skipped (taken during a rebalance) as out without in.
    held, fast, slow, msg = HeldEvents(), object(), object(), message(1)
    take(held, slow, msg)
    held.on_stream_event_out(TOPIC, 1, fast, SimpleNamespace(message=msg))
    held.on_stream_event_out(TOPIC, 1, fast, SimpleNamespace(message=message(9)))
    assert held.holds(msg)


def test_a_message_nobody_references_is_held_by_nobody():
    held = HeldEvents()
    take(held, object(), message(3))
    gc.collect()
    assert len(held._holders) == 0


def test_release_orphans_takes_out_what_no_stream_holds_and_acks_nothing():
    held, stream = HeldEvents(), object()
    working, dropped = message(0), message(4)
    take(held, stream, working)
    unacked: WeakSet[Message] = WeakSet([working, dropped])
    assert release_orphans(unacked, held) == [dropped]
    assert set(unacked) == {working}
    assert not dropped.acked and not working.acked  # not acked: its offset is not committed, it is read again
    assert release_orphans(unacked, held) == []


def test_a_stream_that_lets_go_of_a_message_no_longer_holds_it_and_a_wait_no_longer_waits_for_it():
    held, stream, other = HeldEvents(), object(), object()
    given_up, shared = message(5), message(6)
    take(held, stream, given_up)
    take(held, stream, shared)
    take(held, other, shared)
    held.let_go(given_up, stream)
    held.let_go(shared, stream)
    unacked: WeakSet[Message] = WeakSet([given_up, shared])
    assert release_orphans(unacked, held) == [given_up]  # the other stream still holds the shared one
    assert not given_up.acked


def test_each_wait_asks_the_streams_until_they_stop_asking_to_be_asked():
    held, asked = HeldEvents(), []
    stop_asking = held.when_waited_on(lambda: asked.append(1))
    held.waited_on()
    held.waited_on()
    stop_asking()
    held.waited_on()
    assert asked == [1, 1]
