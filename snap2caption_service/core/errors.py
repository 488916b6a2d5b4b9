"""How captioning fails. ``ErrorAnswer`` is the service's refusal of a request; for an event,
the two ways handling it can fail, and what the consumer does about each.

Poison     the event itself is wrong (bad JSON, missing object, not an image, blocked URL):
           retrying cannot help, so it goes to the DLQ with ``reason`` and ``stage`` and its
           offset is committed.
Transient  something around the event is unwell (503, timeout, S3 5xx, broker away): retried
           with bounded backoff, then the partition pauses and tries again later. Never
           dead-lettered: slowness is not the event's fault.
"""

from __future__ import annotations


class ErrorAnswer(Exception):
    """What the service answers instead of a caption: an HTTP ``status``, a stable ``code``
    for clients to branch on, and a ``detail`` sentence a person can act on
    (``contracts.ErrorBody`` on the wire)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class StageError(Exception):
    status: int | None = None  # the service's HTTP status, when the service refused the event

    def __init__(self, reason: str, stage: str, detail: str = ""):
        super().__init__(f"{stage}/{reason}: {detail}")
        self.reason, self.stage, self.detail = reason, stage, detail


class Poison(StageError):
    pass


class Transient(StageError):
    pass


class UrlUnavailable(Transient):
    """An image host that did not answer (timeout, DNS failure, refused, 5xx). Transient like
    any outage, but a host outside our control: after bounded retries or age the consumer
    dead-letters the event as ``url_unavailable`` instead of retrying it forever."""
