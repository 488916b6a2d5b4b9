"""stream/topics.py without a broker: both group consumers subscribe, then fetch metadata until
it lists the topic's partitions, before their first poll() forms the group (a group formed
before that is rebalanced again at once; see stream/kafka_compat.py). The real-broker tests in
test_stream_consumer.py, test_tag_stats.py and test_kafka_compat.py run the same start-up
against Apache Kafka."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaError

from stream import consumer as stream_consumer
from stream import tag_stats_consumer
from stream.topics import subscribe_when_visible
from stream_support import settings


class MetadataLagConsumer:
    """A KafkaConsumer whose metadata names the topic only from the ``visible_after``-th fetch."""

    def __init__(self, *args, visible_after: int = 3, **kwargs):
        self.calls: list[str] = []
        self.fetches, self.visible_after = 0, visible_after

    def topics(self):
        self.fetches += 1
        seen = self.fetches >= self.visible_after
        self.calls.append(f"fetch:{'seen' if seen else 'none'}")
        return {"other", "t", "up", "fb"} if seen else {"other"}

    def partitions_for_topic(self, topic):
        return {0, 1, 2} if self.fetches >= self.visible_after else set()

    def subscribe(self, topics, listener=None):
        self.calls.append("subscribe")
        self.listener = listener


def test_subscribes_then_fetches_until_the_partitions_are_seen():
    consumer = MetadataLagConsumer()
    subscribe_when_visible(consumer, "t", listener="L", timeout_s=10)
    assert consumer.calls == ["subscribe", "fetch:none", "fetch:none", "fetch:seen"]
    assert consumer.listener == "L"


def test_a_topic_that_never_shows_is_an_error_not_an_idle_consumer():
    consumer = MetadataLagConsumer(visible_after=10**9)
    with pytest.raises(KafkaError, match="no partitions of t visible"):
        subscribe_when_visible(consumer, "t", listener=None, timeout_s=0.5)
    assert consumer.calls[0] == "subscribe" and len(consumer.calls) > 2


def test_the_caption_consumer_sees_its_partitions_before_its_first_poll(monkeypatch):
    made: list[MetadataLagConsumer] = []
    monkeypatch.setattr(stream_consumer, "ensure_topics", lambda *a, **k: None)
    monkeypatch.setattr(
        stream_consumer, "KafkaConsumer", lambda *a, **k: made.append(MetadataLagConsumer()) or made[-1]
    )
    monkeypatch.setattr(stream_consumer.Consumer, "new_producer", lambda self: None)
    c = stream_consumer.Consumer(settings(topic_uploaded="up"))
    try:
        c.start()
    finally:
        c.pool.shutdown()
    assert made[0].calls[0] == "subscribe" and made[0].calls[-1] == "fetch:seen" and made[0].listener is c


def test_the_tag_stats_consumer_sees_its_partitions_before_its_first_poll(monkeypatch, tmp_path):
    made: list[MetadataLagConsumer] = []

    class Stops(MetadataLagConsumer):
        def poll(self, timeout_ms=0):
            self.calls.append("poll")
            stats.stop.set()
            return {}

        def close(self, autocommit=True):
            pass

    monkeypatch.setattr(tag_stats_consumer, "ensure_topics", lambda *a, **k: None)
    monkeypatch.setattr(tag_stats_consumer, "KafkaConsumer", lambda *a, **k: made.append(Stops()) or made[-1])
    stats = tag_stats_consumer.TagStatsConsumer(
        tag_stats_consumer.TagStatsSettings(_env_file=None, topic_feedback="fb"), tmp_path / "tags.sqlite"
    )
    stats.run()
    assert made[0].calls == ["subscribe", "fetch:none", "fetch:none", "fetch:seen", "poll"]
    assert made[0].listener is stats
