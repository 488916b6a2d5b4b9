"""Durable, append-only feedback store: one JSON line per feedback, fsynced before 202.

A creator's rating is the only training signal we get, so it is on disk before we say
"recorded". The event pipeline later forwards these records to the training topic.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from snap2caption_service.core.contracts import FeedbackRecord, FeedbackRequest, ServedCaption


class FeedbackStore:
    def __init__(self, path: Path, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, feedback: FeedbackRequest, served: ServedCaption | None = None) -> FeedbackRecord:
        record = FeedbackRecord(
            **feedback.model_dump(),
            feedback_id=uuid.uuid4().hex,
            received_at=datetime.now(UTC).isoformat(),
            served=served,
        )
        line = record.model_dump_json() + "\n"
        with self._lock:
            # O_APPEND makes each write land whole at the end even with several processes.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode())
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def __iter__(self) -> Iterator[FeedbackRecord]:
        if not self.path.exists():
            return
        with self.path.open() as f:
            for line in f:
                if line.strip():
                    yield FeedbackRecord(**json.loads(line))
