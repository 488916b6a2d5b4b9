"""Feedback to the training topic (caption.feedback), shipped from the feedback log.

The service writes each feedback once, to its feedback log (serving/feedback_store.py: one
JSON line per record, fsynced before 202, never rewritten). That log is also the spool: a
background thread here ships it to Kafka with an idempotent producer (acks=all, key =
feedback_id) and records what the broker acknowledged in a cursor beside it. While the broker
is away the backlog simply waits in the log and /feedback stays fast; when it comes back the
backlog goes out in the order it was received, and new feedback queues behind it.

Guarantees:

- Nothing acknowledged to a creator is lost: it is in the log before the 202, and the cursor
  only ever passes records the broker acknowledged (or that were quarantined, below).
- Nothing acknowledged by the broker is sent again: the cursor also remembers records
  acknowledged out of order (after one that failed), so a retry sends only what failed. The
  one window for a duplicate is a crash after the broker acked and before the cursor reached
  the disk; the record key (feedback_id) lets the training side drop it.
- Never stuck: a line that can never be sent (not a feedback record, over
  ``MAX_FEEDBACK_RECORD_BYTES``, refused by the broker as a record) is quarantined: a line
  in ``<log>.quarantine`` (offset, size, reason), a log line, the metric
  ``snap2caption_feedback_quarantined_total{reason}``; the record itself stays in the log.
- Crash-safe: the log is append-only and the cursor is replaced atomically (temporary file,
  fsync, rename, fsync of the folder), so a crash at any step leaves the old cursor or the new
  one, and a fresh Spool sees every unacknowledged record exactly once.
- One publisher per log: the Spool holds an exclusive lock (``<log>.ship.lock``); a second
  process waits ``feedback_lock_timeout_s`` and then fails with ``SpoolLocked``.
- Drained on shutdown: from SIGTERM (``drain_on_sigterm``) or ``close()``, it keeps shipping
  until nothing waits or ``feedback_drain_timeout_s`` passes; what is left goes out on the
  next start.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import EVENT_TYPE_FEEDBACK, MAX_FEEDBACK_RECORD_BYTES, FeedbackRecord
from snap2caption_service.core.files import fsync_dir, lock_exclusive
from stream.settings import FeedbackPublisherSettings

log = logging.getLogger("snap2caption.feedback")
SOURCE = "urn:snap2caption:service:feedback"
# Records acknowledged past one that keeps failing are remembered in the cursor; past this many,
# only the failing ones are retried until they go through (the cursor stays small).
MAX_OUT_OF_ORDER = 10_000
# Broker answers that condemn one record, not the connection: that record is quarantined.
RECORD_ERRORS = ("MessageSizeTooLargeError", "InvalidRecordError", "CorruptRecordError", "RecordListTooLargeError")


class SpoolLocked(RuntimeError):
    """Another process ships this feedback log."""


@lru_cache(maxsize=1)
def _metrics():
    from prometheus_client import Counter

    return Counter(
        "snap2caption_feedback_quarantined_total",
        "Feedback log lines that can never go to the training topic, set aside (reason: why).",
        ["reason"],
    )


@dataclass(frozen=True)
class Entry:
    """One line of the log: bytes [start, end); ``problem`` when it can be judged unsendable unread."""

    start: int
    end: int
    line: bytes
    problem: str | None = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Spool:
    """The shipping side of the feedback log: which of its lines the training topic has.

    Beside the log ``<log>.cursor`` holds ``{"offset": N, "done": [[start, end], ...]}``:
    every line before ``offset`` is shipped (or quarantined), and so are the ``done`` lines
    after it (acknowledged while an earlier one failed).
    """

    def __init__(
        self,
        path: Path,
        fsync: bool = True,
        lock_timeout_s: float = 0.0,
        max_record_bytes: int = MAX_FEEDBACK_RECORD_BYTES,
    ):
        self.path = Path(path)
        self.cursor_path = self.path.with_name(self.path.name + ".cursor")
        self.quarantine_path = self.path.with_name(self.path.name + ".quarantine")
        self.fsync = fsync
        self.max_record_bytes = max_record_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock(self.path.with_name(self.path.name + ".ship.lock"), lock_timeout_s)
        self.offset, self.done = self._read_cursor()

    # --- ownership ------------------------------------------------------------------------
    def _lock(self, lock_path: Path, timeout_s: float) -> int:
        try:
            return lock_exclusive(lock_path, timeout_s, f"the feedback log {self.path} (shipping)")
        except BlockingIOError as exc:
            raise SpoolLocked(f"{exc.strerror}; one publisher per log") from None

    def close(self) -> None:
        """Release the log for another publisher."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- the cursor -----------------------------------------------------------------------
    def has_cursor(self) -> bool:
        return self.cursor_path.exists()

    def _read_cursor(self) -> tuple[int, dict[int, int]]:
        try:
            data = json.loads(self.cursor_path.read_bytes())
            return int(data["offset"]), {int(s): int(e) for s, e in data["done"]}
        except FileNotFoundError:
            return 0, {}
        except (ValueError, KeyError, TypeError) as exc:
            # Replaced atomically, so never torn: this is a file someone else wrote. Starting over
            # would re-send everything; stopping says so.
            raise RuntimeError(f"feedback cursor {self.cursor_path} is unreadable ({exc}); fix or remove it") from None

    def _write_cursor(self) -> None:
        data = json.dumps({"offset": self.offset, "done": sorted(self.done.items())}).encode()
        tmp = self.cursor_path.with_name(self.cursor_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.cursor_path)
        if self.fsync:
            fsync_dir(self.cursor_path.parent)

    def start_at(self, offset: int) -> None:
        """Consider everything before ``offset`` shipped (adopting an older spool, below)."""
        self.offset, self.done = offset, {}
        self._write_cursor()

    # --- reading --------------------------------------------------------------------------
    def pending(self, limit: int = 500) -> list[Entry]:
        """Up to ``limit`` lines not yet shipped, oldest first; an unfinished last line is left
        for later (being written, or cut short by a crash: the log's owner removes it)."""
        horizon = max(self.done) if len(self.done) >= MAX_OUT_OF_ORDER else None
        out: list[Entry] = []
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return out
        with f:
            f.seek(self.offset)
            pos = self.offset
            while len(out) < limit and (horizon is None or pos < horizon):
                raw = f.readline(self.max_record_bytes + 1)
                if not raw.endswith(b"\n"):
                    if len(raw) <= self.max_record_bytes:
                        break  # the end, or an unfinished line
                    end = self._end_of_line(f, pos + len(raw))
                    if end is None:
                        break
                    entry = Entry(pos, end, b"", "too_large")
                else:
                    entry = Entry(pos, pos + len(raw), raw, None if raw.strip() else "empty_line")
                if entry.start not in self.done:
                    out.append(entry)
                pos = entry.end
        return out

    @staticmethod
    def _end_of_line(f, pos: int) -> int | None:
        """Skip the rest of an over-long line without holding it: its end offset, or None if unfinished."""
        while chunk := f.read(65536):
            if b"\n" in chunk:
                end = pos + chunk.index(b"\n") + 1
                f.seek(end)
                return end
            pos += len(chunk)
        return None

    def depth(self) -> int:
        """Bytes of the log not yet shipped."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        return max(0, size - self.offset - sum(e - s for s, e in self.done.items()))

    # --- acknowledging ----------------------------------------------------------------------
    def ack(self, entries: list[Entry]) -> None:
        """These lines are on the topic (or set aside): never hand them out again."""
        if not entries:
            return
        for entry in entries:
            if entry.start >= self.offset:
                self.done[entry.start] = entry.end
        while self.offset in self.done:
            self.offset = self.done.pop(self.offset)
        self._write_cursor()

    def quarantine(self, entry: Entry, reason: str, feedback_id: str | None = None) -> None:
        """Set aside a line that can never be sent; it stays in the log at its offset."""
        note = {
            "offset": entry.start,
            "bytes": entry.end - entry.start,
            "reason": reason,
            "feedback_id": feedback_id,
            "quarantined_at": datetime.now(UTC).isoformat(),
        }
        try:
            fd = os.open(self.quarantine_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                _write_all(fd, (json.dumps(note) + "\n").encode())
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # a full disk: the log itself still holds the line at its offset
            log.error("could not note the quarantined line in %s: %s", self.quarantine_path, exc)
        _metrics().labels(reason).inc()
        log.error(
            "feedback log %s: the line at byte %d (%d bytes, feedback_id %s) can never be sent (%s); "
            "quarantined in %s and skipped",
            self.path,
            entry.start,
            entry.end - entry.start,
            feedback_id or "unknown",
            reason,
            self.quarantine_path,
        )
        self.ack([entry])


def adopt_legacy_spool(spool: Spool, legacy: Path) -> None:
    """Earlier versions shipped from a second copy of each record, a spool file of their own
    (truncated once sent). On the first start with a log cursor, resume from the first record
    that spool had not shipped (all its records are in the log too), then put it aside."""
    if spool.has_cursor() or not legacy.is_file():
        return
    try:
        sent_to = int(legacy.with_name(legacy.name + ".cursor").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        sent_to = 0
    waiting = set()
    with open(legacy, "rb") as f:
        f.seek(sent_to)
        for raw in f:
            try:
                waiting.add(json.loads(raw)["feedback_id"])
            except (ValueError, KeyError, TypeError):
                continue
    start = None
    pos = 0
    if spool.path.is_file():
        with open(spool.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                if start is None and waiting:
                    try:
                        if json.loads(raw).get("feedback_id") in waiting:
                            start = pos
                    except (ValueError, AttributeError):
                        pass
                pos += len(raw)
    spool.start_at(pos if start is None else start)
    os.replace(legacy, legacy.with_name(legacy.name + ".migrated"))
    log.info(
        "feedback: adopted the old spool %s (%d records unsent); shipping the log from byte %d",
        legacy,
        len(waiting),
        spool.offset,
    )


class FeedbackPublisher:
    def __init__(
        self,
        settings: FeedbackPublisherSettings,
        log_path: Path,
        fsync: bool = True,
        legacy_spool: Path | None = None,
    ):
        self.s = settings
        self.spool = Spool(log_path, fsync=fsync, lock_timeout_s=settings.feedback_lock_timeout_s)
        if legacy_spool is not None:
            adopt_legacy_spool(self.spool, legacy_spool)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.deadline = float("inf")
        self.producer = None
        self.topic_ready = False
        self.thread = threading.Thread(target=self._run, name="feedback-publisher", daemon=True)
        self.thread.start()

    @classmethod
    def from_env(cls, log_path: Path, data_dir: Path, fsync: bool = True) -> FeedbackPublisher | None:
        """A publisher of the feedback log when Kafka is configured (KAFKA_BOOTSTRAP_SERVERS set), else None."""
        settings = FeedbackPublisherSettings()
        if not settings.kafka_configured:
            return None
        legacy = Path(settings.feedback_spool or Path(data_dir) / "feedback-spool.jsonl")
        return cls(settings, Path(log_path), fsync, legacy_spool=legacy)

    def notify(self) -> None:
        """A record was appended to the log: ship it now rather than at the next poll."""
        self.wake.set()

    def begin_drain(self, timeout: float | None = None) -> None:
        """From now on ship what is waiting for at most ``timeout`` seconds (default
        feedback_drain_timeout_s), then stop; returns at once."""
        budget = self.s.feedback_drain_timeout_s if timeout is None else timeout
        self.deadline = min(self.deadline, time.monotonic() + budget)
        self.stopping.set()
        self.wake.set()

    def drain_on_sigterm(self) -> None:
        """Begin draining the moment SIGTERM arrives, then run the handler that was there
        (uvicorn's, in the service). The service's on_shutdown hook (close) runs only after
        every request task has ended, which a stuck request can put off until the SIGKILL; the
        drain does not wait for it. Only from the main thread (elsewhere it does nothing)."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            self.begin_drain()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # the default action: drain, then terminate
                self.close()
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, on_sigterm)

    def close(self, timeout: float | None = None) -> None:
        """Ship what is waiting for at most ``timeout`` seconds (default feedback_drain_timeout_s),
        then stop; what is left stays in the log for the next start."""
        self.begin_drain(timeout)
        self.thread.join(max(0.0, self.deadline - time.monotonic()) + 0.5)
        if self.producer is not None:
            self.producer.close(timeout=max(0.0, self.deadline - time.monotonic()))
        if not self.thread.is_alive():
            self.spool.close()

    # -- the shipping thread --------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while not (self.stopping.is_set() and time.monotonic() >= self.deadline):
            try:
                handled = self._ship_once()
                backoff = 0.5
                if not handled:
                    if self.stopping.is_set():
                        break  # drained
                    self.wake.wait(1.0)
                    self.wake.clear()
            except Exception as exc:  # broker away, metadata timeouts: the log keeps everything
                log.warning(
                    "feedback to Kafka failed (%s: %s); %d bytes waiting, retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    self.spool.depth(),
                    backoff,
                )
                if self.stopping.is_set():  # draining: retry until the deadline
                    time.sleep(max(0.0, min(backoff, self.deadline - time.monotonic())))
                else:
                    self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        left = self.spool.depth()
        (log.warning if left else log.info)(
            "feedback publisher stopped; %d bytes of the log not yet on %s (sent on the next start)",
            left,
            self.s.topic_feedback,
        )

    def _connect(self):
        """The producer, the topic created if missing."""
        if self.producer is None:
            from kafka import KafkaProducer

            self.producer = KafkaProducer(
                bootstrap_servers=self.s.bootstrap,
                client_id="snap2caption-feedback",
                acks="all",
                enable_idempotence=True,
                max_in_flight_requests_per_connection=5,
                linger_ms=5,
                max_block_ms=5_000,
                request_timeout_ms=10_000,
                delivery_timeout_ms=60_000,
            )
        if not self.topic_ready:
            from stream.topics import ensure_topics

            ensure_topics(self.s, [self.s.topic_feedback])
            self.topic_ready = True
        return self.producer

    def _await_answers(self, producer, futures) -> None:
        """Flush until every send is answered, for at most a minute (the delivery timeout) and
        never past the drain deadline: a flush is waited on in slices so SIGTERM cuts it short."""
        give_up = time.monotonic() + 60.0
        while not all(f.is_done for f in futures):
            left = min(give_up, self.deadline) - time.monotonic()
            if left <= 0:
                return  # what was not answered stays waiting in the log
            try:
                producer.flush(timeout=min(1.0, left))
            except Exception:  # noqa: BLE001 - KafkaTimeoutError: answered or not, the futures tell
                pass

    def _ship_once(self) -> int:
        """Send the oldest waiting lines; returns how many were settled (acknowledged or
        quarantined); raises the first error that leaves some of them waiting."""
        batch = self.spool.pending(self.s.feedback_batch_records)
        if not batch:
            return 0
        producer = self._connect()
        sent, error = [], None
        for entry in batch:
            if entry.problem:
                self.spool.quarantine(entry, entry.problem)
                continue
            try:
                record = FeedbackRecord.model_validate_json(entry.line)
            except ValueError:
                self.spool.quarantine(entry, "not_a_feedback_record")
                continue
            event = cloudevents.new_event(
                EVENT_TYPE_FEEDBACK, SOURCE, record, subject=record.request_id, id=record.feedback_id
            )
            value, headers = cloudevents.to_kafka(event)
            try:
                future = producer.send(
                    self.s.topic_feedback, key=record.feedback_id.encode(), value=value, headers=headers
                )
            except Exception as exc:
                if type(exc).__name__ in RECORD_ERRORS:
                    self.spool.quarantine(entry, type(exc).__name__, record.feedback_id)
                    continue
                error = exc  # the connection, not the record: the rest waits for the retry
                break
            sent.append((entry, record.feedback_id, future))
        self._await_answers(producer, [future for _, _, future in sent])
        acked = []
        for entry, feedback_id, future in sent:
            if future.succeeded():
                acked.append(entry)
            elif future.failed() and type(future.exception).__name__ in RECORD_ERRORS:
                self.spool.quarantine(entry, type(future.exception).__name__, feedback_id)
            else:
                error = error or future.exception or TimeoutError("not acknowledged in time")
        self.spool.ack(acked)
        if error is not None:
            raise error
        return len(batch)
