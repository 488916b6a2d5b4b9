"""Upload events in, and the service's answers classified: one set of rules for the Kafka
consumer (stream/consumer.py) and the service's own Knative push endpoint (serving/push.py).

- ``decode_upload`` turns a CloudEvent into the upload it carries, or raises Poison with the
  reason (wrong type, not JSON, schema violation).
- ``classify_answer`` says what a refusal by the captioning service means for the event:
  Poison (the image is wrong: dead-letter it) or Transient (overload, outage, a
  misconfigured key or URL: not the event's fault, retry).
"""

from __future__ import annotations

from pydantic import ValidationError

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import EVENT_TYPE_UPLOADED, UploadEvent
from snap2caption_service.core.errors import Poison, Transient

# Answers that mean "this image cannot be captioned": the same event will always get them.
POISON_STATUSES = frozenset({400, 413, 415, 422})


def check_type(event_type: str | None, where: str) -> None:
    if event_type != EVENT_TYPE_UPLOADED:
        raise Poison("unexpected_event_type", "decode", f"type {event_type!r}; {where} carries {EVENT_TYPE_UPLOADED}")


def decode_upload(event: cloudevents.CloudEvent) -> UploadEvent:
    """The upload an ``media.uploaded`` event's data describes; raises Poison."""
    try:
        payload = event.json()
    except cloudevents.CloudEventError as exc:
        raise Poison(exc.reason, "decode", exc.detail) from None
    try:
        return UploadEvent.model_validate(payload)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}" for e in exc.errors()[:5])
        raise Poison("schema_violation", "validate", errors) from None


def classify_answer(status: int, code: str, detail: str, stage: str = "caption") -> Poison | Transient:
    """What the service's refusal (HTTP ``status``, error ``code``) means for the event."""
    if status in POISON_STATUSES:
        err = Poison(code or f"service_rejected_{status}", stage, detail)
        err.status = status
        return err
    return Transient(code or f"service_http_{status}", stage, f"{status}: {detail}")
