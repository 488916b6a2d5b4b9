"""`snap2caption consume`: upload events in; captioned events and dead letters out, exactly once.

The loop, as ``Consumer.run`` spells it out:

    poll      while fewer than max_in_flight records are being captioned and fewer than
              max_pending are uncommitted; otherwise the partitions are paused (backpressure)
    submit    each record to the worker pool: decode -> validate -> fetch -> POST /generate-caption
              (transient failures retried with bounded backoff inside the worker)
    collect   finished records; per partition only the finished *prefix* in offset order
    commit    BEGIN
                produce a captioned event (key = media_id) or a DLQ record for each of them
                send the consumed offsets to the transaction
              COMMIT     <- outputs and offsets become visible together, or neither does

Readers of media.captioned use isolation_level=read_committed. A crash anywhere before
COMMIT aborts the transaction (the restarted instance, sharing the transactional id, fences
and aborts it) and the records are consumed again; a crash after COMMIT finds their offsets
committed. Many workers keep many requests in flight, so the service's adaptive batcher
forms real batches. A finished record gives its worker back at once, not when its
transaction commits: the service sees max_in_flight requests all the time, as it would from
that many HTTP clients, while finished records wait (up to max_pending) for the next commit.

Poison events (the event's fault) are dead-lettered and committed like any result; so is
whatever else fails inside the handler, building the output event included (``internal_error``
with the step that failed): one event never stops the loop. Transient failures of our own
service, S3 and the broker are never dead-lettered: when the retries run out the record stays
uncommitted, its partition pauses for ``retry_later_s``, and the record is tried again. An image
host that does not answer (``UrlUnavailable``) is somebody else's outage: after ``url_retries``
such rounds, or once the event is ``url_retry_max_age_s`` old, it is dead-lettered as
``url_unavailable``. Every result fits: a record over ``produce_max_bytes`` (or one the broker
refuses for its size) goes out smaller, a captioned event as a dead letter, a dead letter as a
stub naming the original (topic, partition, offset, sha256), so one unproducible record never
blocks the transaction that carries every partition.
SIGTERM: stop polling, let in-flight work finish, commit it, exit 0.

While another transaction holds this group's offsets (KIP-447: UNSTABLE_OFFSET_COMMIT, e.g. a
killed instance's transaction before its successor's init aborts it, or a broker restart
mid-commit), kafka-python retries the offset fetch inside poll() and nothing can be consumed;
the loop just goes on polling. Should events wait on its partitions for stall_timeout_s
with nothing polled and nothing in flight, or the oldest uncommitted record be older than
stall_timeout_s (unless it waits out an outage of ours), the consumer exits with status 70
(EXIT_STALLED) for its supervisor to restart it: crash-only recovery, and a restart's
InitProducerId aborts whatever transaction of this instance was still open.

A commit that got no answer may have landed: the group's committed offsets decide, record by
record (the finished run may have grown since), so nothing is produced twice.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError, ProducerFencedError, RecordListTooLargeError
from kafka.structs import OffsetAndMetadata

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import EVENT_TYPE_CAPTIONED, CaptionedEvent
from snap2caption_service.core.errors import Poison, Transient, UrlUnavailable
from snap2caption_service.core.events import check_type, decode_upload
from snap2caption_service.core.fetch import ImageFetcher
from stream import kafka_compat
from stream.service_client import ServiceClient
from stream.settings import StreamSettings
from stream.topics import ensure_topics, subscribe_when_visible

log = logging.getLogger("snap2caption.consumer")
EXIT_STALLED = 70  # EX_SOFTWARE: events wait, none can be consumed; restart me
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A record the broker refuses for its size: sent again smaller (a dead letter, then a stub).
SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError)
STUB_KEY_BYTES = 1024  # a stub keeps the original key up to this size
STUB_HEADERS_BYTES = 16 * 1024  # ... and the original headers when all of them fit in this


@lru_cache(maxsize=1)
def consumer_metrics():
    from types import SimpleNamespace

    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        lag=Gauge(
            "snap2caption_consumer_lag",
            "Upload events not yet committed, per partition (high watermark minus next uncommitted offset).",
            ["topic", "partition"],
        ),
        events=Counter(
            "snap2caption_consumer_events_total",
            "Upload events committed, by outcome (captioned, dead_lettered).",
            ["outcome"],
        ),
        dlq=Counter(
            "snap2caption_consumer_dlq_total", "Upload events dead-lettered, by reason and stage.", ["reason", "stage"]
        ),
        transient=Counter(
            "snap2caption_consumer_transient_failures_total",
            "Transient failures (each is retried), by reason and stage.",
            ["reason", "stage"],
        ),
        stage=Histogram(
            "snap2caption_consumer_stage_seconds",
            "Time per stage: fetch, caption, produce (one transaction), total (poll to result).",
            ["stage"],
            buckets=STAGE_BUCKETS,
        ),
        in_flight=Gauge("snap2caption_consumer_in_flight", "Upload events polled and not yet committed."),
        transactions=Counter("snap2caption_consumer_transactions_total", "Transactions, by outcome.", ["outcome"]),
    )


class TransactionStuck(Exception):
    """A transactional call got no answer within transaction_call_timeout_s."""


def _close_quietly(producer: KafkaProducer) -> None:
    """Stop a producer that is being replaced, without waiting for it."""

    def close():
        try:
            producer.close(timeout=0)
        except KafkaError:
            # kafka-python's close() gives up in flush() when batches are still pending (the
            # transaction whose request was lost) and never stops the I/O thread, which then goes
            # on retrying the old transaction's requests for the life of the process. Stop it.
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                log.info("stopped the replaced producer's I/O thread (its pending requests dropped)")

    # close() can also block on a lost request; never wait for it on the loop's thread.
    threading.Thread(target=close, daemon=True, name="kafka-producer-close").start()


# --- outcomes of one record --------------------------------------------------------------


@dataclass
class Captioned:
    key: bytes
    value: bytes
    headers: list


@dataclass
class DeadLetter:
    reason: str
    stage: str
    detail: str


@dataclass
class RetryLater:
    reason: str
    stage: str
    detail: str
    url: bool = False  # the image host did not answer (UrlUnavailable): dead-lettered after bounded rounds


Outcome = Captioned | DeadLetter | RetryLater


@dataclass(eq=False)
class Pending:
    """A polled record from poll until its transaction commits."""

    record: object  # kafka ConsumerRecord
    polled_at: float  # time.perf_counter()
    future: Future | None = None
    outcome: Captioned | DeadLetter | None = None
    retry_at: float | None = None  # set while waiting to be tried again
    url_rounds: int = 0  # rounds of retries that ended with the image host unavailable
    waiting_on: Transient | None = None  # its latest transient failure (set by the worker)
    stub: str | None = None  # why its dead letter goes out as a stub (set when the full one cannot)

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def failed_transiently(self, exc: Transient) -> None:  # on the worker thread
        self.waiting_on = exc

    def state(self) -> str:
        if self.finished:
            return "finished, not committed"
        if self.retry_at is not None:
            return "waiting to be retried"
        return "in flight"


@dataclass
class Window:
    """Records in flight, per partition in offset order. Its size is the backpressure limit."""

    parts: dict[TopicPartition, deque[Pending]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(q) for q in self.parts.values())

    def add(self, tp: TopicPartition, pending: Pending) -> None:
        self.parts.setdefault(tp, deque()).append(pending)

    def items(self):
        for q in self.parts.values():
            yield from q

    def finished_prefixes(self) -> dict[TopicPartition, list[Pending]]:
        """Finished records that can be committed: each partition's leading finished run."""
        out = {}
        for tp, q in self.parts.items():
            run = []
            for p in q:
                if not p.finished:
                    break
                run.append(p)
            if run:
                out[tp] = run
        return out

    def remove(self, ready: dict[TopicPartition, list[Pending]]) -> None:
        for tp, run in ready.items():
            q = self.parts[tp]
            for _ in run:
                q.popleft()

    def drop(self, tps) -> int:
        return sum(len(self.parts.pop(tp, ())) for tp in tps)

    def waiting_retry(self) -> set[TopicPartition]:
        return {tp for tp, q in self.parts.items() if any(p.retry_at is not None for p in q)}

    def running(self) -> int:
        return sum(1 for p in self.items() if p.future is not None)

    def first_offset(self, tp: TopicPartition) -> int | None:
        q = self.parts.get(tp)
        return q[0].record.offset if q else None


