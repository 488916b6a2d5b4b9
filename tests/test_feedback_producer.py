"""stream/feedback_producer.py without a broker: shipping the feedback log to the training
topic. Crash-safe at every step, one publisher per log, quarantine for what can never be
sent, no re-sends of what the broker acknowledged, drained on shutdown within a deadline.
tests/test_stream_feedback.py sends feedback through a real broker that goes down and back up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from snap2caption_service.core.contracts import FeedbackRecord, FeedbackRequest
from snap2caption_service.serving.feedback_store import FeedbackStore
from stream.feedback_producer import FeedbackPublisher, Spool, SpoolLocked, adopt_legacy_spool
from stream.settings import FeedbackPublisherSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def request(n: int, **kw) -> FeedbackRequest:
    return FeedbackRequest(request_id=f"{n:032x}", rating="up", **kw)


def ids(entries) -> list[str]:
    return [json.loads(e.line)["request_id"] for e in entries]


def rid(n: int) -> str:
    return f"{n:032x}"


# --- the spool: order, cursor, restart ---------------------------------------------------------


def test_spool_keeps_order_and_resumes_from_its_cursor(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    for i in range(3):
        store.append(request(i))
    with open(store.path, "ab") as f:
        f.write(b'{"n": "half-writ')  # a line still being written is not handed out
    spool = Spool(store.path)
    batch = spool.pending()
    assert ids(batch) == [rid(0), rid(1), rid(2)]
    spool.ack(batch[:2])
    spool.close()
    assert ids(Spool(store.path).pending()) == [rid(2)]  # survives a restart


def test_acknowledged_out_of_order_is_never_handed_out_again(tmp_path):
    """Record 1 failed, 0 and 2 were acknowledged: only 1 is retried, also after a restart."""
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    for i in range(3):
        store.append(request(i))
    spool = Spool(store.path)
    batch = spool.pending()
    spool.ack([batch[0], batch[2]])
    spool.close()
    spool = Spool(store.path)
    assert ids(spool.pending()) == [rid(1)]
    spool.ack(spool.pending())
    assert spool.pending() == [] and spool.depth() == 0
    assert json.loads(spool.cursor_path.read_text()) == {"offset": store.path.stat().st_size, "done": []}


# --- crash safety: killed at every step -----------------------------------------------------


def crash_scenario(log_path, events_path, crash_at: int, torn: bool) -> None:
    """Runs in a forked child: 6 records appended, acknowledged in 3 rounds (the first out of
    order), with the k-th file-system call killing the process (os._exit: no cleanup, no
    flush); with ``torn`` that call, if a write, first writes half its bytes."""
    events = open(events_path, "a", buffering=1)  # noqa: SIM115 - the process dies with it open
    calls = 0

    def counted(name):
        real = getattr(os, name)

        def step(*args):
            nonlocal calls
            calls += 1
            if calls == crash_at:
                if name == "write" and torn:
                    real(args[0], bytes(args[1])[: max(1, len(args[1]) // 2)])
                os._exit(137)
            return real(*args)

        setattr(os, name, step)

    for name in ("open", "write", "fsync", "replace", "ftruncate", "close", "pwrite"):
        counted(name)
    store = FeedbackStore(log_path)
    spool = Spool(log_path)
    for round_ in range(3):
        for i in range(2):
            n = round_ * 2 + i
            events.write(f"appending {n}\n")
            store.append(request(n))
            events.write(f"appended {n}\n")  # acknowledged to the creator (202)
        batch = spool.pending()
        done = batch[1:] if round_ == 0 else batch  # the oldest still out at first: out of order
        events.write("acking " + " ".join(ids(done)) + "\n")
        spool.ack(done)
        events.write("acked " + " ".join(ids(done)) + "\n")  # the cursor is on disk
    events.write(f"calls {calls}\n")


def run_crash_child(work, crash_at: int, torn: bool) -> tuple[dict, int]:
    log_path, events_path = work / "feedback.jsonl", work / "events.txt"
    for p in work.iterdir():
        p.unlink()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            crash_scenario(log_path, events_path, crash_at, torn)
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    events = {"appended": set(), "appending": set(), "acked": set(), "acking": set(), "calls": 0}
    for line in events_path.read_text().splitlines():
        what, _, rest = line.partition(" ")
        if what == "calls":
            events["calls"] = int(rest)
        elif what in ("appending", "appended"):
            events[what].add(rid(int(rest)))
        else:
            events[what].update(rest.split())
    return events, os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("torn", [False, True], ids=["killed-between-steps", "killed-mid-write"])
def test_killed_at_any_step_a_fresh_spool_sees_every_unacknowledged_record_once(tmp_path, torn):
    """Killed at every file-system call of appending and acknowledging (crash_scenario), a fresh
    store and a fresh Spool hand out every record the creator was told was recorded and the
    cursor does not hold, exactly once, and nothing the cursor holds."""
    work = tmp_path / "work"
    work.mkdir()
    full, rc = run_crash_child(work, 0, False)
    assert rc == 0 and full["calls"] > 20 and len(full["acked"]) == 6, full
    for crash_at in range(1, full["calls"] + 1):
        events, rc = run_crash_child(work, crash_at, torn)
        assert rc == 137, (crash_at, rc)
        log_path = work / "feedback.jsonl"
        if not log_path.exists():
            assert not events["appended"]
            continue
        FeedbackStore(log_path, lock_timeout_s=5).close()  # the next service start: cuts a torn tail
        spool = Spool(log_path)
        waiting = ids(spool.pending())
        where = f"killed at call {crash_at}: {events}, waiting {waiting}"
        assert len(waiting) == len(set(waiting)), "handed out twice: " + where
        # Records whose acknowledgement was being written when it died may be on either side.
        in_doubt = events["acking"] - events["acked"]
        assert events["appended"] - events["acked"] - in_doubt <= set(waiting), "a 202'd record was lost: " + where
        assert not set(waiting) & events["acked"], "re-sent what the broker acknowledged: " + where
        # Beyond those: at most the record being appended (whole on disk, its 202 not yet sent).
        assert set(waiting) <= events["appending"] - events["acked"], where
        spool.ack(spool.pending())
        spool.close()
        with open(log_path, "rb") as f:
            for line in f:
                FeedbackRecord.model_validate_json(line)  # every line whole
        assert Spool(log_path).pending() == []


# --- one publisher per log ----------------------------------------------------------------


def test_a_second_publisher_on_the_same_log_fails_clearly_or_waits(tmp_path):
    path = tmp_path / "feedback.jsonl"
    first = Spool(path)
    with pytest.raises(SpoolLocked, match=rf"pid {os.getpid()}"):
        Spool(path, lock_timeout_s=0.1)
    child = textwrap.dedent(
        f"""
        from stream.feedback_producer import Spool, SpoolLocked
        try:
            Spool({str(path)!r}, lock_timeout_s=0)
        except SpoolLocked as exc:
            print("LOCKED", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}
    )
    assert out.stdout.startswith("LOCKED") and "one publisher per log" in out.stdout, out.stdout + out.stderr
    threading.Timer(0.3, first.close).start()
    Spool(path, lock_timeout_s=5).close()  # waits for the first to let go


