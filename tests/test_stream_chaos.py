"""Chaos: 1,000 upload events while the consumer is SIGKILLed three times and the broker is
restarted once; afterwards a read_committed read of media.captioned holds every media_id
exactly once. Uses its own broker (so restarting it disturbs no other test) and its own
service instance generating few tokens (so the run stays within a few minutes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter

import pytest

from conftest import start_service, stop_service
from stream_support import (
    KAFKA_SH,
    ConsumerProcess,
    consumer_env,
    create_topics,
    ensure_broker,
    free_port_pair,
    inline,
    produce,
    read_topic,
    topic_env,
    upload_event,
)

pytestmark = [pytest.mark.kafka, pytest.mark.service, pytest.mark.chaos]

EVENTS = 1000


class Progress(threading.Thread):
    """Counts committed captioned records (read_committed) while the chaos goes on."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.count, self.stop = bootstrap, topic, 0, threading.Event()

    def run(self):
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        consumer.assign([TopicPartition(self.topic, p) for p in range(3)])
        consumer.seek_to_beginning()
        while not self.stop.is_set():
            try:
                self.count += sum(len(v) for v in consumer.poll(timeout_ms=300).values())
            except Exception:  # the broker restart
                time.sleep(0.5)
        consumer.close()

    def wait_for(self, n: int, timeout: float, what: str, supervise=lambda: None):
        deadline = time.monotonic() + timeout
        while self.count < n:
            assert time.monotonic() < deadline, f"stuck at {self.count}/{EVENTS} captioned before {what}"
            supervise()
            time.sleep(0.2)


def log_summary(text: str) -> str:
    """Warning and error lines of the consumer log, counted by kind (numbers, ids and offsets
    blanked), so a failure shows what went on across all the restarts, not only the tail."""
    kinds = Counter(
        re.sub(r"0x[0-9a-f]+|\b\d+\b", "N", line.split(" ", 2)[2][:110])
        for line in text.splitlines()
        if re.match(r"\S+ \S+ (WARNING|ERROR) ", line)
    )
    return "\n".join(f"{n:6d}  {kind}" for kind, n in kinds.most_common(25))


def test_exactly_once_through_consumer_kills_and_a_broker_restart(tmp_path, tiny_model_dir):
    t_start = time.monotonic()
    kafka_env = {
        **os.environ,
        "KAFKA_PORT": str(free_port_pair()),
        "KAFKA_DATA_DIR": str(tmp_path / "kafka"),
        "KAFKA_HEAP": "-Xms128m -Xmx384m",
    }

    def kafka(cmd: str):
        subprocess.run(
            ["bash", str(KAFKA_SH), cmd], env=kafka_env, capture_output=True, text=True, timeout=300, check=True
        )

    bootstrap = ensure_broker({k: kafka_env[k] for k in ("KAFKA_PORT", "KAFKA_DATA_DIR", "KAFKA_HEAP")})
    topics = topic_env("chaos")
    create_topics(bootstrap, topics)
    svc = start_service(tmp_path, tiny_model_dir, {"SNAP2CAPTION_MAX_NEW_TOKENS": "8"})
    # A consumer that can consume nothing for 90 s exits (status 70) for its supervisor, here
    # the loop below, to restart it: that recovery is part of what is under test.
    env = consumer_env(
        bootstrap,
        svc.url,
        topics,
        SNAP2CAPTION_MAX_IN_FLIGHT=64,
        SNAP2CAPTION_RETRY_LATER_S=2,
        SNAP2CAPTION_STALL_TIMEOUT_S=90,
    )
    log = tmp_path / "consumer.log"
    progress = Progress(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"])
    consumer = None
    kills, exits = 0, Counter()

    def supervise():
        nonlocal consumer
        if consumer.proc.poll() is not None:  # crash-only recovery, as a supervisor would do
            exits[consumer.proc.returncode] += 1
            consumer = ConsumerProcess(env, log)

    try:
        media_ids = [f"chaos-{i:04d}" for i in range(EVENTS)]
        produce(
            bootstrap,
            topics["SNAP2CAPTION_TOPIC_UPLOADED"],
            [upload_event(m, inline((i % 256, i // 256 * 60, 90), (24, 24))) for i, m in enumerate(media_ids)],
        )
        progress.start()
        consumer = ConsumerProcess(env, log)
        for fraction in (0.15, 0.35, 0.55):
            progress.wait_for(int(EVENTS * fraction), 240, f"kill {kills + 1}", supervise)
            consumer.kill()  # SIGKILL: no drain, no commit; an open transaction is left behind
            kills += 1
            consumer = ConsumerProcess(env, log)
        progress.wait_for(int(EVENTS * 0.75), 240, "the broker restart", supervise)
        kafka("stop")
        time.sleep(2)
        kafka("start")
        deadline = time.monotonic() + 300
        while progress.count < EVENTS and time.monotonic() < deadline:
            supervise()
            time.sleep(0.5)
        if progress.count < EVENTS and consumer.proc.poll() is None:
            os.kill(consumer.proc.pid, signal.SIGUSR1)  # its threads' stacks, into the log
            time.sleep(1)
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
    print(
        f"\nchaos: {len(out)} captioned, {len(duplicates)} duplicated, {len(missing)} missing, {len(dlq)} DLQ; "
        f"{kills} SIGKILLs, 1 broker restart, consumer exits by status {dict(exits)}; "
        f"{time.monotonic() - t_start:.0f}s"
    )
    text = log.read_text(errors="replace")
    assert not duplicates and not missing and not dlq, f"{log_summary(text)}\n...\n{text[-4000:]}"
    assert len(out) == EVENTS
