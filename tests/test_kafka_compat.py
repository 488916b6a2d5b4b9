"""stream/kafka_compat.py: a record whose header key is not UTF-8 reaches the consumer (and is
dead-lettered as undecodable_header) instead of failing kafka-python's poll() (unit tests); and a
rebalance started by new partitions completes for a consumer that polls with timeout 0 between
longer polls, as stream/consumer.py does (on the real broker)."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewPartitions
from kafka.consumer.fetcher import Fetcher
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

from snap2caption_service.core import cloudevents
from stream import kafka_compat
from stream.consumer import _original_headers
from stream.settings import StreamSettings
from stream.topics import ensure_topics, subscribe_when_visible
from stream_support import bootstrap  # noqa: F401  (fixture)

BAD_KEY = kafka_compat.UndecodableHeaderKey(b"\xff\xfe".decode("utf-8", "surrogateescape"))


@pytest.fixture
def unpatched(monkeypatch):
    """kafka-python as installed; whatever install() patches is undone after the test."""
    read_msg = DefaultRecordBatch._read_msg
    monkeypatch.setattr(DefaultRecordBatch, "_read_msg", getattr(read_msg, "__wrapped__", read_msg))
    need_rejoin = ConsumerCoordinator.need_rejoin
    monkeypatch.setattr(ConsumerCoordinator, "need_rejoin", getattr(need_rejoin, "__wrapped__", need_rejoin))


def _batch() -> bytes:
    """Three records: offsets 0 and 2 ordinary, 1 with the header key b"\\xff\\xfe"."""
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1024 * 1024)
    builder.append(0, 1000, b"k0", b"v0", [("ce_id", b"a")])
    builder.append(1, 1000, b"k1", b"v1", [("ce_id", b"b"), (BAD_KEY, b"1")])  # encode(): the raw bytes
    builder.append(2, 1000, b"k2", b"v2", [("ce_id", b"c")])
    return bytes(builder.build())


def test_undecodable_header_key_encodes_back_to_its_bytes():
    assert BAD_KEY.encode() == BAD_KEY.encode("utf-8") == b"\xff\xfe"
    assert BAD_KEY == "\udcff\udcfe"


def test_without_the_shim_the_record_fails_kafka_python(unpatched):
    with pytest.raises(CorruptRecordError, match="UnicodeDecodeError"):
        list(DefaultRecordBatch(_batch()))


def test_with_the_shim_every_record_is_read_and_the_bad_key_kept(unpatched):
    kafka_compat.install()
    kafka_compat.install()  # idempotent: wrapped once
    assert not getattr(DefaultRecordBatch._read_msg.__wrapped__, "snap2caption_lenient", False)
    records = list(DefaultRecordBatch(_batch()))
    assert [(r.offset, r.key, r.value) for r in records] == [(0, b"k0", b"v0"), (1, b"k1", b"v1"), (2, b"k2", b"v2")]
    assert records[0].headers == [("ce_id", b"a")] and type(records[0].headers[0][0]) is str
    (_, (key, value)) = records[1].headers
    assert isinstance(key, kafka_compat.UndecodableHeaderKey) and key.encode() == b"\xff\xfe" and value == b"1"


def test_with_the_shim_the_fetcher_hands_the_record_over(unpatched):
    """Through kafka-python's fetcher (crc check, header sizes), as poll() would."""
    kafka_compat.install()
    tp = TopicPartition("t", 0)
    part = Fetcher.PartitionRecords(0, tp, MemoryRecords(_batch()))
    records = part.take()
    assert [r.offset for r in records] == [0, 1, 2]
    assert records[1].serialized_header_size == len("ce_id") + 1 + 2 + 1


def test_the_record_is_dead_lettered_as_undecodable_header_with_its_key_escaped(unpatched):
    kafka_compat.install()
    (_, bad, _) = DefaultRecordBatch(_batch())
    with pytest.raises(cloudevents.CloudEventError) as err:
        cloudevents.from_kafka(b"{}", bad.headers)
    assert err.value.reason == "undecodable_header"
    assert "\\udcff" in err.value.detail and err.value.detail.isascii()

    class Record:
        headers = bad.headers

    headers = _original_headers(Record)
    assert headers == [("ce_id", b"b"), ("\\xff\\xfe", b"1")]
    assert all(type(k) is str for k, _ in headers)
    assert _original_headers(type("R", (), {"headers": [("\ud800", b"")]})) == [("\\ud800", b"")]


# --- a rebalance the metadata started completes (real broker) ------------------------------


class Rebalances(ConsumerRebalanceListener):
    def __init__(self):
        self.log: list[tuple[str, list[int]]] = []

    def on_partitions_revoked(self, revoked):
        self.log.append(("revoked", sorted(tp.partition for tp in revoked)))

    def on_partitions_assigned(self, assigned):
        self.log.append(("assigned", sorted(tp.partition for tp in assigned)))


def _partitions_added_while_polling(bootstrap: str) -> list[tuple[str, list[int]]]:
    """One consumer on a 1-partition topic; the topic grows to 3 partitions. Between rebalances
    the consumer polls with timeout 0 (stream/consumer.py does while every partition is paused);
    from a revocation to the next assignment it polls with 100 ms, as stream/consumer.py does."""
    topic = f"compat-{uuid.uuid4().hex[:8]}.uploaded"
    ensure_topics(StreamSettings(_env_file=None, kafka_bootstrap_servers=bootstrap, topic_partitions=1), [topic])
    rebalances = Rebalances()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=topic, enable_auto_commit=False, metadata_max_age_ms=300
    )
    try:
        subscribe_when_visible(consumer, topic, rebalances)
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
        assert rebalances.log[-1] == ("assigned", [0])
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_partitions({topic: NewPartitions(total_count=3)})
        finally:
            admin.close()
        deadline = time.monotonic() + 10
        while rebalances.log[-1] != ("assigned", [0, 1, 2]) and time.monotonic() < deadline:
            rebalancing = rebalances.log[-1][0] == "revoked"
            consumer.poll(timeout_ms=100 if rebalancing else 0)
            if not rebalancing:
                time.sleep(0.05)
        return list(rebalances.log)  # before close() revokes
    finally:
        consumer.close()


@pytest.mark.kafka
def test_without_the_shim_the_new_assignment_is_never_given(bootstrap, unpatched):
    """The hole the shim closes (kafka-python 3.0.12). Should this fail after an upgrade (the
    new assignment given without the shim), the shim may go."""
    log = _partitions_added_while_polling(bootstrap)
    assert log[-1] == ("revoked", [0])


@pytest.mark.kafka
def test_with_the_shim_the_rebalance_completes_with_the_new_partitions(bootstrap, unpatched):
    kafka_compat.install()
    log = _partitions_added_while_polling(bootstrap)
    assert log[-2:] == [("revoked", [0]), ("assigned", [0, 1, 2])], log
