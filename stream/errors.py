"""The two ways handling an event can fail, and what the consumer does about each.

Poison     the event itself is wrong (bad JSON, missing object, not an image, blocked URL):
           retrying cannot help, so it goes to the DLQ with ``reason`` and ``stage`` and its
           offset is committed.
Transient  something around the event is unwell (503, timeout, S3 5xx, broker away): retried
           with bounded backoff, then the partition pauses and tries again later. Never
           dead-lettered: slowness is not the event's fault.
"""

from __future__ import annotations


class StageError(Exception):
    def __init__(self, reason: str, stage: str, detail: str = ""):
        super().__init__(f"{stage}/{reason}: {detail}")
        self.reason, self.stage, self.detail = reason, stage, detail


class Poison(StageError):
    pass


class Transient(StageError):
    pass
