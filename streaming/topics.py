"""Topic administration the stream commands need: create a topic unless it exists."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streaming.settings import StreamConfig

log = logging.getLogger(__name__)


def ensure_topic(settings: StreamConfig, topic: str, partitions: int) -> int:
    """Create ``topic`` with ``partitions`` partitions unless it exists; returns its partition count.

    Raises kafka-python's errors (e.g. ``KafkaTimeoutError`` when the broker is unreachable).
    """
    admin = KafkaAdminClient(**settings.client_kwargs())
    try:
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])
            log.info("created topic %s with %d partitions", topic, partitions)
        except TopicAlreadyExistsError:
            pass
        return len(admin.describe_topics([topic])[0]["partitions"])
    finally:
        admin.close()
