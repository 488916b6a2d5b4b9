"""snap2caption_service/serving/feedback_store.py: the feedback log, the one durable copy of
each feedback. Never a torn record (short writes, full disks, crashes mid-write), one writer
at a time, bounded records. The shipping side of the same log: tests/test_feedback_producer.py."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from snap2caption_service.core.contracts import FeedbackRecord, FeedbackRequest
from snap2caption_service.serving import feedback_store
from snap2caption_service.serving.feedback_store import (
    FeedbackLogLocked,
    FeedbackLogUnavailable,
    FeedbackStore,
    FeedbackTooLarge,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fb(n: int, **kw) -> FeedbackRequest:
    return FeedbackRequest(request_id=f"{n:032x}", rating="up", **kw)


def lines(path) -> list[dict]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "the log ends with a whole line"
    return [json.loads(line) for line in raw.splitlines()]


def test_short_write_on_a_full_disk_leaves_no_torn_record(tmp_path, monkeypatch):
    """A write cut short (full disk) is refused (no 202) and cut back off: the next record is
    whole, not glued to half of the failed one (which would make it unsendable forever)."""
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    store.append(fb(1))
    real_write = os.write

    def short_write(fd, data):
        return real_write(fd, bytes(data)[: len(data) // 2])

    monkeypatch.setattr(feedback_store.os, "write", short_write)
    with pytest.raises(FeedbackLogUnavailable):
        store.append(fb(2))
    monkeypatch.setattr(feedback_store.os, "write", real_write)
    store.append(fb(3))
    assert [r["request_id"] for r in lines(store.path)] == [f"{1:032x}", f"{3:032x}"]
    assert [r.request_id for r in store] == [f"{1:032x}", f"{3:032x}"]


def test_a_failed_write_and_a_failed_cleanup_are_removed_before_the_next_record(tmp_path, monkeypatch):
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    real_write, real_truncate = os.write, os.ftruncate

    def torn(fd, data):
        real_write(fd, bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    def broken_truncate(fd, size):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(feedback_store.os, "write", torn)
    monkeypatch.setattr(feedback_store.os, "ftruncate", broken_truncate)
    with pytest.raises(FeedbackLogUnavailable):
        store.append(fb(1))
    assert store.path.stat().st_size == 10  # the fragment could not be removed yet...
    monkeypatch.setattr(feedback_store.os, "write", real_write)
    monkeypatch.setattr(feedback_store.os, "ftruncate", real_truncate)
    store.append(fb(2))  # ...so it is removed before the next record
    assert [r["request_id"] for r in lines(store.path)] == [f"{2:032x}"]


def test_a_line_a_crash_left_unfinished_is_cut_when_the_log_opens(tmp_path):
    path = tmp_path / "feedback.jsonl"
    store = FeedbackStore(path)
    store.append(fb(1))
    store.close()
    with open(path, "ab") as f:
        f.write(b'{"request_id": "00000000000000000000000000000002", "rat')  # killed mid-write: never 202'd
    store = FeedbackStore(path)
    store.append(fb(3))
    assert [r["request_id"] for r in lines(path)] == [f"{1:032x}", f"{3:032x}"]


def test_records_over_the_size_bound_are_refused(tmp_path, monkeypatch):
    """The contract bounds every field (a valid record always fits: tests/test_contracts.py);
    the store also refuses a record over the bound outright, should the two ever disagree."""
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    monkeypatch.setattr(feedback_store, "MAX_FEEDBACK_RECORD_BYTES", 1000)
    with pytest.raises(FeedbackTooLarge):
        store.append(fb(1, edited_caption="x" * 2000))
    assert store.path.stat().st_size == 0


def test_one_writer_per_log(tmp_path):
    """A second store on the same log, in this process or another, fails clearly (naming the
    holder) after its wait; once the first is closed it opens."""
    path = tmp_path / "feedback.jsonl"
    first = FeedbackStore(path)
    with pytest.raises(FeedbackLogLocked, match=rf"pid {os.getpid()}"):
        FeedbackStore(path, lock_timeout_s=0.2)
    child = textwrap.dedent(
        f"""
        from snap2caption_service.serving.feedback_store import FeedbackStore, FeedbackLogLocked
        try:
            FeedbackStore({str(path)!r}, lock_timeout_s=0)
        except FeedbackLogLocked as exc:
            print("LOCKED", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}
    )
    assert out.stdout.startswith("LOCKED") and "in use by another process" in out.stdout, out.stdout + out.stderr
    first.close()
    second = FeedbackStore(path, lock_timeout_s=0)
    second.append(fb(1))
    assert FeedbackRecord.model_validate(lines(path)[0]).request_id == f"{1:032x}"


def test_a_second_writer_waits_for_the_first_to_let_go(tmp_path):
    """A rolling restart: the new process waits while the old one drains and closes."""
    import threading

    path = tmp_path / "feedback.jsonl"
    first = FeedbackStore(path)
    threading.Timer(0.3, first.close).start()
    t0 = time.monotonic()
    FeedbackStore(path, lock_timeout_s=5).append(fb(1))
    assert 0.2 < time.monotonic() - t0 < 5