# --- the worker: one record -> an outcome ------------------------------------------------


class Handler:
    """What happens to one upload event, off the consumer thread. Never raises."""

    def __init__(
        self, settings: StreamSettings, fetcher: ImageFetcher, service: ServiceClient, stopping: threading.Event
    ):
        self.s, self.fetcher, self.service, self.stopping = settings, fetcher, service, stopping
        self.source = f"urn:snap2caption:consumer:{settings.consumer_group}"
        self.m = consumer_metrics()

    def __call__(self, record, polled_at: float, on_transient=None) -> Outcome:
        """The outcome of one record. Never raises: a failure at any step, building the output
        event included, is an outcome (a dead letter with a reason, or a retry)."""
        stage = "decode"
        try:
            started = time.perf_counter()
            event = self.decode(record)
            upload = decode_upload(event)
            stage = "fetch"
            t0 = time.perf_counter()
            image = self.retrying(lambda: self.fetcher.fetch(upload.image), on_transient)
            stage = "caption"
            t1 = time.perf_counter()
            result = self.retrying(lambda: self.service.caption(image, upload.options()), on_transient)
            t2 = time.perf_counter()
            stage = "produce"
            return self.captioned(record, event, upload, result, (polled_at, started, t0, t1, t2))
        except Poison as exc:
            return DeadLetter(exc.reason, exc.stage, exc.detail)
        except Transient as exc:
            return RetryLater(exc.reason, exc.stage, exc.detail, url=isinstance(exc, UrlUnavailable))
        except Exception as exc:  # a bug here must not stall the partition, nor stop the loop
            log.exception("unexpected error on %s-%d@%d (%s)", record.topic, record.partition, record.offset, stage)
            return DeadLetter("internal_error", stage, f"{type(exc).__name__}: {exc}")

    def captioned(self, record, event, upload, result, times) -> Captioned:
        """The captioned event (value and headers as they will be produced)."""
        polled_at, started, t0, t1, t2 = times
        self.m.stage.labels("fetch").observe(t1 - t0)
        self.m.stage.labels("caption").observe(t2 - t1)
        total = time.perf_counter() - polled_at
        self.m.stage.labels("total").observe(total)
        timings = {
            "wait_ms": (started - polled_at) * 1000,
            "fetch_ms": (t1 - t0) * 1000,
            "caption_ms": (t2 - t1) * 1000,
            "total_ms": total * 1000,
        }
        data = CaptionedEvent.from_result(result, upload, event.id, timings)
        # Deterministic id: the same upload event always yields the same captioned event id.
        out = cloudevents.new_event(
            EVENT_TYPE_CAPTIONED,
            self.source,
            data,
            subject=upload.media_id,
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}#{event.id}")),
        )
        value, headers = cloudevents.to_kafka(out)
        trace = cloudevents.header(record.headers, "traceparent")
        if trace:
            headers.append(("traceparent", trace.encode()))
        return Captioned(upload.media_id.encode(), value, headers)

    @staticmethod
    def decode(record) -> cloudevents.CloudEvent:
        try:
            event = cloudevents.from_kafka(record.value, record.headers)
        except cloudevents.CloudEventError as exc:
            raise Poison(exc.reason, "decode", exc.detail) from None
        check_type(event.type, "this topic")
        return event

    def retrying(self, call, on_transient=None):
        """``call()``, retried on Transient with exponential backoff (jittered, capped); each
        failure is also handed to ``on_transient`` (what the record is waiting on)."""
        for attempt in range(self.s.retries + 1):
            try:
                return call()
            except Transient as exc:
                self.m.transient.labels(exc.reason, exc.stage).inc()
                if on_transient is not None:
                    on_transient(exc)
                if attempt == self.s.retries or self.stopping.is_set():
                    raise
                delay_ms = min(self.s.retry_backoff_max_ms, self.s.retry_backoff_ms * 2**attempt)
                log.debug(
                    "transient %s/%s (attempt %d): %s; retrying in %d ms",
                    exc.stage,
                    exc.reason,
                    attempt + 1,
                    exc.detail,
                    delay_ms,
                )
                if self.stopping.wait(delay_ms / 1000 * random.uniform(0.5, 1.0)):
                    raise  # shutting down: leave it uncommitted for the next owner
        raise AssertionError("unreachable")


