"""Feedback to the training topic (caption.feedback), through a durable local spool.

``publish`` appends the record to a spool file (fsynced) and returns at once; a background
thread ships the spool to Kafka in order with an idempotent producer (acks=all, key =
feedback_id) and moves a durable cursor past what the broker acknowledged. While the broker
is away the spool simply grows, and /feedback stays fast; when the broker comes back the
backlog is replayed in the order it was received, and new feedback queues behind it.

Guarantees: nothing acknowledged to a creator is lost (the spool is on disk first), order
is the spool's order, and producer retries are deduplicated by the broker (idempotence).
The one window for a duplicate is a process crash after the broker acked a batch and before
the cursor reached the disk; the record key (feedback_id) lets the training side, or a
compacted topic, drop that duplicate.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import EVENT_TYPE_FEEDBACK, FeedbackRecord
from stream.settings import FeedbackPublisherSettings

log = logging.getLogger("snap2caption.feedback")
SOURCE = "urn:snap2caption:service:feedback"


class Spool:
    """Append-only JSON lines plus a cursor file: the byte offset of the first unsent line."""

    def __init__(self, path: Path, fsync: bool = True):
        self.path = Path(path)
        self.cursor_path = self.path.with_name(self.path.name + ".cursor")
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)

    def _locked(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # also excludes other worker processes
        return fd

    def append(self, line: str) -> None:
        fd = self._locked()
        try:
            os.write(fd, (line.rstrip("\n") + "\n").encode())
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def cursor(self) -> int:
        try:
            return int(self.cursor_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_cursor(self, offset: int) -> None:
        tmp = self.cursor_path.with_name(self.cursor_path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(offset))
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.cursor_path)

    def pending(self, limit: int = 500) -> list[tuple[int, str]]:
        """Up to ``limit`` unsent (end offset, line) pairs, oldest first."""
        start = self.cursor()
        out = []
        with open(self.path, "rb") as f:
            f.seek(start)
            pos = start
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a line still being written
                pos += len(raw)
                if raw.strip():
                    out.append((pos, raw.decode()))
                if len(out) >= limit:
                    break
        return out

    def advance(self, offset: int) -> None:
        """Everything before ``offset`` is acknowledged; empty the spool once all of it is."""
        fd = self._locked()
        try:
            if os.fstat(fd).st_size == offset:
                os.ftruncate(fd, 0)
                if self.fsync:
                    os.fsync(fd)
                self._write_cursor(0)
            else:
                self._write_cursor(offset)
        finally:
            os.close(fd)

    def depth(self) -> int:
        return max(0, self.path.stat().st_size - self.cursor())


class FeedbackPublisher:
    def __init__(self, settings: FeedbackPublisherSettings, spool_path: Path, fsync: bool = True):
        self.s = settings
        self.spool = Spool(spool_path, fsync=fsync)
        self.wake = threading.Event()
        self.closed = threading.Event()
        self.producer = None
        self.topic_ready = False
        self.thread = threading.Thread(target=self._run, name="feedback-publisher", daemon=True)
        self.thread.start()

    @classmethod
    def from_env(cls, data_dir: Path, fsync: bool = True) -> FeedbackPublisher | None:
        """A publisher when Kafka is configured (KAFKA_BOOTSTRAP_SERVERS set), else None."""
        settings = FeedbackPublisherSettings()
        if not settings.kafka_configured:
            return None
        return cls(settings, Path(settings.feedback_spool or Path(data_dir) / "feedback-spool.jsonl"), fsync)

    def publish(self, record: FeedbackRecord) -> None:
        """Durably queue one feedback for the training topic (returns without waiting for Kafka)."""
        self.spool.append(record.model_dump_json())
        self.wake.set()

    def close(self, timeout: float = 10.0) -> None:
        self.closed.set()
        self.wake.set()
        self.thread.join(timeout)
        if self.producer is not None:
            self.producer.close(timeout=5)

    # -- the shipping thread --------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while not self.closed.is_set():
            try:
                sent = self._ship_once()
                backoff = 0.5
                if not sent:
                    self.wake.wait(1.0)
                    self.wake.clear()
            except Exception as exc:  # broker away, metadata timeouts: the spool keeps everything
                log.warning(
                    "feedback to Kafka failed (%s: %s); %d bytes spooled, retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    self.spool.depth(),
                    backoff,
                )
                self.closed.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _ensure_producer(self):
        if self.producer is None:
            from kafka import KafkaProducer

            self.producer = KafkaProducer(
                bootstrap_servers=self.s.bootstrap,
                client_id="snap2caption-feedback",
                acks="all",
                enable_idempotence=True,
                max_in_flight_requests_per_connection=5,
                linger_ms=5,
                max_block_ms=10_000,
                request_timeout_ms=10_000,
                delivery_timeout_ms=60_000,
            )
        if not self.topic_ready:
            from stream.topics import ensure_topics

            ensure_topics(self.s, [self.s.topic_feedback])
            self.topic_ready = True
        return self.producer

    def _ship_once(self) -> int:
        """Send the oldest spooled records in order; returns how many were acknowledged."""
        batch = self.spool.pending()
        if not batch:
            return 0
        producer = self._ensure_producer()
        futures = []
        for end, line in batch:
            record = FeedbackRecord.model_validate_json(line)
            event = cloudevents.new_event(
                EVENT_TYPE_FEEDBACK, SOURCE, record, subject=record.request_id, id=record.feedback_id
            )
            value, headers = cloudevents.to_kafka(event)
            futures.append(
                (
                    end,
                    producer.send(self.s.topic_feedback, key=record.feedback_id.encode(), value=value, headers=headers),
                )
            )
        producer.flush()
        acked_to, error = None, None
        for end, future in futures:
            if not future.succeeded():
                error = future.exception or TimeoutError("not acknowledged")
                break  # idempotent, ordered: nothing after a failure was written either
            acked_to = end
        if acked_to is not None:
            self.spool.advance(acked_to)
        if error is not None:
            raise error
        return len(futures)
