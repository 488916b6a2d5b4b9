"""Helpers and fixtures for the stream (Kafka) tests: the real broker, a real S3 API server
(moto's standalone server on loopback), a local image web server, and the consumer run as
the real ``snap2caption consume`` process.

Test modules import the fixtures they use by name (``from stream_support import ...``).
"""

from __future__ import annotations

import atexit
import base64
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import REPO, free_port, png_bytes

KAFKA_SH = REPO / "infra" / "kafka.sh"
START_TIMEOUT_S = 600  # a cold start downloads Kafka's jars through Maven first

# Which broker the tests use: SNAP2CAPTION_KAFKA=auto (default: KAFKA_BOOTSTRAP_SERVERS if set,
# else infra/kafka.sh), script (always infra/kafka.sh) or testcontainers (a Kafka container
# through a Docker engine; the image is SNAP2CAPTION_KAFKA_IMAGE).
BROKER_CHOICE_ENV = "SNAP2CAPTION_KAFKA"
BROKER_CHOICES = ("auto", "script", "testcontainers")
KAFKA_IMAGE_ENV = "SNAP2CAPTION_KAFKA_IMAGE"
DEFAULT_KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"  # Kafka 3.9 in KRaft mode
_container = None  # the one Kafka container of this test process, when testcontainers is chosen


class BrokerError(RuntimeError):
    """No broker as configured; the message says what to change."""


def broker_source(environ) -> str:
    """'external' (KAFKA_BOOTSTRAP_SERVERS), 'script' (infra/kafka.sh) or 'testcontainers'."""
    choice = environ.get(BROKER_CHOICE_ENV, "").strip().lower() or "auto"
    if choice not in BROKER_CHOICES:
        raise BrokerError(f"{BROKER_CHOICE_ENV}={choice!r}: expected one of {', '.join(BROKER_CHOICES)}")
    if choice == "auto":
        return "external" if environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() else "script"
    return choice  # an explicit choice wins over an exported KAFKA_BOOTSTRAP_SERVERS


def start_kafka_container(image: str | None = None, timeout: int = 180) -> str:
    """Start (once per process) testcontainers' Kafka module in KRaft mode; returns host:port.
    Raises BrokerError naming the cause when there is no Docker engine or the broker fails."""
    global _container
    if _container is not None:
        return _container.get_bootstrap_server()
    image = image or os.environ.get(KAFKA_IMAGE_ENV) or DEFAULT_KAFKA_IMAGE
    from docker.errors import DockerException

    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.10 keeps it at the old place
        from testcontainers.kafka import KafkaContainer
    try:
        container = KafkaContainer(image).with_kraft()
        # The module leaves these at Kafka's defaults (3 and 2), which a single broker cannot
        # satisfy: transactional producers would never find their coordinator.
        container.with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        container.with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        container.start(timeout=timeout)
    except DockerException as exc:
        raise BrokerError(
            f"{BROKER_CHOICE_ENV}=testcontainers needs a Docker engine, and none answered "
            f"(DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {exc}. Start Docker, or unset "
            f"{BROKER_CHOICE_ENV} to use infra/kafka.sh, or set KAFKA_BOOTSTRAP_SERVERS."
        ) from None
    except Exception as exc:
        raise BrokerError(f"the Kafka container ({image}) did not start: {type(exc).__name__}: {exc}") from None
    _container = container
    atexit.register(container.stop)
    return container.get_bootstrap_server()