# --- the publisher, with a producer that stands in for the broker ---------------------------


class FakeFuture:
    def __init__(self, exception: Exception | None = None, done: bool = True):
        self.exception = exception
        self.is_done = done

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def failed(self) -> bool:
        return self.is_done and self.exception is not None


class FakeProducer:
    """Acks every send, except what ``refuse(key, value)`` says: an exception raised at send,
    or ("fail", exc) / ("hang", None) as the future's outcome."""

    def __init__(self, refuse=lambda key, value: None, send_delay: float = 0.0):
        self.refuse = refuse
        self.send_delay = send_delay
        self.acked: list[str] = []
        self.attempts: list[str] = []

    def send(self, topic, key, value, headers):
        time.sleep(self.send_delay)
        self.attempts.append(key.decode())
        verdict = self.refuse(key.decode(), value)
        if isinstance(verdict, Exception):
            raise verdict
        if verdict is None:
            self.acked.append(key.decode())
            return FakeFuture()
        kind, exc = verdict
        return FakeFuture(exc) if kind == "fail" else FakeFuture(done=False)

    def flush(self, timeout=None):
        time.sleep(min(timeout or 0.0, 0.05))  # what is unanswered stays so

    def close(self, timeout=None):
        pass


class Publisher(FeedbackPublisher):
    producer_to_use: FakeProducer

    def _connect(self):
        self.producer = self.producer_to_use
        return self.producer


