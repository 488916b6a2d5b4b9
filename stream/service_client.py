"""The consumer's client for the captioning service: POST /generate-caption.

Going through the HTTP API (rather than loading a model here) means Kafka traffic shares
the service's adaptive batcher, auth, limits and metrics with every other caller. Answers
are classified by core/events.py: a 4xx about the image is Poison (DLQ, reason = the service's error code);
429, 5xx, timeouts and connection errors are Transient (retry). 401/403/404 mean this
consumer is misconfigured (key, URL), which is not the event's fault either: Transient.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import httpx

from snap2caption_service.core.contracts import CaptionOptions, CaptionResult
from snap2caption_service.core.errors import Transient
from snap2caption_service.core.events import classify_answer
from stream.settings import StreamSettings

STAGE = "caption"
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_B64_PIECE = 3 * 64 * 1024  # image bytes per base64 piece: a multiple of 3, so no padding between pieces


class ServiceClient:
    def __init__(self, settings: StreamSettings):
        headers = {"Authorization": f"Bearer {settings.service_api_key}"} if settings.service_api_key else {}
        self.client = httpx.Client(
            base_url=settings.service_url.rstrip("/"),
            headers=headers,
            trust_env=False,
            timeout=httpx.Timeout(settings.service_timeout_s, connect=5.0),
            limits=httpx.Limits(
                max_connections=settings.max_in_flight + 4, max_keepalive_connections=settings.max_in_flight + 4
            ),
        )

    def caption(self, image: bytes, options: CaptionOptions) -> CaptionResult:
        length, body = request_body(image, options)
        headers = {"Content-Type": "application/json", "Content-Length": str(length)}
        try:
            resp = self.client.post("/generate-caption", content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise Transient("service_timeout", STAGE, type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise Transient("service_unavailable", STAGE, f"{type(exc).__name__}: {exc}") from None
        if resp.status_code == 200:
            return CaptionResult.model_validate_json(resp.content)
        raise classify_answer(resp.status_code, *_error_body(resp), STAGE)

    def close(self) -> None:
        self.client.close()


def request_body(image: bytes, options: CaptionOptions) -> tuple[int, Iterator[bytes]]:
    """(length, pieces) of the CaptionRequest JSON, the base64 image made piece by piece as it
    is sent: a worker holds its image and one piece, never the image's base64 (4/3 of it, and
    twice that while base64 makes it), nor a str or a joined body of it. So the consumer needs
    about max_in_flight x fetch_max_bytes for images (before: 6.8 x that, measured)."""
    head = b'{"image":"'
    opts = options.model_dump_json().encode()
    tail = b'"' + (b"," + opts[1:] if len(opts) > 2 else b"}")

    def pieces() -> Iterator[bytes]:
        yield head
        view = memoryview(image)
        for start in range(0, len(image), _B64_PIECE):
            yield base64.b64encode(view[start : start + _B64_PIECE])
        yield tail

    return len(head) + 4 * ((len(image) + 2) // 3) + len(tail), pieces()


def _error_body(resp: httpx.Response) -> tuple[str, str]:
    try:
        body = resp.json()
    except ValueError:
        return "", resp.text[:300]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        # Our ErrorBody carries a stable code; BentoML's own errors put a sentence there.
        if _CODE.match(body["error"]):
            return body["error"], str(body.get("detail", ""))[:300]
        return "", body["error"][:300]
    return "", str(body)[:300]
