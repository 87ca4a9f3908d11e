"""A Kafka topic made for one test: the admin client opened, the topic created, the client closed."""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def create_topic(bootstrap: str, name: str, partitions: int, *, replication: int = 1,
                       configs: Mapping[str, str] | None = None, exist_ok: bool = False) -> None:
    """Create ``name``; one that exists already is an error unless ``exist_ok``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication,
                                            topic_configs=dict(configs or {}))])
    except TopicAlreadyExistsError:
        if not exist_ok:
            raise
    finally:
        await admin.close()