def publisher(path, producer: FakeProducer, **settings) -> Publisher:
    Publisher.producer_to_use = producer
    return Publisher(FeedbackPublisherSettings(_env_file=None, **settings), path)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def quarantined_metric(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("snap2caption_feedback_quarantined_total", {"reason": reason}) or 0.0


def test_a_record_the_broker_refuses_is_quarantined_and_the_rest_goes_once(tmp_path):
    """An oversized record (written by an older version, 1.1 MB of hashtag) used to fail forever,
    and each retry re-sent the records before it in its batch. Now it is set aside with a log
    line and a metric; every other record reaches the topic once, in order."""
    from kafka.errors import MessageSizeTooLargeError

    store = FeedbackStore(tmp_path / "feedback.jsonl")
    first = store.append(request(1))
    big = FeedbackRecord.model_construct(
        **FeedbackRecord(request_id=rid(2), rating="up", feedback_id=uuid.uuid4().hex, received_at="t").model_dump()
    )
    big.edited_hashtags = ["#" + "a" * 1_100_000]
    with open(store.path, "ab") as f:  # what an older version let in
        f.write(big.model_dump_json().encode() + b"\n")
    store._end = store.path.stat().st_size  # noqa: SLF001 - the line came from outside the store
    last = store.append(request(3))
    before = quarantined_metric("too_large")

    producer = FakeProducer(lambda key, value: MessageSizeTooLargeError("too big") if len(value) > 1_000_000 else None)
    pub = publisher(store.path, producer)
    wait_for(lambda: pub.spool.depth() == 0)
    pub.close(timeout=2)
    assert producer.acked == [first.feedback_id, last.feedback_id]
    assert producer.attempts == producer.acked  # the giant never reached send: too large for the log's bound
    note = json.loads((tmp_path / "feedback.jsonl.quarantine").read_text())
    assert note["reason"] == "too_large" and note["bytes"] > 1_000_000
    assert quarantined_metric("too_large") == before + 1


def test_records_the_broker_refuses_at_send_are_quarantined(tmp_path):
    from kafka.errors import MessageSizeTooLargeError

    store = FeedbackStore(tmp_path / "feedback.jsonl")
    recs = [store.append(request(i)) for i in range(4)]
    bad = {
        recs[1].feedback_id: MessageSizeTooLargeError("x"),
        recs[2].feedback_id: ("fail", MessageSizeTooLargeError()),
    }
    producer = FakeProducer(lambda key, value: bad.get(key))
    pub = publisher(store.path, producer)
    wait_for(lambda: pub.spool.depth() == 0)
    pub.close(timeout=2)
    assert producer.acked == [recs[0].feedback_id, recs[3].feedback_id]
    notes = [json.loads(line) for line in (tmp_path / "feedback.jsonl.quarantine").read_text().splitlines()]
    assert [n["feedback_id"] for n in notes] == [recs[1].feedback_id, recs[2].feedback_id]


def test_a_torn_or_foreign_line_is_quarantined_not_retried_forever(tmp_path):
    """A line that is not a feedback record (an older version's short write glued to the next
    record) used to stop the publisher for good."""
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    a = store.append(request(1))
    with open(store.path, "ab") as f:
        f.write(b'{"request_id": "0000{"request_id": "glued"}\n')
    store._end = store.path.stat().st_size  # noqa: SLF001 - the line came from outside the store
    b = store.append(request(2))
    producer = FakeProducer()
    pub = publisher(store.path, producer)
    wait_for(lambda: pub.spool.depth() == 0)
    pub.close(timeout=2)
    assert producer.acked == [a.feedback_id, b.feedback_id]
    note = json.loads((tmp_path / "feedback.jsonl.quarantine").read_text())
    assert note["reason"] == "not_a_feedback_record"


def test_a_retry_sends_only_what_failed(tmp_path):
    """Record 1 of 3 times out once; 0 and 2 are acknowledged. The retry sends 1 alone: the
    broker sees each record acknowledged exactly once."""
    from kafka.errors import KafkaTimeoutError

    store = FeedbackStore(tmp_path / "feedback.jsonl")
    recs = [store.append(request(i)) for i in range(3)]
    failures = {recs[1].feedback_id: 1}

    def refuse(key, value):
        if failures.get(key):
            failures[key] -= 1
            return ("fail", KafkaTimeoutError("timed out"))
        return None

    producer = FakeProducer(refuse)
    pub = publisher(store.path, producer)
    wait_for(lambda: pub.spool.depth() == 0)
    pub.close(timeout=2)
    assert sorted(producer.acked) == sorted(r.feedback_id for r in recs)
    assert len(producer.acked) == 3
    assert producer.attempts == [recs[0].feedback_id, recs[1].feedback_id, recs[2].feedback_id, recs[1].feedback_id]


def test_close_ships_what_waits_within_the_deadline(tmp_path):
    """SIGTERM: the service's on_shutdown close() ships the backlog before the process goes."""
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    recs = [store.append(request(i)) for i in range(40)]
    producer = FakeProducer(send_delay=0.01)
    pub = publisher(store.path, producer, feedback_batch_records=5)
    pub.close(timeout=10)
    assert producer.acked == [r.feedback_id for r in recs]
    assert pub.spool.depth() == 0


def test_close_returns_at_the_deadline_when_the_broker_never_answers(tmp_path):
    """SIGTERM with the broker away: close() gives up at its deadline; nothing is lost, the
    next start ships it."""
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    for i in range(5):
        store.append(request(i))
    producer = FakeProducer(lambda key, value: ("hang", None))
    pub = publisher(store.path, producer)
    wait_for(lambda: producer.attempts)
    t0 = time.monotonic()
    pub.close(timeout=1.0)
    assert time.monotonic() - t0 < 2.5
    assert not pub.thread.is_alive()
    assert [json.loads(e.line)["request_id"] for e in Spool(store.path).pending()] == [rid(i) for i in range(5)]


def test_sigterm_starts_the_drain_and_keeps_the_handler_that_was_there(tmp_path):
    """In the service SIGTERM reaches uvicorn's handler, and BentoML calls on_shutdown (close)
    only after every request task has ended: the drain starts at the signal itself."""
    import signal

    store = FeedbackStore(tmp_path / "feedback.jsonl")
    recs = [store.append(request(i)) for i in range(3)]
    seen = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        producer = FakeProducer()
        pub = publisher(store.path, producer, feedback_drain_timeout_s=5)
        pub.drain_on_sigterm()
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: seen)
        assert seen == [signal.SIGTERM] and pub.stopping.is_set()
        pub.thread.join(6)
        assert not pub.thread.is_alive()  # drained and stopped without close()
        assert producer.acked == [r.feedback_id for r in recs]
    finally:
        signal.signal(signal.SIGTERM, original)


def test_the_old_separate_spool_is_adopted_once(tmp_path):
    """Upgrading from the version with a second spool file: shipping resumes at the first record
    that spool had not sent (not at the start of the log: no re-sends), and it is put aside."""
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    recs = [store.append(request(i)) for i in range(5)]
    legacy = tmp_path / "feedback-spool.jsonl"
    lines = [r.model_dump_json() + "\n" for r in recs]
    legacy.write_text("".join(lines))
    (tmp_path / "feedback-spool.jsonl.cursor").write_text(str(sum(len(line.encode()) for line in lines[:3])))
    spool = Spool(store.path)
    adopt_legacy_spool(spool, legacy)
    assert ids(spool.pending()) == [rid(3), rid(4)]
    assert not legacy.exists() and (tmp_path / "feedback-spool.jsonl.migrated").exists()
    adopt_legacy_spool(spool, tmp_path / "feedback-spool.jsonl.migrated")  # a cursor exists: nothing to do
    assert ids(spool.pending()) == [rid(3), rid(4)]
