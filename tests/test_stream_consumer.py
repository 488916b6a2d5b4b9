"""`snap2caption consume` end to end on the real broker and the real service (tiny model):
upload events with images from S3 (moto's server), a web server and inline, captioned
exactly once; SIGTERM finishes and commits in-flight work; transient service failures are
retried (pausing the partition when retries run out) and never dead-lettered."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from collections import Counter

import httpx
import pytest

from conftest import png_bytes
from snap2caption_service.core import cloudevents
from stream_support import (  # noqa: F401
    ConsumerProcess,
    LoopbackServer,
    bootstrap,
    consumer_env,
    create_topics,
    data_of,
    headers_dict,
    image_site,
    inline,
    moto_s3,
    produce,
    read_topic,
    topic_env,
    upload_event,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.service]


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _batch_stats(service) -> tuple[float, float]:
    text = httpx.get(service.url + "/metrics", timeout=10).text
    return _metric(text, "snap2caption_model_batch_size_sum"), _metric(text, "snap2caption_model_batch_size_count")


def test_upload_events_from_s3_http_and_inline_are_captioned_exactly_once(
    bootstrap, service, moto_s3, image_site, tmp_path
):
    topics = topic_env("e2e")
    create_topics(bootstrap, topics)
    per_source = 10
    events, sha = [], {}
    for i in range(per_source):
        img = png_bytes((i * 25 % 256, 80, 160), (80 + i, 60))
        uri = moto_s3.put(f"uploads/{i}.png", img)
        events.append(upload_event(f"s3-{i}", {"s3_uri": uri}, tone="funny"))
        sha[f"s3-{i}"] = hashlib.sha256(img).hexdigest()
        img = png_bytes((200, i * 25 % 256, 30), (70, 50 + i))
        image_site.routes[f"/img/{i}.png"] = img
        events.append(upload_event(f"url-{i}", {"url": f"{image_site.url}/img/{i}.png"}, audience="promotional"))
        sha[f"url-{i}"] = hashlib.sha256(img).hexdigest()
        img = png_bytes((30, 30, i * 25 % 256), (64, 64 + i))
        events.append(upload_event(f"inline-{i}", inline((30, 30, i * 25 % 256), (64, 64 + i)), num_hashtags=5))
        sha[f"inline-{i}"] = hashlib.sha256(img).hexdigest()

    env = consumer_env(bootstrap, service.url, topics, SNAP2CAPTION_URL_ALLOWLIST="127.0.0.1", **moto_s3.env)
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    try:
        wait_for(lambda: "consuming" in consumer.log(), 60, "the consumer to start")
        batch_sum0, batch_count0 = _batch_stats(service)
        t0 = time.monotonic()
        sent = produce(bootstrap, topics["SNAP2CAPTION_TOPIC_UPLOADED"], events)
        out = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], len(events), timeout=240, settle=0.5)
        elapsed = time.monotonic() - t0
        assert len(out) == len(events), consumer.log()[-3000:]
        print(f"\n{len(events)} upload events -> captioned in {elapsed:.1f}s ({len(events) / elapsed:.1f} events/s)")

        ids = {cloudevents.from_kafka(v, h).id: k.decode() for k, v, h in events}
        assert Counter(r.key.decode() for r in out) == Counter(k.decode() for k, _, _ in events)
        for record in out:
            ev = cloudevents.from_kafka(record.value, record.headers)
            data = ev.json()
            media_id = record.key.decode()
            assert ev.type == "com.snap2caption.media.captioned" and ev.subject == media_id
            assert data["media_id"] == media_id and data["creator_id"] == "creator-1"
            assert ids[data["source_event_id"]] == media_id
            assert data["image_sha256"] == sha[media_id]
            assert data["caption"] and data["model_version"] and data["request_id"]
            assert set(data["timings"]) >= {"fetch_ms", "caption_ms", "total_ms"}
            if media_id.startswith("inline"):
                assert len(data["hashtags"]) <= 5
        assert {r.partition for r in sent} == {0, 1, 2}  # keyed by media_id across 3 partitions
        assert read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_DLQ"], 0, timeout=3, settle=1) == []

        batch_sum, batch_count = _batch_stats(service)
        mean_batch = (batch_sum - batch_sum0) / max(1.0, batch_count - batch_count0)
        print(f"mean model batch size while consuming: {mean_batch:.1f}")
        assert mean_batch >= 2, "the consumer should keep enough requests in flight for real batches"

        metrics = consumer.metrics()
        assert _metric(metrics, "snap2caption_consumer_events_total", outcome="captioned") == len(events)
        for stage in ("fetch", "caption", "produce"):
            assert _metric(metrics, "snap2caption_consumer_stage_seconds_count", stage=stage) > 0, stage
        wait_for(lambda: "snap2caption_consumer_lag{" in consumer.metrics(), 10, "the lag gauge")
    finally:
        rc = consumer.terminate()
    assert rc == 0, consumer.log()[-3000:]


def test_sigterm_finishes_in_flight_work_and_commits_it(bootstrap, service, tmp_path):
    topics = topic_env("sigterm")
    create_topics(bootstrap, topics)
    events = [upload_event(f"m-{i}", inline((i * 5 % 256, 100, 100))) for i in range(40)]
    env = consumer_env(bootstrap, service.url, topics)
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    produce(bootstrap, topics["SNAP2CAPTION_TOPIC_UPLOADED"], events)
    wait_for(
        lambda: re.search(r"snap2caption_consumer_in_flight [1-9]", _safe_metrics(consumer)), 90, "events in flight"
    )
    assert consumer.terminate() == 0, consumer.log()[-3000:]
    log = consumer.log()
    finishing = int(re.search(r"stopping: finishing (\d+) in-flight", log).group(1))
    done = int(re.search(r"stopped: (\d+) captioned", log).group(1))
    assert finishing > 0 and done > 0
    first = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], done, timeout=30, settle=1)
    assert len(first) == done  # everything it captioned was committed before it exited

    # A restarted instance (same instance id, hence same transactional id) takes the rest.
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    try:
        out = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], len(events), timeout=180, settle=2)
    finally:
        assert consumer.terminate() == 0
    assert sorted(r.key.decode() for r in out) == sorted(k.decode() for k, _, _ in events)


def _safe_metrics(consumer) -> str:
    try:
        return consumer.metrics()
    except httpx.HTTPError:
        return ""


class FlakyProxy(LoopbackServer):
    """Forwards to the service, answering 503 to the first ``failures`` requests."""

    def __init__(self, target: str, failures: int):
        self.failures, self.seen = failures, 0
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    proxy.seen += 1
                    fail = proxy.seen <= proxy.failures
                if fail:
                    status, content = 503, b'{"error": "overloaded", "detail": "try again"}'
                else:
                    resp = httpx.post(
                        target + self.path, content=body, timeout=120, headers={"Content-Type": "application/json"}
                    )
                    status, content = resp.status_code, resp.content
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args):
                pass

        self.start(Handler)


def test_transient_failures_are_retried_then_paused_never_dead_lettered(bootstrap, service, tmp_path):
    topics = topic_env("transient")
    create_topics(bootstrap, topics, partitions=1)
    events = [upload_event(f"t-{i}", inline((i * 40, 10, 10))) for i in range(5)]
    # 2 attempts per round (retries=1) for each of 5 events = 10 failures: every event runs out of
    # retries once, its partition pauses for 2 s, and the second round gets through.
    proxy = FlakyProxy(service.url, failures=10)
    env = consumer_env(bootstrap, proxy.url, topics, SNAP2CAPTION_RETRIES=1, SNAP2CAPTION_RETRY_LATER_S=2)
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    try:
        produce(bootstrap, topics["SNAP2CAPTION_TOPIC_UPLOADED"], events)
        out = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], len(events), timeout=120, settle=1)
        assert sorted(r.key.decode() for r in out) == sorted(k.decode() for k, _, _ in events), consumer.log()[-3000:]
        assert read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_DLQ"], 0, timeout=3, settle=1) == []
        assert "pausing the partition" in consumer.log()
        assert (
            _metric(
                consumer.metrics(),
                "snap2caption_consumer_transient_failures_total",
                reason="overloaded",
                stage="caption",
            )
            == 10
        )
    finally:
        consumer.terminate()
        proxy.close()


def test_an_unreachable_image_host_is_dead_lettered_after_bounded_retries_and_blocks_nothing(
    bootstrap, service, image_site, tmp_path
):
    """Issue 13. Before: every failure of an image host was retried forever, so one dead host held
    its partition (the events behind it were never committed). Now it is tried for
    SNAP2CAPTION_URL_RETRIES more rounds, then dead-lettered as url_unavailable; the events behind
    it on the same partition are captioned. Needs the fetcher to raise UrlUnavailable for an
    image host's 5xx (snap2caption_service/core/fetch.py)."""
    topics = topic_env("deadhost")
    create_topics(bootstrap, topics, partitions=1)
    image_site.routes["/down.png"] = 503
    image_site.routes["/ok.png"] = png_bytes((40, 40, 200))
    dead = upload_event("dead-host", {"url": image_site.url + "/down.png"})
    live = [upload_event(f"live-{i}", inline((i * 50, 200, 10))) for i in range(4)]
    live.append(upload_event("live-url", {"url": image_site.url + "/ok.png"}))
    env = consumer_env(
        bootstrap,
        service.url,
        topics,
        SNAP2CAPTION_URL_ALLOWLIST="127.0.0.1",
        SNAP2CAPTION_RETRIES=1,
        SNAP2CAPTION_RETRY_LATER_S=1,
        SNAP2CAPTION_URL_RETRIES=1,
        SNAP2CAPTION_URL_RETRY_MAX_AGE_S=120,
    )
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    try:
        produce(bootstrap, topics["SNAP2CAPTION_TOPIC_UPLOADED"], [dead, *live])
        out = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], len(live), timeout=120, settle=1)
        dlq = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_DLQ"], 1, timeout=10, settle=1)
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert Counter(r.key.decode() for r in out) == Counter(k.decode() for k, _, _ in live), consumer.log()[-3000:]
    assert [(r.key, headers_dict(r)["dlq_reason"], headers_dict(r)["dlq_stage"]) for r in dlq] == [
        (b"dead-host", "url_unavailable", "fetch")
    ], consumer.log()[-3000:]
    assert "503" in headers_dict(dlq[0])["dlq_detail"]
    assert image_site.hits["/down.png"] == 4  # (1 + retries) attempts x (1 + url_retries) rounds


