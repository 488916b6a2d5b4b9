"""End-to-end check of the Kafka broker the stream pipeline relies on.

Uses the broker named by KAFKA_BOOTSTRAP_SERVERS when set; otherwise starts
one with infra/kafka.sh (single-node KRaft, jars cached under
$SNAP2CAPTION_CACHE/kafka). If that script fails the test FAILS with its
output: a missing broker is a broken environment, not a reason to skip.

A broker started here is left running on purpose: the next test run (and
other Kafka tests) reuse it in well under a second, and `infra/kafka.sh start`
is idempotent. Stop it with `infra/kafka.sh stop`. Every test uses its own
uniquely named topics and transactional ids, so reuse never mixes data.

Also here, without a broker (so not marked kafka): which broker the stream tests
use (tests/stream_support.py, SNAP2CAPTION_KAFKA), and how they fail when the
chosen one cannot start.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO_ROOT / "infra" / "kafka.sh"
# A cold start downloads ~45 MB of jars through Maven before the JVM starts.
START_TIMEOUT_S = 600
READ_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def bootstrap_servers() -> str:
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if from_env:
        return from_env
    try:
        proc = subprocess.run(
            ["bash", str(KAFKA_SH), "start"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"infra/kafka.sh start timed out after {START_TIMEOUT_S}s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}"
        )
    match = re.search(r"^KAFKA_BOOTSTRAP_SERVERS=(\S+)$", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        pytest.fail(
            f"infra/kafka.sh start failed (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return match.group(1)


def _create_topic(bootstrap: str) -> str:
    topic = f"test-kafka-broker-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-kafka-broker-admin")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    return topic


def _transactional_producer(bootstrap: str) -> KafkaProducer:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"test-kafka-broker-{uuid.uuid4().hex[:12]}",
        enable_idempotence=True,
        acks="all",
        max_block_ms=60_000,
    )
    # The first transactional producer on a fresh broker makes it create
    # __transaction_state, which is what this call waits for.
    producer.init_transactions()
    return producer


def _read_all(bootstrap: str, topic: str, isolation_level: str, expect: int) -> list[bytes]:
    """Read the single partition from the start until `expect` records arrive,
    then keep polling briefly so extra (e.g. aborted) records would show up."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        settle_until = None
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
            if len(values) >= expect:
                settle_until = settle_until or time.monotonic() + 2
                if time.monotonic() >= settle_until:
                    break
        return values
    finally:
        consumer.close()


@pytest.mark.kafka
def test_transactional_produce_and_read_committed(bootstrap_servers: str) -> None:
    topic = _create_topic(bootstrap_servers)
    producer = _transactional_producer(bootstrap_servers)
    try:
        producer.begin_transaction()
        for i in range(3):
            producer.send(topic, key=b"k", value=f"committed-{i}".encode())
        producer.commit_transaction()
    finally:
        producer.close()

    got = _read_all(bootstrap_servers, topic, "read_committed", expect=3)
    assert got == [b"committed-0", b"committed-1", b"committed-2"]


@pytest.mark.kafka
def test_aborted_transaction_invisible_to_read_committed(bootstrap_servers: str) -> None:
    topic = _create_topic(bootstrap_servers)
    producer = _transactional_producer(bootstrap_servers)
    try:
        producer.begin_transaction()
        for i in range(2):
            producer.send(topic, value=f"aborted-{i}".encode())
        # Make sure the records really reach the log before the abort, so the
        # test proves filtering rather than "never written".
        producer.flush()
        producer.abort_transaction()

        producer.begin_transaction()
        producer.send(topic, value=b"kept")
        producer.commit_transaction()
    finally:
        producer.close()

    assert _read_all(bootstrap_servers, topic, "read_committed", expect=1) == [b"kept"]
    # Sanity check of the check: the aborted records are in the log.
    uncommitted = _read_all(bootstrap_servers, topic, "read_uncommitted", expect=3)
    assert uncommitted == [b"aborted-0", b"aborted-1", b"kept"]


@pytest.mark.kafka
def test_storage_formats_with_a_cluster_id_that_starts_with_a_dash(tmp_path):
    """One random cluster id in 64 begins with '-'; the storage tool must not read it as an
    option (it did once, failing a CI run)."""
    from stream_support import free_port_pair

    port = free_port_pair()  # port + 1 was taken unchecked once: the controller could not bind
    env = {
        **os.environ,
        "KAFKA_DATA_DIR": str(tmp_path / "kafka"),
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(port + 1),
        "KAFKA_CLUSTER_ID": "-_ijx7MjssWeUGnarWCXyQ",
    }
    try:
        proc = subprocess.run(
            ["bash", str(KAFKA_SH), "start"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        meta = next((tmp_path / "kafka").rglob("meta.properties")).read_text()
        assert "cluster.id=-_ijx7MjssWeUGnarWCXyQ" in meta
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "stop"], capture_output=True, timeout=120, env=env)


# --- which broker the tests use (tests/stream_support.py) --------------------------------


@pytest.mark.parametrize(
    "environ,source",
    [
        ({}, "script"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"}, "external"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "  "}, "script"),
        ({"SNAP2CAPTION_KAFKA": "auto", "KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}, "external"),
        ({"SNAP2CAPTION_KAFKA": "script", "KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}, "script"),
        ({"SNAP2CAPTION_KAFKA": "testcontainers"}, "testcontainers"),
        ({"SNAP2CAPTION_KAFKA": " TestContainers ", "KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}, "testcontainers"),
    ],
)
def test_broker_selection(environ, source):
    from stream_support import broker_source

    assert broker_source(environ) == source


def test_an_unknown_broker_choice_is_an_error():
    from stream_support import BrokerError, broker_source

    with pytest.raises(BrokerError, match="SNAP2CAPTION_KAFKA='docker'.*auto, script, testcontainers"):
        broker_source({"SNAP2CAPTION_KAFKA": "docker"})


def test_testcontainers_without_a_docker_engine_fails_the_kafka_tests_with_a_clear_message(tmp_path):
    """Selected but unusable, the testcontainers broker fails the tests that need a broker
    (never skips them), and says why and what to do instead."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "test_needs_broker.py").write_text(
        "from stream_support import bootstrap  # noqa: F401\n\n"
        "def test_needs_a_broker(bootstrap):\n    assert bootstrap\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
        "SNAP2CAPTION_KAFKA": "testcontainers",
        # No Docker engine here; pointing at a socket that cannot exist keeps the test
        # meaningful on a machine that has one.
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rA",
            "-q",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_needs_broker.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 error" in out and "skipped" not in out, out
    assert "no Kafka broker: SNAP2CAPTION_KAFKA=testcontainers needs a Docker engine" in out, out
    assert "unset SNAP2CAPTION_KAFKA to use infra/kafka.sh" in out, out
