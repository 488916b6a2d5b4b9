"""Chaos: 1,000 upload events while the consumer is SIGKILLed three times and the broker is
restarted once; afterwards a read_committed read of media.captioned holds every media_id
exactly once. Uses its own broker (so restarting it disturbs no other test) and its own
service instance generating few tokens (so the run stays within a few minutes)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter

import pytest

from conftest import start_service, stop_service
from stream_support import (KAFKA_SH, ConsumerProcess, consumer_env, create_topics, ensure_broker, free_port_pair,
                            inline, produce, read_topic, topic_env, upload_event)

# Not in `make test` yet: it failed once in a clean-clone CI run (consumer stuck on
# UnstableOffsetCommitError after the kills, 1000 events not all captioned in 300 s) while
# passing 4 of 4 runs before. `make test-chaos` runs it; see issue 4 notes.
pytestmark = [pytest.mark.kafka, pytest.mark.service, pytest.mark.chaos]

EVENTS = 1000


class Progress(threading.Thread):
    """Counts committed captioned records (read_committed) while the chaos goes on."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.count, self.stop = bootstrap, topic, 0, threading.Event()

    def run(self):
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, isolation_level="read_committed",
                                 auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TopicPartition(self.topic, p) for p in range(3)])
        consumer.seek_to_beginning()
        while not self.stop.is_set():
            try:
                self.count += sum(len(v) for v in consumer.poll(timeout_ms=300).values())
            except Exception:  # the broker restart
                time.sleep(0.5)
        consumer.close()

    def wait_for(self, n: int, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while self.count < n:
            assert time.monotonic() < deadline, f"stuck at {self.count}/{EVENTS} captioned before {what}"
            time.sleep(0.2)


def test_exactly_once_through_consumer_kills_and_a_broker_restart(tmp_path, tiny_model_dir):
    t_start = time.monotonic()
    kafka_env = {**os.environ, "KAFKA_PORT": str(free_port_pair()), "KAFKA_DATA_DIR": str(tmp_path / "kafka"),
                 "KAFKA_HEAP": "-Xms128m -Xmx384m"}

    def kafka(cmd: str):
        subprocess.run(["bash", str(KAFKA_SH), cmd], env=kafka_env, capture_output=True, text=True,
                       timeout=300, check=True)

    bootstrap = ensure_broker({k: kafka_env[k] for k in ("KAFKA_PORT", "KAFKA_DATA_DIR", "KAFKA_HEAP")})
    topics = topic_env("chaos")
    create_topics(bootstrap, topics)
    svc = start_service(tmp_path, tiny_model_dir, {"SNAP2CAPTION_MAX_NEW_TOKENS": "8"})
    env = consumer_env(bootstrap, svc.url, topics, SNAP2CAPTION_MAX_IN_FLIGHT=64, SNAP2CAPTION_RETRY_LATER_S=2)
    log = tmp_path / "consumer.log"
    progress = Progress(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"])
    consumer = None
    kills, unexpected_exits = 0, 0
    try:
        media_ids = [f"chaos-{i:04d}" for i in range(EVENTS)]
        produce(bootstrap, topics["SNAP2CAPTION_TOPIC_UPLOADED"],
                [upload_event(m, inline((i % 256, i // 256 * 60, 90), (24, 24))) for i, m in enumerate(media_ids)])
        progress.start()
        consumer = ConsumerProcess(env, log)
        for fraction in (0.15, 0.35, 0.55):
            progress.wait_for(int(EVENTS * fraction), 240, f"kill {kills + 1}")
            consumer.kill()  # SIGKILL: no drain, no commit; an open transaction is left behind
            kills += 1
            consumer = ConsumerProcess(env, log)
        progress.wait_for(int(EVENTS * 0.75), 240, "the broker restart")
        kafka("stop")
        time.sleep(2)
        kafka("start")
        deadline = time.monotonic() + 300
        while progress.count < EVENTS and time.monotonic() < deadline:
            if consumer.proc.poll() is not None:  # crash-only recovery, as a supervisor would do
                unexpected_exits += 1
                consumer = ConsumerProcess(env, log)
            time.sleep(0.5)
        out = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], EVENTS, timeout=60, settle=3)
        dlq = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_DLQ"], 0, timeout=5, settle=1)
    finally:
        progress.stop.set()
        if consumer is not None:
            consumer.kill()
        stop_service(svc.proc)
        subprocess.run(["bash", str(KAFKA_SH), "stop"], env=kafka_env, capture_output=True, timeout=120)

    keys = Counter(r.key.decode() for r in out)
    duplicates = {k: n for k, n in keys.items() if n > 1}
    missing = set(media_ids) - set(keys)
    print(f"\nchaos: {len(out)} captioned, {len(duplicates)} duplicated, {len(missing)} missing, {len(dlq)} DLQ; "
          f"{kills} SIGKILLs, 1 broker restart, {unexpected_exits} unexpected exits; "
          f"{time.monotonic() - t_start:.0f}s")
    assert not duplicates and not missing and not dlq, log.read_text()[-4000:]
    assert len(out) == EVENTS
