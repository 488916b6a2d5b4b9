"""The feedback log: the one durable copy of every feedback, one JSON line each, fsynced before 202.

A creator's rating is the only training signal we get, so it is on disk before we say
"recorded". This file is also what goes to the training topic: the service's feedback
publisher (stream/feedback_producer.py) ships it from a cursor of its own and never rewrites
it, so there is no second copy to keep in step.

- One writer: the store holds an exclusive lock (``<log>.lock``, with the holder's pid) for
  its lifetime. A second process opening the same log waits up to ``lock_timeout_s`` (a
  rolling restart: the old process is draining) and then fails with ``FeedbackLogLocked``,
  naming the log and the holder.
- Never a torn record: each record is one ``write`` of a whole line. A short write (a full
  disk) or a failed write is cut back off before ``append`` raises ``FeedbackLogUnavailable``
  (the creator gets a 503, not a 202), and the next append first removes any bytes a failed
  write left behind. A line left unfinished by a crash is cut off when the log is opened again:
  it was never acknowledged (202 comes after the whole line is on disk).
- Bounded: a record over ``MAX_FEEDBACK_RECORD_BYTES`` is refused (``FeedbackTooLarge``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from snap2caption_service.core.contracts import (
    MAX_FEEDBACK_RECORD_BYTES,
    FeedbackRecord,
    FeedbackRequest,
    ServedCaption,
)
from snap2caption_service.core.files import fsync_dir, lock_exclusive
from snap2caption_service.core.hashtags import hashtag_edit

log = logging.getLogger("snap2caption.feedback")


class FeedbackLogLocked(RuntimeError):
    """Another process writes this feedback log."""


class FeedbackLogUnavailable(OSError):
    """The record could not be made durable (disk full, I/O error); nothing of it stays in the log."""


class FeedbackTooLarge(ValueError):
    """The record is over MAX_FEEDBACK_RECORD_BYTES as one JSON line."""


class FeedbackStore:
    def __init__(self, path: Path, fsync: bool = True, lock_timeout_s: float = 30.0):
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock_fd = lock_exclusive(
                self.path.with_name(self.path.name + ".lock"), lock_timeout_s, f"the feedback log {self.path}"
            )
        except BlockingIOError as exc:
            raise FeedbackLogLocked(exc.strerror) from None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if fsync:
            fsync_dir(self.path.parent)
        self._end = self._cut_unfinished_line()

    def _cut_unfinished_line(self) -> int:
        """The end of the last whole line; bytes after it (a write a crash cut short) are removed."""
        size = pos = os.fstat(self._fd).st_size
        end = 0
        while pos > 0:
            start = max(0, pos - 65536)
            chunk = os.pread(self._fd, pos - start, start)
            if b"\n" in chunk:
                end = start + chunk.rfind(b"\n") + 1
                break
            pos = start
        if end < size:
            log.warning(
                "feedback log %s ends with %d bytes of an unfinished record (a write cut short); removed",
                self.path,
                size - end,
            )
            os.ftruncate(self._fd, end)
            if self.fsync:
                os.fsync(self._fd)
        return end

    def append(self, feedback: FeedbackRequest, served: ServedCaption | None = None) -> FeedbackRecord:
        """The record, once it is whole on disk (fsynced); raises FeedbackTooLarge or
        FeedbackLogUnavailable, and then nothing of it is in the log."""
        # Without the shown answer there is nothing to edit against.
        kept, removed, added = hashtag_edit(served.hashtags, feedback.edited_hashtags) if served else ([], [], [])
        record = FeedbackRecord(
            **feedback.model_dump(),
            feedback_id=uuid.uuid4().hex,
            received_at=datetime.now(UTC).isoformat(),
            served=served,
            hashtags_kept=kept,
            hashtags_removed=removed,
            hashtags_added=added,
        )
        data = (record.model_dump_json() + "\n").encode()
        if len(data) > MAX_FEEDBACK_RECORD_BYTES:
            raise FeedbackTooLarge(f"a feedback record is {len(data)} bytes; the limit is {MAX_FEEDBACK_RECORD_BYTES}")
        with self._lock:
            self._write_line(data)
        return record

    def _write_line(self, data: bytes) -> None:
        try:
            if os.fstat(self._fd).st_size != self._end:
                os.ftruncate(self._fd, self._end)  # what an earlier failed write left behind
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:
                pass  # the next append (or the next open) removes it before writing
            log.error("feedback log %s: record not written (%s)", self.path, exc)
            raise FeedbackLogUnavailable(exc.errno, f"the feedback log could not take the record: {exc}") from None
        # The whole line is in the file: it stays, even if the fsync below fails (a reader may
        # have seen it already); the caller then answers an error and the creator may resend.
        self._end += len(data)
        if self.fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                log.error("feedback log %s: fsync failed (%s)", self.path, exc)
                raise FeedbackLogUnavailable(exc.errno, f"the feedback log could not be synced: {exc}") from None

    def close(self) -> None:
        """Release the log (and its lock) for another process."""
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fd = self._lock_fd = -1

    def __iter__(self) -> Iterator[FeedbackRecord]:
        """Every readable record, oldest first (a line that is not one is skipped with a warning)."""
        with self.path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield FeedbackRecord.model_validate(json.loads(line))
                except ValueError:
                    log.warning("feedback log %s line %d is not a feedback record; skipped", self.path, n)
