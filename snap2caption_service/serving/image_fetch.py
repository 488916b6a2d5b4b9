"""Images by reference for the HTTP side: one bounded fetch pool, and what a failed fetch answers.

The service owns one ``FetchPool``; ``/events`` (an event's URL or S3 image) and
``/generate-caption`` (``image_url``) both fetch through it. Fetches run on threads of their
own, at most ``fetch_max_concurrency`` at once, never on the API's thread pool (image decoding,
/feedback): a few image hosts that trickle or hang cannot stall the API. When they are all busy
the request is answered 503 with Retry-After at once (``fetch_busy``) rather than queued. The
fetcher itself (core/fetch.py) holds the SSRF guard and the size, time and redirect limits.

A refused fetch (``Poison``) gets the same 4xx on both routes: ``fetch_status``. A host that does
not answer differs by caller: Knative retries an event on 503 (push.py), while an HTTP caller is
told it was the image host, not this service, that failed (502, or 504 when it ran out of time).
"""

from __future__ import annotations

import anyio
from starlette.responses import JSONResponse

from snap2caption_service.core.contracts import ImageRef
from snap2caption_service.core.errors import Poison, StageError, Transient, UrlUnavailable
from snap2caption_service.core.fetch import ImageFetcher
from snap2caption_service.core.images import ERROR_STATUS
from snap2caption_service.core.settings import FetchSettings
from snap2caption_service.serving.responses import error_response

RETRY_AFTER_S = "5"
_TIMEOUTS = frozenset({"fetch_timeout", "dns_timeout"})


class FetchPool:
    def __init__(self, settings: FetchSettings | None = None):
        self.s = settings or FetchSettings()
        self.fetcher = ImageFetcher(self.s, max_connections=self.s.fetch_max_concurrency)
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop, on first use
        self._fetching = 0  # fetches admitted and not finished (touched on the event loop only)

    async def fetch(self, ref: ImageRef) -> bytes:
        """The image's bytes; raises Poison or Transient. URL and S3 fetches take a slot of the
        pool, or raise Transient ``fetch_busy`` when all ``fetch_max_concurrency`` are taken."""
        if ref.s3_uri is None and ref.url is None:  # inline: decoding only, like an upload
            return await anyio.to_thread.run_sync(self.fetcher.fetch, ref)
        limit = self.s.fetch_max_concurrency
        if self._fetching >= limit:
            raise Transient(
                "fetch_busy", "fetch", f"{limit} image fetches in flight (SNAP2CAPTION_FETCH_MAX_CONCURRENCY)"
            )
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(limit)
        self._fetching += 1
        try:
            # Its own limiter: these threads never take a token of the API's default pool. The
            # fetch itself ends by fetch_timeout_s (one deadline), so a slot is never held longer.
            return await anyio.to_thread.run_sync(self.fetcher.fetch, ref, limiter=self._limiter)
        finally:
            self._fetching -= 1


def poison_status(exc: Poison) -> int:
    """The 4xx for something that can never be captioned as sent."""
    if exc.status:  # the service refused it: the same status as on /generate-caption
        return exc.status
    if exc.reason in ERROR_STATUS:  # an image the fetcher could not take (too large): as for an upload
        return ERROR_STATUS[exc.reason]
    return 400 if exc.stage in ("decode", "validate") else 422


def fetch_error_response(exc: StageError) -> JSONResponse:
    """A failed fetch for an HTTP caller (``/generate-caption`` with ``image_url``)."""
    if isinstance(exc, Poison):
        return error_response(poison_status(exc), exc.reason, exc.detail, exc.stage)
    if isinstance(exc, UrlUnavailable):
        return error_response(504 if exc.reason in _TIMEOUTS else 502, exc.reason, exc.detail, exc.stage)
    return error_response(503, exc.reason, exc.detail, exc.stage, {"Retry-After": RETRY_AFTER_S})
