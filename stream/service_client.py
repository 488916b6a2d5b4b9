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

import httpx

from snap2caption_service.core.contracts import CaptionOptions, CaptionRequest, CaptionResult
from snap2caption_service.core.errors import Transient
from snap2caption_service.core.events import classify_answer
from stream.settings import StreamSettings

STAGE = "caption"
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


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
        body = CaptionRequest(image=base64.b64encode(image).decode("ascii"), **options.model_dump())
        try:
            resp = self.client.post(
                "/generate-caption", content=body.model_dump_json(), headers={"Content-Type": "application/json"}
            )
        except httpx.TimeoutException as exc:
            raise Transient("service_timeout", STAGE, type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise Transient("service_unavailable", STAGE, f"{type(exc).__name__}: {exc}") from None
        if resp.status_code == 200:
            return CaptionResult.model_validate_json(resp.content)
        raise classify_answer(resp.status_code, *_error_body(resp), STAGE)

    def close(self) -> None:
        self.client.close()


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
