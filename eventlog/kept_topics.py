"""Keeping a producer's topics in its metadata from each one's first send.

aiokafka asks the broker about the topics a producer tracks, or about every topic while it tracks none (a health
ping's metadata request, the periodic refresh, the refresh after a topic is created). A topic it learned of from
such a full fetch is not tracked, and the first refresh after any other topic is tracked (a send to a topic it
had not heard of) drops it. A batch already waiting for a dropped topic then finds no leader and waits out the
request timeout: 30 s and NotLeaderForPartitionError in our publisher (seen in CI: a webhook's bounce report,
answered 500), 1,200 s in Faust's producer, whose changelog batches would hold up the worker's commits as long.
Telling the producer to track each topic as it is first sent to keeps it in every refresh.
"""

from __future__ import annotations

from typing import Any


class KeptTopics:
    """The topics one aiokafka producer has been told to keep; a new producer starts with none."""

    def __init__(self) -> None:
        self._producer: Any = None
        self._topics: set[str] = set()

    def keep(self, producer: Any, topic: str) -> None:
        """Before ``producer`` sends to ``topic``: tracked from now on (the refresh this may start is awaited by
        the send if it needs it)."""
        if producer is not self._producer:
            self._producer, self._topics = producer, set()
        if topic not in self._topics:
            self._topics.add(topic)
            producer.client.add_topic(topic)
