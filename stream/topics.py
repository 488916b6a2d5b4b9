"""Create Snap2Caption's topics if they are missing (never alters existing ones)."""

from __future__ import annotations

import logging
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from snap2caption_service.core.settings import KafkaSettings

log = logging.getLogger("snap2caption.stream")


def ensure_topics(settings: KafkaSettings, names: list[str], timeout_s: float = 60.0) -> None:
    """Create each topic in ``names`` that does not exist yet, and wait until all are visible."""
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap, client_id="snap2caption-admin", request_timeout_ms=30000
    )
    try:
        existing = set(admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if missing:
            new = [
                NewTopic(
                    n, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication_factor
                )
                for n in missing
            ]
            try:
                admin.create_topics(new, timeout_ms=30000)
                log.info("created topics %s (%d partitions)", missing, settings.topic_partitions)
            except TopicAlreadyExistsError:
                pass  # another instance won the race; equally fine
        deadline = time.monotonic() + timeout_s
        while True:
            visible = set(admin.list_topics())
            if all(n in visible for n in names):
                return
            if time.monotonic() > deadline:
                raise KafkaError(f"topics not visible after {timeout_s}s: {sorted(set(names) - visible)}")
            time.sleep(0.2)
    finally:
        admin.close()


def subscribe_when_visible(consumer, topic: str, listener, timeout_s: float = 60.0) -> None:
    """Subscribe ``consumer`` to ``topic``, then fetch metadata until it lists the topic's
    partitions, so that the group forms (at the first ``poll()``) on metadata that names them.

    kafka-python's group leader assigns from whatever metadata it holds when the group forms, and
    rebalances again when its metadata snapshot, taken after subscribing, differs from the one it
    assigned from. Joining before that snapshot names the topic gives an empty assignment and
    then a second rebalance, which once left a consumer with none at all (CI; see
    ``kafka_compat``); fetching first, as librdkafka does before a join, makes one rebalance the
    rule. The fetch must follow ``subscribe()``: the snapshot is built from the subscription."""
    consumer.subscribe([topic], listener=listener)
    deadline = time.monotonic() + timeout_s
    while topic not in consumer.topics() or not consumer.partitions_for_topic(topic):  # topics() always fetches
        if time.monotonic() > deadline:
            raise KafkaError(f"no partitions of {topic} visible to the consumer after {timeout_s:.0f}s")
        time.sleep(0.2)