def run_kafka_script(env: dict | None = None) -> str:
    """infra/kafka.sh start (a no-op when its broker already runs); returns host:port."""
    try:
        proc = subprocess.run(
            ["bash", str(KAFKA_SH), "start"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"infra/kafka.sh start timed out\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}") from None
    match = re.search(r"^KAFKA_BOOTSTRAP_SERVERS=(\S+)$", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise BrokerError(
            f"infra/kafka.sh start failed (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return match.group(1)


def ensure_broker(env: dict | None = None) -> str:
    """The tests' broker (see broker_source); fails the test, never skips it, without one.

    ``env`` (KAFKA_PORT, KAFKA_DATA_DIR, ...) asks for a broker of the test's own from
    infra/kafka.sh, whatever is configured: the tests that stop and restart their broker
    (chaos, feedback spool) need one they control."""
    try:
        if env is not None:
            return run_kafka_script(env)
        source = broker_source(os.environ)
        if source == "external":
            return os.environ["KAFKA_BOOTSTRAP_SERVERS"].strip()
        if source == "testcontainers":
            return start_kafka_container()
        return run_kafka_script()
    except BrokerError as exc:
        error = exc
    pytest.fail(f"no Kafka broker: {error}", pytrace=False)  # outside `except`: one message, not two


@pytest.fixture(scope="session")
def bootstrap() -> str:
    return ensure_broker()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topics(bootstrap: str, topics: dict, partitions: int = 3) -> None:
    """Create the test's topics up front, so producing never auto-creates them with 1 partition."""
    from stream.settings import StreamSettings
    from stream.topics import ensure_topics

    settings = StreamSettings(kafka_bootstrap_servers=bootstrap, topic_partitions=partitions)
    ensure_topics(settings, [v for k, v in topics.items() if k.startswith("SNAP2CAPTION_TOPIC_")])


def topic_env(name: str) -> dict[str, str]:
    """Per-test topic names, consumer group and instance id, so tests never see each other."""
    tag = unique(name)
    return {
        "SNAP2CAPTION_TOPIC_UPLOADED": f"{tag}.uploaded",
        "SNAP2CAPTION_TOPIC_CAPTIONED": f"{tag}.captioned",
        "SNAP2CAPTION_TOPIC_DLQ": f"{tag}.uploaded.dlq",
        "SNAP2CAPTION_TOPIC_FEEDBACK": f"{tag}.feedback",
        "SNAP2CAPTION_CONSUMER_GROUP": f"{tag}-group",
        "SNAP2CAPTION_INSTANCE_ID": "consumer-0",
    }


# --- S3: moto's standalone server on loopback --------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    proc: subprocess.Popen

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def put(self, key: str, data: bytes, bucket: str | None = None) -> str:
        self.client().put_object(Bucket=bucket or self.bucket, Key=key, Body=data)
        return f"s3://{bucket or self.bucket}/{key}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "SNAP2CAPTION_S3_BUCKETS": self.bucket,
        }


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(endpoint + "/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"moto server did not start (exit {proc.poll()})")
            time.sleep(0.2)
    server = S3Server(endpoint, "snap2caption-uploads", proc)
    server.client().create_bucket(Bucket=server.bucket)
    server.client().create_bucket(Bucket="someone-elses-bucket")
    yield server
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


# --- a local web server for url images ---------------------------------------------------


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 with a free port, for test doubles."""

    def start(self, handler) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ImageSite(LoopbackServer):
    """Serves ``routes``: path -> bytes (200), ("redirect", location), ("slow", seconds, bytes),
    or an int status. ``hosts`` records the Host header of every request."""

    def __init__(self):
        self.routes: dict[str, object] = {}
        self.hits: dict[str, int] = {}
        self.hosts: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                site.hits[self.path] = site.hits.get(self.path, 0) + 1
                site.hosts.append(self.headers.get("Host", ""))
                route = site.routes.get(self.path, 404)
                if isinstance(route, tuple) and route[0] == "slow":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(route[2])))
                    self.end_headers()
                    try:
                        for i in range(len(route[2])):
                            time.sleep(route[1] / len(route[2]))
                            self.wfile.write(route[2][i : i + 1])
                            self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                elif isinstance(route, tuple) and route[0] == "redirect":
                    self.send_response(302)
                    self.send_header("Location", route[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif isinstance(route, int):
                    self.send_response(route)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(route)))
                    self.end_headers()
                    self.wfile.write(route)

            def log_message(self, *args):
                pass

        self.start(Handler)


@pytest.fixture
def image_site():
    site = ImageSite()
    yield site
    site.close()


# --- settings ----------------------------------------------------------------------------


def settings(**kw):
    """StreamSettings from these values, with no .env file read: for the unit tests of the
    fetcher, the service client and the consumer."""
    from stream.settings import StreamSettings

    return StreamSettings(_env_file=None, **kw)


# --- events ------------------------------------------------------------------------------


def upload_event(media_id: str, image: dict, **extra) -> tuple[bytes, bytes, list]:
    """(key, value, headers) of a media.uploaded record in CloudEvents binary mode."""
    from snap2caption_service.core import cloudevents
    from snap2caption_service.core.contracts import EVENT_TYPE_UPLOADED

    data = {
        "media_id": media_id,
        "creator_id": "creator-1",
        "image": image,
        "uploaded_at": cloudevents.now_rfc3339(),
        **extra,
    }
    event = cloudevents.new_event(EVENT_TYPE_UPLOADED, "urn:test:uploader", data, subject=media_id)
    value, headers = cloudevents.to_kafka(event)
    return media_id.encode(), value, headers


def inline(color=(10, 200, 30), size=(64, 48)) -> dict:
    return {"inline_base64": base64.b64encode(png_bytes(color, size)).decode()}


def produce(bootstrap: str, topic: str, records: list[tuple]) -> list:
    """Send (key, value, headers) records; returns their RecordMetadata (partition, offset)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    try:
        futures = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in records]
        producer.flush()
        return [f.get(30) for f in futures]
    finally:
        producer.close()


def read_topic(
    bootstrap: str,
    topic: str,
    expect: int,
    timeout: float = 120,
    settle: float = 2.0,
    isolation_level: str = "read_committed",
) -> list:
    """Every record of ``topic`` from the beginning, until ``expect`` arrived and ``settle`` s of quiet."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
    )
    try:
        deadline = time.monotonic() + timeout
        while not consumer.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                return []
            time.sleep(0.2)
        from kafka import TopicPartition

        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
        consumer.seek_to_beginning()
        out, quiet_since = [], None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for recs in batch.values():
                out.extend(recs)
            if len(out) >= expect:
                if batch:
                    quiet_since = time.monotonic()
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    break
        return out
    finally:
        consumer.close()


def headers_dict(record) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in record.headers or []}


def data_of(record) -> dict:
    return json.loads(record.value)


# --- the consumer process ----------------------------------------------------------------


class ConsumerProcess:
    def __init__(self, env: dict, log_path: Path):
        self.env, self.log_path = env, log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snap2caption_service", "consume"],
            cwd=REPO,
            env=env,
            stdout=log_path.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"consumer did not exit on SIGTERM:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.env['SNAP2CAPTION_METRICS_PORT']}/metrics", timeout=5).text


def consumer_env(bootstrap: str, service_url: str, topics: dict, **extra) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SNAP2CAPTION_ENV_FILE": "/nonexistent",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SNAP2CAPTION_SERVICE_URL": service_url,
        "SNAP2CAPTION_METRICS_PORT": str(free_port()),
        "SNAP2CAPTION_METRICS_HOST": "127.0.0.1",
        "SNAP2CAPTION_MAX_IN_FLIGHT": "32",
        "SNAP2CAPTION_RETRY_BACKOFF_MS": "50",
        "SNAP2CAPTION_TOPIC_PARTITIONS": "3",
        "SNAP2CAPTION_SESSION_TIMEOUT_MS": "10000",
        **topics,
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port_pair() -> int:
    """A port whose successor is free too (a broker and its KRaft controller)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")