# --- the loop ----------------------------------------------------------------------------


class Consumer(ConsumerRebalanceListener):
    def __init__(
        self,
        settings: StreamSettings | None = None,
        fetcher: ImageFetcher | None = None,
        service: ServiceClient | None = None,
    ):
        self.s = settings or StreamSettings()
        self.stopping = threading.Event()
        self.m = consumer_metrics()
        self.window = Window()
        self.handler = Handler(
            self.s,
            fetcher or ImageFetcher(self.s, max_connections=self.s.max_in_flight),
            service or ServiceClient(self.s),
            self.stopping,
        )
        self.pool = ThreadPoolExecutor(self.s.max_in_flight, thread_name_prefix="caption")
        self.max_pending = max(self.s.max_pending, self.s.max_in_flight)
        # Futures not finished yet, including those of revoked partitions that still hold a
        # worker: this, not the window, is what the service sees in flight.
        self.active: set[Future] = set()
        self.wakeup = threading.Event()  # set whenever a worker finishes a record
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self.last_commit = time.monotonic()
        self.last_lag = 0.0
        self.last_progress = time.monotonic()  # a record polled or a transaction committed
        self.last_stall_check = 0.0
        self.committed_next: dict[TopicPartition, int] = {}
        self.outcome_unknown = False  # a transaction got no answer; check offsets before producing
        self.rebalancing = False  # partitions revoked, the new assignment not yet given
        self.totals = {"captioned": 0, "dead_lettered": 0}

    # -- setup --------------------------------------------------------------------------
    def start(self) -> None:
        s = self.s
        ensure_topics(s, [s.topic_uploaded, s.topic_captioned, s.topic_dlq])
        # Fences any earlier incarnation of this instance and aborts its open transaction.
        self.producer = self.new_producer()
        # A header key that is not UTF-8 reaches us (and the DLQ), not poll(); a rebalance completes.
        kafka_compat.install()
        self.consumer = KafkaConsumer(
            bootstrap_servers=s.bootstrap,
            client_id=f"snap2caption-{s.instance_id}",
            group_id=s.consumer_group,
            group_instance_id=s.instance_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=s.max_in_flight,
            session_timeout_ms=s.session_timeout_ms,
        )
        subscribe_when_visible(self.consumer, s.topic_uploaded, self)
        log.info(
            "consuming %s as %s (group %s, transactional id %s) -> %s / %s; service %s; %d in flight",
            s.topic_uploaded,
            s.instance_id,
            s.consumer_group,
            s.transactional_id,
            s.topic_captioned,
            s.topic_dlq,
            s.service_url,
            s.max_in_flight,
        )

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        self.start()
        while not self.stopping.is_set():
            room = self.throttle()  # backpressure: pause when full / retry-waiting
            if room or self.rebalancing:
                # A rebalance completes only inside poll(): kafka-python starts a new JoinGroup
                # instead of finishing one that completed between two poll(timeout_ms=0) calls.
                polled = self.consumer.poll(timeout_ms=self.idle_ms(), max_records=max(1, room))
            else:
                # Nothing may be polled now: wait for a worker to finish (or a commit to fall
                # due) instead of blocking in poll(), so a freed slot is refilled at once.
                polled = self.consumer.poll(timeout_ms=0)
                self.wakeup.wait(self.idle_ms() / 1000)
            self.wakeup.clear()
            if polled:
                self.last_progress = time.monotonic()
            for tp, records in polled.items():
                for record in records:
                    pending = Pending(record, time.perf_counter())
                    self.window.add(tp, pending)
                    self.submit(pending)
            self.collect()  # finished futures -> outcomes
            if self.commit_due():
                self.commit()  # one transaction: outputs + offsets
            self.report()
        return self.shutdown()

    def idle_ms(self) -> int:
        """How long the loop may wait for records: until the next commit falls due, at most 100 ms."""
        if not self.window.finished_prefixes():
            return 100
        due = self.last_commit + self.s.commit_interval_ms / 1000 - time.monotonic()
        return max(0, min(100, int(due * 1000)))

    def submit(self, pending: Pending) -> None:
        pending.retry_at = None
        future = self.pool.submit(self.handler, pending.record, pending.polled_at, pending.failed_transiently)
        self.active.add(future)
        future.add_done_callback(self.finished)
        pending.future = future

    def finished(self, future: Future) -> None:  # on the worker thread
        self.active.discard(future)
        self.wakeup.set()

    def collect(self) -> None:
        now = time.monotonic()
        for tp, q in self.window.parts.items():
            for p in q:
                if p.future is not None and p.future.done():
                    outcome, p.future = self.outcome_of(p), None
                    if not isinstance(outcome, RetryLater):
                        p.outcome = outcome
                    elif self.url_gives_up(p, outcome):
                        p.outcome = DeadLetter(
                            "url_unavailable",
                            outcome.stage,
                            f"{outcome.reason}: {outcome.detail} ({p.url_rounds} rounds of {self.s.retries + 1} "
                            f"attempts in {time.perf_counter() - p.polled_at:.0f}s)",
                        )
                    else:
                        # Retries ran out: keep it uncommitted, pause its partition, try again later.
                        log.warning(
                            "%s-%d@%d: %s/%s after %d retries (%s); pausing the partition for %.0fs",
                            tp.topic,
                            tp.partition,
                            p.record.offset,
                            outcome.stage,
                            outcome.reason,
                            self.s.retries,
                            outcome.detail,
                            self.s.retry_later_s,
                        )
                        p.retry_at = now + self.s.retry_later_s
                elif p.retry_at is not None and now >= p.retry_at and not self.stopping.is_set():
                    self.submit(p)
        self.m.in_flight.set(len(self.window))

    @staticmethod
    def outcome_of(p: Pending) -> Outcome:
        try:
            return p.future.result()
        except Exception as exc:  # the handler never raises; were it to, the record is dead-lettered, not the loop
            log.exception("handler raised on %s-%d@%d", p.record.topic, p.record.partition, p.record.offset)
            return DeadLetter("internal_error", "process", f"{type(exc).__name__}: {exc}")

    def url_gives_up(self, p: Pending, outcome: RetryLater) -> bool:
        """Whether an image host that did not answer has had its bounded retries (rounds) or age.
        Our own service, S3 and the broker are never given up on: that is not the event's fault."""
        if not outcome.url or self.stopping.is_set():  # a round cut short by SIGTERM does not count
            return False
        p.url_rounds += 1
        age = time.perf_counter() - p.polled_at
        return p.url_rounds > self.s.url_retries or age >= self.s.url_retry_max_age_s

    def throttle(self) -> int:
        """Pause what must not be polled now; returns how many records may be polled."""
        assigned = self.consumer.assignment()
        room = min(self.s.max_in_flight - len(self.active), self.max_pending - len(self.window))
        if room <= 0:
            want = set(assigned)
        else:
            want = self.window.waiting_retry() & assigned
        paused = self.consumer.paused()
        if want - paused:
            self.consumer.pause(*(want - paused))
        if (paused - want) & assigned:
            self.consumer.resume(*((paused - want) & assigned))
        return max(0, room) if assigned - want or not assigned else 0

    def commit_due(self) -> bool:
        ready = self.window.finished_prefixes()
        n = sum(map(len, ready.values()))
        return n > 0 and (
            n >= self.s.commit_max_records or (time.monotonic() - self.last_commit) * 1000 >= self.s.commit_interval_ms
        )

    def commit(self) -> None:
        """Produce the results of every finished prefix and commit their offsets, atomically."""
        ready = self.window.finished_prefixes()
        if not ready:
            return
        if not self.producer_ready(ready):
            self.last_commit = time.monotonic()  # try again after a commit interval, not at once
            return
        t0 = time.perf_counter()
        s = self.s
        sent: list[tuple[Pending, Future]] = []
        try:
            self.producer.begin_transaction()
            for run in ready.values():
                for p in run:
                    sent.append((p, self.send_result(p)))
            offsets = {tp: OffsetAndMetadata(run[-1].record.offset + 1, "", -1) for tp, run in ready.items()}
            self.bounded(self.producer.send_offsets_to_transaction, offsets, self.consumer.group_metadata())
            self.bounded(self.producer.commit_transaction)
        except TransactionStuck as exc:
            # The outcome is unknown (the commit may have landed). Replace the producer, which
            # settles the old transaction, then read the committed offsets before going on.
            log.warning("%s got no answer in %.0fs; replacing the producer", exc, s.transaction_call_timeout_s)
            self.outcome_unknown = True
            self.replace_producer()
            self.producer_ready(ready)
            return
        except KafkaError as exc:
            # Nothing of this transaction is visible. Abort (raises if the producer is fenced or
            # in a fatal state: then this process must exit and be restarted) and keep the
            # records: the next commit tries again, or a rebalance hands them to another owner.
            failed = [f.exception for _, f in sent if f.failed()]
            log.warning(
                "transaction failed (%s: %s); %s and retrying",
                type(exc).__name__,
                exc,
                "replacing the producer" if failed else "aborting",
            )
            self.m.transactions.labels("aborted").inc()
            if any(isinstance(e, ProducerFencedError) for e in failed):
                raise exc  # another instance has our transactional id: exit, as abort would
            self.refused_for_size(sent)
            if failed:
                # A record of it failed (the broker refused it). kafka-python (3.0) recovers from
                # that by bumping the epoch on abort, then gets the next transaction's sequence
                # numbers wrong: its I/O thread dies and a commit "succeeds" that never happened
                # (seen in test_stream_dlq.py). A new producer aborts it instead, as after a restart.
                self.replace_producer()
            else:
                try:
                    self.bounded(self.producer.abort_transaction)
                except TransactionStuck:
                    self.replace_producer()
            self.last_commit = time.monotonic()
            time.sleep(0.5)
            return
        self.committed(ready, t0)

    # -- what one finished record produces: it always fits ---------------------------------
    def send_result(self, p: Pending) -> Future:
        """Send ``p``'s captioned event or dead letter into the open transaction. A record the
        producer refuses before sending it (too large, an invalid header) is sent smaller
        instead, so one unproducible record never blocks the transaction that carries every
        partition: a captioned event becomes a dead letter, a dead letter a stub."""
        while True:
            topic, key, value, headers = self.output(p)
            try:
                return self.producer.send(topic, key=key, value=value, headers=headers)
            except (MessageSizeTooLargeError, TypeError, ValueError) as exc:
                if not self.degrade(p, exc):
                    raise

    def output(self, p: Pending) -> tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]:
        """(topic, key, value, headers) of ``p``'s result, within produce_max_bytes."""
        limit = self.s.produce_max_bytes
        if isinstance(p.outcome, Captioned):
            o = p.outcome
            size = _record_size(o.key, o.value, o.headers)
            if size <= limit:
                return self.s.topic_captioned, o.key, o.value, o.headers
            p.outcome = DeadLetter(
                "result_too_large", "produce", f"the captioned event is {size} bytes; the limit is {limit}"
            )
        record, dead = p.record, p.outcome
        if p.stub is None:
            headers = _original_headers(record) + self.dlq_headers(record, dead)
            size = _record_size(record.key, record.value, headers)
            if size <= limit:
                return self.s.topic_dlq, record.key, _dlq_value(record), headers
            p.stub = f"the dead letter would be {size} bytes; the limit is {limit} (produce_max_bytes)"
        return self.stub(record, dead, p.stub)

    def stub(self, record, dead: DeadLetter, why: str) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
        """A dead letter that always fits: where the original is (topic, partition, offset), its
        sha256 and sizes, the reason; the original key and headers only when they are small."""
        value = record.value or b""
        originals = _original_headers(record)
        headers_bytes = sum(len(k.encode()) + len(v) for k, v in originals)
        small_key = record.key is not None and len(record.key) <= STUB_KEY_BYTES
        info = {
            "dlq_stub": True,
            "reason": dead.reason,
            "stage": dead.stage,
            "why_stub": why,
            "source_topic": record.topic,
            "source_partition": record.partition,
            "source_offset": record.offset,
            "value_bytes": None if record.value is None else len(record.value),
            "value_sha256": hashlib.sha256(value).hexdigest(),
            "key_bytes": None if record.key is None else len(record.key),
            "key_sha256": None if record.key is None else hashlib.sha256(record.key).hexdigest(),
            "headers_bytes": headers_bytes,
            "headers_kept": headers_bytes <= STUB_HEADERS_BYTES,
        }
        headers = (originals if info["headers_kept"] else []) + self.dlq_headers(record, dead)
        headers += [
            ("dlq_stub", b"true"),
            ("dlq_value_sha256", info["value_sha256"].encode()),
            ("dlq_value_bytes", b"" if record.value is None else str(len(record.value)).encode()),
        ]
        # Always keyed (a compacted DLQ topic refuses keyless records): the original key when small.
        key = record.key if small_key else f"{record.topic}-{record.partition}@{record.offset}".encode()
        return self.s.topic_dlq, key, json.dumps(info).encode(), headers

    def degrade(self, p: Pending, exc: Exception) -> bool:
        """Make ``p``'s result smaller after the producer or broker refused it; False when it is
        a stub already (nothing smaller to send)."""
        cause = f"{type(exc).__name__}: {exc}"
        if isinstance(p.outcome, Captioned):
            p.outcome = DeadLetter("unproducible_result", "produce", f"the captioned event was refused: {cause}")
        elif p.stub is None:
            p.stub = f"the dead letter was refused: {cause}"
        else:
            return False
        log.warning(
            "%s-%d@%d: its result was refused (%s); sending %s",
            p.record.topic,
            p.record.partition,
            p.record.offset,
            cause,
            "a stub" if p.stub else "a dead letter",
        )
        return True

    def refused_for_size(self, sent: list[tuple[Pending, Future]]) -> None:
        """After a failed transaction: the records the broker refused as too large (a topic's
        max.message.bytes below produce_max_bytes) go out smaller in the next one."""
        for p, future in sent:
            if future.failed() and isinstance(future.exception, SIZE_ERRORS):
                self.degrade(p, future.exception)

    def committed(self, ready: dict[TopicPartition, list[Pending]], t0: float) -> None:
        self.window.remove(ready)
        self.last_commit = self.last_progress = time.monotonic()
        self.m.transactions.labels("committed").inc()
        self.m.stage.labels("produce").observe(time.perf_counter() - t0)
        for tp, run in ready.items():
            self.committed_next[tp] = run[-1].record.offset + 1
            for p in run:
                if isinstance(p.outcome, Captioned):
                    self.totals["captioned"] += 1
                    self.m.events.labels("captioned").inc()
                else:
                    self.totals["dead_lettered"] += 1
                    self.m.events.labels("dead_lettered").inc()
                    self.m.dlq.labels(p.outcome.reason, p.outcome.stage).inc()
                    log.info(
                        "dead-lettered %s-%d@%d: %s/%s: %s",
                        tp.topic,
                        tp.partition,
                        p.record.offset,
                        p.outcome.stage,
                        p.outcome.reason,
                        p.outcome.detail,
                    )

    # -- the producer, and transactions whose outcome is unknown --------------------------
    def new_producer(self) -> KafkaProducer:
        s = self.s
        producer = KafkaProducer(
            bootstrap_servers=s.bootstrap,
            client_id=f"snap2caption-{s.instance_id}",
            transactional_id=s.transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_block_ms=int(s.transaction_call_timeout_s * 1000),
            # Above produce_max_bytes, which output() keeps every record within (stubs if need be).
            max_request_size=max(1024 * 1024, s.produce_max_bytes + 64 * 1024),
            transaction_timeout_ms=60_000,
        )
        try:
            self.bounded(producer.init_transactions)
        except BaseException:
            _close_quietly(producer)
            raise
        return producer

    def replace_producer(self) -> bool:
        """A new producer with the same transactional id: it fences the old one and settles
        (aborts, or finishes committing) whatever transaction the old one had open."""
        old, self.producer = self.producer, None
        if old is not None:
            _close_quietly(old)
        try:
            self.producer = self.new_producer()
            return True
        except (KafkaError, TransactionStuck) as exc:
            log.warning("no transactional producer yet (%s: %s); retrying", type(exc).__name__, exc)
            time.sleep(1.0)
            return False

    def producer_ready(self, ready: dict[TopicPartition, list[Pending]]) -> bool:
        """True when ``ready`` may be produced now. After a transaction with an unknown outcome,
        the group's committed offsets tell whether it landed; if so it is not produced again."""
        if self.producer is None and not self.replace_producer():
            return False
        if not self.outcome_unknown:
            return True
        landed = {}
        for tp, run in ready.items():
            try:
                committed = self.consumer.committed(tp, timeout_ms=10_000)
            except KafkaError as exc:
                log.warning("cannot read committed offsets yet (%s); retrying", exc)
                return False
            # Record by record, not against the run's end: records may have finished since the
            # unanswered transaction (the run grew), and those it carried must not go out twice.
            done = [p for p in run if committed is not None and p.record.offset < committed]
            if done:
                landed[tp] = done
        self.outcome_unknown = False
        if landed:
            # The earlier transaction committed: its records are done, their results are out.
            log.info(
                "the unanswered transaction had committed (%s)",
                ", ".join(f"{tp.topic}-{tp.partition} up to {run[-1].record.offset}" for tp, run in landed.items()),
            )
            self.committed(landed, time.perf_counter())
            return False  # the rest goes out in the next transaction
        return True

    def bounded(self, call, *args):
        """A blocking transactional call with a deadline: kafka-python can wait forever for a
        request that a broker restart lost."""
        done, box = threading.Event(), {}

        def target():
            try:
                box["value"] = call(*args)
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=target, daemon=True, name="kafka-txn-call").start()
        if not done.wait(self.s.transaction_call_timeout_s):
            raise TransactionStuck(getattr(call, "__name__", "a transactional call"))
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def dlq_headers(self, record, dead: DeadLetter) -> list[tuple[str, bytes]]:
        """The dlq_* headers (after the original ones). Details may quote the input: any text
        that UTF-8 cannot take (a lone surrogate) is escaped, never a reason to fail."""
        extra = {
            "dlq_reason": dead.reason,
            "dlq_stage": dead.stage,
            "dlq_detail": dead.detail[:1000],
            "dlq_source_topic": record.topic,
            "dlq_source_partition": str(record.partition),
            "dlq_source_offset": str(record.offset),
            "dlq_consumer_group": self.s.consumer_group,
            "dlq_time": cloudevents.now_rfc3339(),
        }
        return [(k, v.encode(errors="backslashreplace")) for k, v in extra.items()]

    # -- rebalance ------------------------------------------------------------------------
    def on_partitions_revoked(self, revoked) -> None:
        # Still the owner: commit what is finished, then forget the rest (the next owner
        # consumes it again from the committed offset; nothing of it was produced).
        self.rebalancing = True
        if self.producer is not None and self.window.finished_prefixes():
            self.collect()
            self.commit()
        self.forget(revoked)

    def on_partitions_lost(self, lost) -> None:
        self.rebalancing = True
        self.forget(lost)  # no longer the owner: a commit would be fenced anyway

    def on_partitions_assigned(self, assigned) -> None:
        self.rebalancing = False
        self.last_progress = time.monotonic()  # the stall clock starts with the assignment
        log.info("assigned %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))

    def forget(self, tps) -> None:
        dropped = self.window.drop(tps)
        for tp in tps:
            self.committed_next.pop(tp, None)
            try:
                self.m.lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        if dropped:
            log.info("dropped %d uncommitted records of revoked partitions", dropped)

    # -- metrics and shutdown -------------------------------------------------------------
    def report(self, every_s: float = 2.0) -> None:
        now = time.monotonic()
        if now - self.last_lag < every_s:
            return
        self.last_lag = now
        for tp in self.consumer.assignment():
            try:
                high = self.consumer.highwater(tp)
            except KafkaError:
                continue
            nxt = self.window.first_offset(tp)
            if nxt is None:
                nxt = self.committed_next.get(tp)
            if high is not None and nxt is not None:
                self.m.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - nxt))
        self.check_stalled()

    def check_stalled(self, every_s: float = 10.0) -> None:
        """Exit (for a restart) when a record stays uncommitted for stall_timeout_s, or when
        events wait on our partitions and none can be consumed."""
        now = time.monotonic()
        if now - self.last_stall_check < every_s:
            return
        if len(self.window):
            self.last_stall_check = now
            stuck = self.stuck_records()
            why = "; ".join(f"{k}: {v}" for k, v in stuck.items())
        elif now - self.last_progress >= self.s.stall_timeout_s:
            self.last_stall_check = now
            waiting = self.unconsumed()
            if not waiting:
                self.last_progress = now  # idle: nothing to consume
            why = waiting and (
                f"nothing polled or committed for {now - self.last_progress:.0f}s while "
                + "; ".join(f"{k}: {v}" for k, v in waiting.items())
            )
        else:
            return
        if not why:
            return
        log.error("stalled: %s; exiting with status %d for a restart. Threads:", why, EXIT_STALLED)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(EXIT_STALLED)  # not sys.exit: the stuck calls would keep a clean exit waiting

    def stuck_records(self) -> dict[str, str]:
        """Partitions whose oldest uncommitted record is older than stall_timeout_s (a call that
        never returns, a transaction that never commits, a record retried without end). Not a
        record that waits out an outage of our own service, S3 or the broker: retried by design,
        and a restart would not help."""
        stuck, now = {}, time.perf_counter()
        for tp, q in self.window.parts.items():
            if not q:
                continue
            head = q[0]
            if isinstance(head.waiting_on, Transient) and not isinstance(head.waiting_on, UrlUnavailable):
                continue
            age = now - head.polled_at
            if age >= self.s.stall_timeout_s:
                stuck[f"{tp.topic}-{tp.partition}"] = (
                    f"offset {head.record.offset} uncommitted for {age:.0f}s ({head.state()})"
                )
        if stuck:
            try:
                self.consumer.end_offsets(sorted(self.window.parts), timeout_ms=10_000)
            except KafkaError:
                return {}  # the broker is away: everybody waits, a restart would not help
        return stuck

    def unconsumed(self) -> dict[str, str]:
        """Nothing polled or committed for stall_timeout_s: the partitions where events wait."""
        assigned = self.consumer.assignment() - self.consumer.paused()
        if not assigned:
            return {}
        try:
            end = self.consumer.end_offsets(sorted(assigned), timeout_ms=10_000)
        except KafkaError:
            return {}  # the broker is away: everybody waits, a restart would not help
        waiting = {}
        for tp in sorted(assigned):
            name = f"{tp.topic}-{tp.partition}"
            try:
                done = self.consumer.committed(tp, timeout_ms=5000) or 0
            except KafkaError as exc:  # still unreadable after kafka-python's retries (UnstableOffsetCommitError ...)
                waiting[name] = f"committed offset unreadable ({type(exc).__name__}), end offset {end.get(tp)}"
                continue
            if end.get(tp, 0) > done:
                waiting[name] = f"{end[tp] - done} events"
        return waiting

    def stop(self, *_args) -> None:
        self.stopping.set()

    def shutdown(self) -> int:
        """Stop polling, finish what is in flight, commit it, close. Returns the exit code."""
        log.info("stopping: finishing %d in-flight events", self.window.running())
        deadline = time.monotonic() + self.s.drain_timeout_s
        self.consumer.pause(*self.consumer.assignment())
        while self.window.running() and time.monotonic() < deadline:
            self.consumer.poll(timeout_ms=100)  # stays in the group; returns nothing, all paused
            self.collect()
        self.collect()
        self.commit()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.consumer.close(autocommit=False)
        if self.producer is not None:
            self.producer.close(timeout=30)
        log.info("stopped: %d captioned, %d dead-lettered", self.totals["captioned"], self.totals["dead_lettered"])
        return 0


