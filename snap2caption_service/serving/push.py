"""Knative push mode: an upload CloudEvent in over HTTP, the captioned CloudEvent back.

A Knative KafkaSource (or a Trigger) POSTs each record to ``/events`` in binary mode. When
the Kafka record was itself a binary-mode CloudEvent, KafkaSource forwards its attributes
as they are; otherwise it wraps the record as ``dev.knative.kafka.event`` with ``ce-id:
partition:N/offset:M`` and every Kafka header as a ``kafkaheader<name>`` attribute. Both
shapes are accepted here.

The reply is the captioned event in binary mode (``ce-*`` headers, JSON body), which a
Knative sink forwards as the reply event. A bad event gets a 4xx with ``{"error": reason,
"stage": ..., "detail": ...}`` (Knative does not retry those: they go to the
deadLetterSink); a transient failure gets 503 with Retry-After, which Knative retries. No
retries happen here: the delivery spec's retry/backoff owns that. Decoding the upload and
classifying a refusal follow the consumer's rules (core/events.py).

Fetching an image by reference (URL, S3) goes through the service's one fetch pool
(serving/image_fetch.py), shared with ``/generate-caption``'s ``image_url``: threads of its own,
never the API's; 503 ``fetch_busy`` with Retry-After at once when they are all busy.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

import bentoml
from starlette.responses import Response

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import (
    EVENT_TYPE_CAPTIONED,
    CaptionedEvent,
    CaptionOptions,
    CaptionResult,
    UploadEvent,
)
from snap2caption_service.core.errors import ErrorAnswer, Poison, Transient
from snap2caption_service.core.events import check_type, classify_answer, decode_upload
from snap2caption_service.core.settings import FetchSettings
from snap2caption_service.serving.image_fetch import RETRY_AFTER_S, FetchPool, poison_status
from snap2caption_service.serving.responses import error_response

KAFKA_SOURCE_TYPE = "dev.knative.kafka.event"
SOURCE = "urn:snap2caption:service:events"
_NOT_ALNUM = re.compile(r"[^a-z0-9]")

# caption(image bytes, options) -> CaptionResult; raises ErrorAnswer when the service refuses
CaptionFn = Callable[[bytes, CaptionOptions], Awaitable[CaptionResult]]


def kafka_headers(event: cloudevents.CloudEvent) -> dict[str, str]:
    """The original Kafka headers KafkaSource carried as kafkaheader* attributes (names sanitized)."""
    return {
        name[len("kafkaheader") :]: value for name, value in event.extensions.items() if name.startswith("kafkaheader")
    }


class PushRequest(bentoml.IODescriptor):
    """The /events input: the raw body and headers, so that *we* parse them and name the reason
    for a bad event (BentoML's own JSON parsing answers 500 to a body that isn't JSON)."""

    body: bytes = b""
    headers: dict[str, str] = {}

    @classmethod
    async def from_http_request(cls, request, serde) -> PushRequest:
        return cls(body=await request.body(), headers=dict(request.headers))


class PushHandler:
    def __init__(self, settings: FetchSettings | None = None, pool: FetchPool | None = None):
        """``pool``: the service's fetch pool; without one, a pool of its own from ``settings``."""
        self.pool = pool or FetchPool(settings)

    def decode(self, headers: Mapping[str, str], body: bytes) -> tuple[cloudevents.CloudEvent, UploadEvent, str]:
        """(event, upload data, id of the original upload event); raises Poison."""
        if not body:
            raise Poison("empty_value", "decode", "the request has no body")
        try:
            event = cloudevents.from_http(body, dict(headers))
        except cloudevents.CloudEventError as exc:
            raise Poison(exc.reason, "decode", exc.detail) from None
        source_id = event.id
        if event.type == KAFKA_SOURCE_TYPE:
            original = kafka_headers(event)
            original_type = original.get(_NOT_ALNUM.sub("", "ce_type"))
            if original_type is not None:
                check_type(original_type, "the Kafka record")
            source_id = original.get(_NOT_ALNUM.sub("", "ce_id")) or event.id
        else:
            check_type(event.type, "/events")
        return event, decode_upload(event), source_id

    async def handle(self, headers: Mapping[str, str], body: bytes, caption: CaptionFn) -> Response:
        t0 = time.perf_counter()
        try:
            event, upload, source_id = self.decode(headers, body)
            image = await self.pool.fetch(upload.image)
            t1 = time.perf_counter()
            try:
                result = await caption(image, upload.options())
            except ErrorAnswer as exc:
                raise classify_answer(exc.status, exc.code, exc.detail) from None
            t2 = time.perf_counter()
        except Poison as exc:
            return error_response(poison_status(exc), exc.reason, exc.detail, exc.stage)
        except Transient as exc:  # Knative retries a 503, with its delivery spec's backoff
            return error_response(503, exc.reason, exc.detail, exc.stage, {"Retry-After": RETRY_AFTER_S})
        timings = {
            "fetch_ms": (t1 - t0) * 1000,
            "caption_ms": (t2 - t1) * 1000,
            "total_ms": (time.perf_counter() - t0) * 1000,
        }
        data_out = CaptionedEvent.from_result(result, upload, source_id, timings)
        out = cloudevents.new_event(
            EVENT_TYPE_CAPTIONED,
            SOURCE,
            data_out,
            subject=upload.media_id,
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}#{event.id}")),
            extensions={"partitionkey": upload.media_id},
        )
        body, out_headers = cloudevents.to_http(out)
        return Response(body, status_code=200, headers=out_headers, media_type=out.datacontenttype)
