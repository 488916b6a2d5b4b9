"""Request limits as ASGI middleware, outside every handler and parser.

Body size: a request whose Content-Length is over its route's limit is answered 413 (the one
error body) before a byte of it is read, so neither BentoML's nor starlette's multipart parser
ever spools it to disk or memory. A body without Content-Length (chunked) is counted as it
streams in and cut at the limit: 413 the moment it crosses, and the handler reading it stops
there. Both answers close the connection, so the rest of the body is not even drained.

Overload: every 503 answered from inside (the decode budget, serving/pipeline.py) carries
Retry-After, so clients and Knative back off instead of retrying at once.

Limits per route: the caption routes and ``/events`` carry a base64 or multipart image
(``Settings.max_request_bytes``, derived from ``max_image_bytes``); every other route gets the
small limit (``Settings.max_small_request_bytes``), /feedback included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from snap2caption_service.serving.responses import error_body

RETRY_AFTER_S = 1
# BentoML logs every exception out of an API handler, traceback and all, on this logger.
BENTOML_HANDLER_LOGGER = "bentoml._internal.server.http_app"
log = logging.getLogger("snap2caption")


def _human(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"


class BodyTooLarge(Exception):
    """Raised into the handler that was reading a body past its limit (the client already has its 413)."""


def _cut_body(exc: BaseException | None) -> BodyTooLarge | None:
    seen = 0
    while exc is not None and seen < 8:  # the handler may have wrapped it
        if isinstance(exc, BodyTooLarge):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class CutBodyLogFilter(logging.Filter):
    """A body we cut is the client's doing, already answered 413: one info line, not an
    error with the handler's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        cut = _cut_body(record.exc_info[1] if record.exc_info else None)
        if cut is None:
            return True
        log.info("413: %s", cut)
        return False


_CUT_BODY_LOG_FILTER = CutBodyLogFilter()


class RequestLimitMiddleware:
    """413 for bodies over their route's limit, before they are read; Retry-After on every 503."""

    def __init__(
        self,
        app,
        limits: Mapping[str, int],
        default_limit: int,
        retry_after_s: int = RETRY_AFTER_S,
        image_bytes: int | None = None,
    ):
        for path, limit in {**limits, "*": default_limit}.items():
            if not isinstance(limit, int) or limit <= 0:
                raise ValueError(f"body limit for {path} must be a positive int, got {limit!r}")
        self.app = app
        self.limits = dict(limits)
        self.default_limit = default_limit
        # On the routes of ``limits`` the body is a photo plus a few options: too large means the
        # photo is, and clients branch on image_too_large as for a photo refused after reading.
        self.image_bytes = image_bytes
        self.retry_after = str(retry_after_s).encode()
        logging.getLogger(BENTOML_HANDLER_LOGGER).addFilter(_CUT_BODY_LOG_FILTER)  # once: same object

    def limit_for(self, path: str) -> int:
        return self.limits.get(path, self.default_limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        limit = self.limit_for(path)
        declared = None
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None  # the server's HTTP parser refuses these before we see them
        if declared is not None and declared > limit:
            return await self._too_large(send, path, limit, f"The request body is {_human(declared)}")

        received = 0
        answered = False  # our 413 went out: the app's own answer is dropped

        async def limited_receive():
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    answered = True
                    await self._too_large(send, path, limit, "The request body is larger")
                    raise BodyTooLarge(f"request body on {path} cut at {received} bytes; the limit is {limit}")
            return message

        async def checked_send(message):
            if answered:
                return
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers") or [])
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"retry-after", self.retry_after)]}
            await send(message)

        try:
            await self.app(scope, limited_receive, checked_send)
        except Exception:
            if not answered:
                raise
            # Answered already (BodyTooLarge, or whatever the handler made of it): it was only
            # told to stop reading.

    async def _too_large(self, send, path: str, limit: int, what: str) -> None:
        if self.image_bytes and path in self.limits:
            body = error_body(
                "image_too_large",
                f"{what}; photos may be at most {self.image_bytes} bytes ({_human(self.image_bytes)}), "
                f"so the limit on {path} is {_human(limit)}. Please send a smaller image.",
            )
        else:
            body = error_body(
                "request_too_large",
                f"{what}; the limit on {path} is {_human(limit)}. Please send a smaller request.",
            )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # Do not drain the rest of the body: close once the answer is out.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
