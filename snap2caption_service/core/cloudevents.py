"""CloudEvents 1.0 over Kafka (binary content mode) and HTTP, with JSON data.

Binary mode keeps the record value as the event data itself (JSON) and puts the context
attributes in headers: ``ce_specversion``, ``ce_id``, ``ce_source``, ``ce_type``, ``ce_time``
..., with the data's media type in ``content-type`` (Kafka protocol binding). Over HTTP the
same attributes are ``ce-*`` headers and ``Content-Type``. Structured mode
(``application/cloudevents+json``, the whole event as one JSON object) is accepted on input
so producers that only speak it still work; we always write binary mode.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import BaseModel

SPEC_VERSION = "1.0"
JSON = "application/json"
STRUCTURED = "application/cloudevents+json"
KAFKA_PREFIX = "ce_"
HTTP_PREFIX = "ce-"
# Attributes with their own field; everything else with the prefix is an extension.
_CORE = ("specversion", "id", "source", "type", "time", "subject", "dataschema")
# The spec asks for at most 20 characters but Knative's kafkaheader* attributes are longer.
_ATTR_NAME = re.compile(r"^[a-z0-9]+$")
# What a String attribute must not hold: C0 control characters and DEL (a newline cannot be an
# HTTP header), and lone surrogates (a JSON "\ud800" escape decodes to one; no UTF-8 encoder
# takes it back, so the output event and its headers could not be written). CloudEvents 1.0 also
# rules out C1 controls and noncharacters; they are let through: they encode, and HTTP header
# values arrive latin-1-decoded, where UTF-8 text such as "\u2026" shows up as C1 characters.
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")

_SURROGATE = re.compile(r"[\ud800-\udfff]")

Headers = list[tuple[str, bytes]]


class CloudEventError(ValueError):
    """The record is not a CloudEvent we can read. ``reason`` is a stable DLQ / 4xx code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class CloudEvent:
    id: str
    source: str
    type: str
    data: bytes = b""
    time: str | None = None
    subject: str | None = None
    datacontenttype: str | None = JSON
    dataschema: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)
    specversion: str = SPEC_VERSION

    def json(self):
        """The data parsed as JSON; CloudEventError('invalid_json') if it isn't."""
        if not is_json(self.datacontenttype):
            raise CloudEventError("unsupported_content_type", f"data content type {self.datacontenttype!r} is not JSON")
        try:
            return json.loads(self.data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CloudEventError("invalid_json", f"event data is not valid JSON: {exc}") from None

    def attributes(self) -> dict[str, str]:
        attrs = {"specversion": self.specversion, "id": self.id, "source": self.source, "type": self.type}
        for name in ("time", "subject", "dataschema"):
            if getattr(self, name):
                attrs[name] = getattr(self, name)
        attrs.update(self.extensions)
        return attrs


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event(
    type: str,
    source: str,
    data: BaseModel | dict,
    *,
    subject: str | None = None,
    id: str | None = None,
    extensions: dict[str, str] | None = None,
) -> CloudEvent:
    body = data.model_dump_json().encode() if isinstance(data, BaseModel) else json.dumps(data).encode()
    return CloudEvent(
        id=id or str(uuid.uuid4()),
        source=source,
        type=type,
        data=body,
        time=now_rfc3339(),
        subject=subject,
        datacontenttype=JSON,
        extensions=dict(extensions or {}),
    )


def is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # binary mode with no content-type: the binding's default, JSON
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or media.endswith("+json") or media == "text/json"


# --- Kafka -------------------------------------------------------------------------------


def to_kafka(event: CloudEvent) -> tuple[bytes, Headers]:
    """(value, headers) of the binary-mode record."""
    headers = [(KAFKA_PREFIX + k, v.encode()) for k, v in event.attributes().items()]
    if event.datacontenttype:
        headers.append(("content-type", event.datacontenttype.encode()))
    return event.data, headers


def from_kafka(value: bytes | None, headers: Headers | None) -> CloudEvent:
    """Parse a record (binary or structured mode); raises CloudEventError with a reason code."""
    if value is None:
        raise CloudEventError("empty_value", "the record has no value (a tombstone?)")
    texts = []
    for name, raw in headers or ():
        if _SURROGATE.search(name):
            # A key that was not UTF-8, kept by the Kafka client as lone surrogates
            # (stream/kafka_compat.py).
            raise CloudEventError("undecodable_header", f"header key {name!r} is not UTF-8")
        try:
            texts.append((name, raw.decode() if raw is not None else ""))
        except UnicodeDecodeError:
            raise CloudEventError("not_a_cloudevent", f"header {name!r} is not UTF-8") from None
    return _from_headers(value, texts, KAFKA_PREFIX)


# --- HTTP (Knative push mode) ------------------------------------------------------------


def to_http(event: CloudEvent) -> tuple[bytes, dict[str, str]]:
    headers = {HTTP_PREFIX + k: v for k, v in event.attributes().items()}
    if event.datacontenttype:
        headers["content-type"] = event.datacontenttype
    return event.data, headers


def from_http(body: bytes, headers: dict[str, str]) -> CloudEvent:
    return _from_headers(body, headers.items(), HTTP_PREFIX)


def _from_headers(body: bytes, headers: Iterable[tuple[str, str]], prefix: str) -> CloudEvent:
    """Binary mode: attributes from ``<prefix><name>`` headers; structured mode by content type."""
    attrs, content_type = {}, None
    for name, value in headers:
        lname = name.lower()
        if lname == "content-type":
            content_type = value
        elif lname.startswith(prefix):
            attrs[lname[len(prefix) :]] = value
    if content_type and content_type.split(";")[0].strip().lower() == STRUCTURED:
        return _from_structured(body)
    return _from_attrs(attrs, body, content_type)


# --- shared ------------------------------------------------------------------------------


def _from_attrs(attrs: dict[str, str], data: bytes, content_type: str | None) -> CloudEvent:
    missing = [a for a in ("specversion", "id", "source", "type") if not attrs.get(a)]
    if missing:
        raise CloudEventError("not_a_cloudevent", "missing CloudEvents attribute(s): " + ", ".join(missing))
    for name, value in attrs.items():
        _check_string(name, value)
    if attrs["specversion"] != SPEC_VERSION:
        raise CloudEventError(
            "unsupported_specversion", f"specversion {attrs['specversion']!r}; only {SPEC_VERSION} is supported"
        )
    if attrs.get("time"):
        _check_time(attrs["time"])
    extensions = {k: v for k, v in attrs.items() if k not in _CORE}
    for name in extensions:
        if not _ATTR_NAME.match(name):
            raise CloudEventError("not_a_cloudevent", f"invalid CloudEvents attribute name {name!r}")
    return CloudEvent(
        id=attrs["id"],
        source=attrs["source"],
        type=attrs["type"],
        data=data,
        time=attrs.get("time"),
        subject=attrs.get("subject"),
        datacontenttype=content_type,
        dataschema=attrs.get("dataschema"),
        extensions=extensions,
    )


def _from_structured(value: bytes) -> CloudEvent:
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CloudEventError("invalid_json", f"structured CloudEvent is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CloudEventError("not_a_cloudevent", "structured CloudEvent is not a JSON object")
    if "data_base64" in obj:
        try:
            data = base64.b64decode(obj["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise CloudEventError("invalid_json", "data_base64 is not valid base64") from None
    else:
        data = json.dumps(obj.get("data")).encode()
    attrs = {}
    for name, value in obj.items():
        if name in ("data", "data_base64", "datacontenttype") or value is None:  # null = absent
            continue
        attrs[name] = _scalar(name, value)
    content_type = obj.get("datacontenttype", JSON)
    if content_type is not None:
        content_type = _scalar("datacontenttype", content_type)
        _check_string("datacontenttype", content_type)
    return _from_attrs(attrs, data, content_type)


def _scalar(name: str, value) -> str:
    """A structured-mode attribute as its canonical string (JSON strings, integers, booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    raise CloudEventError(
        "invalid_attribute", f"attribute {name!r} is a JSON {type(value).__name__}, not a string, integer or boolean"
    )


def _check_string(name: str, value: str) -> None:
    """Raises CloudEventError('invalid_attribute') unless ``value`` is a CloudEvents String."""
    bad = _FORBIDDEN_CHARS.search(value)
    if bad:
        raise CloudEventError(
            "invalid_attribute",
            f"attribute {name!r} holds {ascii(bad.group())} at position {bad.start()}, which a CloudEvents "
            "String must not (control characters, lone surrogates)",
        )


def _check_time(value: str) -> None:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CloudEventError("not_a_cloudevent", f"time {value!r} is not an RFC 3339 timestamp") from None


def header(headers: Headers | None, name: str) -> str | None:
    """A header's value as text (last one wins), or None."""
    found = None
    for key, raw in headers or ():
        if key.lower() == name.lower() and raw is not None:
            found = raw.decode(errors="replace")
    return found