class CountingProxy(LoopbackServer):
    """Forwards to the service and records the most requests it ever had open at once."""

    def __init__(self, target: str):
        self.open = self.peak = self.total = 0
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the consumer's pooled client expects

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    proxy.open += 1
                    proxy.total += 1
                    proxy.peak = max(proxy.peak, proxy.open)
                try:
                    resp = httpx.post(
                        target + self.path, content=body, timeout=120, headers={"Content-Type": "application/json"}
                    )
                finally:
                    with lock:
                        proxy.open -= 1
                self.send_response(resp.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def log_message(self, *args):
                pass

        self.start(Handler)


def test_the_service_sees_max_in_flight_requests_never_more(bootstrap, service, tmp_path):
    """Backpressure: at most max_in_flight requests reach the service at once, and the consumer
    keeps it that busy (a finished event frees its slot before its transaction commits)."""
    topics = topic_env("inflight")
    create_topics(bootstrap, topics)
    events = [upload_event(f"f-{i}", inline((i * 7 % 256, 60, 200))) for i in range(40)]
    proxy = CountingProxy(service.url)
    env = consumer_env(
        bootstrap,
        proxy.url,
        topics,
        SNAP2CAPTION_MAX_IN_FLIGHT=6,
        SNAP2CAPTION_MAX_PENDING=12,
        SNAP2CAPTION_COMMIT_INTERVAL_MS=1000,
    )
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    try:
        produce(bootstrap, topics["SNAP2CAPTION_TOPIC_UPLOADED"], events)
        out = read_topic(bootstrap, topics["SNAP2CAPTION_TOPIC_CAPTIONED"], len(events), timeout=180, settle=1)
        assert sorted(r.key.decode() for r in out) == sorted(k.decode() for k, _, _ in events)
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
        proxy.close()
    assert proxy.total == len(events)
    assert proxy.peak == 6, f"peak {proxy.peak} requests in flight, max_in_flight 6"


def _hold_offsets_in_an_open_transaction(bootstrap: str, group: str, topic: str, offset: int):
    """Another transactional producer commits ``offset`` for ``group`` inside a transaction it
    leaves open: the group's committed offset is then UNSTABLE_OFFSET_COMMIT for every
    read_committed consumer until that transaction ends (what a killed instance leaves behind)."""
    from kafka import KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    blocker = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"{group}-blocker",
        enable_idempotence=True,
        transaction_timeout_ms=900_000,
    )
    blocker.init_transactions()
    blocker.begin_transaction()
    blocker.send_offsets_to_transaction({TopicPartition(topic, 0): OffsetAndMetadata(offset, "", -1)}, group)
    return blocker