def _dlq_value(record) -> bytes | None:
    # A record needs a key or a value; a keyless tombstone is dead-lettered as an empty value.
    return record.value if record.value is not None or record.key is not None else b""


def _original_headers(record) -> list[tuple[str, bytes]]:
    # A header may have a null value, which the producer refuses: sent as empty.
    return [(_text_key(k), v if v is not None else b"") for k, v in record.headers or []]


def _text_key(name: str) -> str:
    """A header key as UTF-8 text. One that was not UTF-8 (kafka_compat: lone surrogates) is
    escaped, b"\\xff" as "\\xff", so that readers of the DLQ need no such shim."""
    try:
        str.encode(name, "utf-8")
        return name
    except UnicodeEncodeError:
        try:
            return str.encode(name, "utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return str.encode(name, "utf-8", "backslashreplace").decode()


def _record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """An upper bound of the record's size in a batch (kafka-python's estimate is below it)."""
    size = 256 + len(key or b"") + len(value or b"")
    return size + sum(16 + len(k.encode(errors="surrogatepass")) + len(v or b"") for k, v in headers)


def run_consumer(settings: StreamSettings | None = None) -> int:
    settings = settings or StreamSettings()
    if not log.isEnabledFor(logging.DEBUG):
        # One line per HTTP request and per Kafka connection event drowns what matters.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("kafka").setLevel(logging.WARNING)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    consumer = Consumer(settings)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    signal.signal(signal.SIGTERM, consumer.stop)
    signal.signal(signal.SIGINT, consumer.stop)
    return consumer.run()