def test_offsets_held_by_an_open_transaction_are_waited_for_and_a_stall_exits_for_a_restart(
    bootstrap, service, tmp_path
):
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    topics = topic_env("unstable")
    create_topics(bootstrap, topics, partitions=1)
    uploaded, captioned = topics["SNAP2CAPTION_TOPIC_UPLOADED"], topics["SNAP2CAPTION_TOPIC_CAPTIONED"]
    produce(bootstrap, uploaded, [upload_event(f"u-{i}", inline((i * 50, 90, 10))) for i in range(4)])
    blocker = _hold_offsets_in_an_open_transaction(bootstrap, topics["SNAP2CAPTION_CONSUMER_GROUP"], uploaded, 0)
    env = consumer_env(bootstrap, service.url, topics, SNAP2CAPTION_STALL_TIMEOUT_S=30)
    consumer = ConsumerProcess(env, tmp_path / "consumer.log")
    try:
        # Waits (kafka-python retries the offset fetch) rather than giving up or guessing an offset ...
        wait_for(lambda: "UnstableOffsetCommitError" in consumer.log(), 90, "the consumer to meet the open transaction")
        time.sleep(1)
        assert consumer.proc.poll() is None and read_topic(bootstrap, captioned, 0, timeout=3, settle=1) == []
        # ... and goes on by itself once the transaction ends.
        blocker.abort_transaction()
        out = read_topic(bootstrap, captioned, 4, timeout=120, settle=1)
        assert sorted(r.key.decode() for r in out) == [f"u-{i}" for i in range(4)]

        # Held for longer than stall_timeout_s: it exits with status 70 for its supervisor to restart it.
        produce(bootstrap, uploaded, [upload_event("u-late", inline())])
        blocker.begin_transaction()
        blocker.send_offsets_to_transaction(
            {TopicPartition(uploaded, 0): OffsetAndMetadata(4, "", -1)}, topics["SNAP2CAPTION_CONSUMER_GROUP"]
        )
        consumer.kill()
        consumer = ConsumerProcess(env, tmp_path / "consumer.log")
        assert consumer.proc.wait(120) == 70, consumer.log()[-3000:]
        assert re.search(
            r"stalled: nothing polled or committed for \d+s while \S+-0: committed offset unreadable "
            r"\(\w+\), end offset 5; exiting with status 70",
            consumer.log(),
        ), consumer.log()[-3000:]
    finally:
        consumer.kill()
        blocker.close(timeout=5)
