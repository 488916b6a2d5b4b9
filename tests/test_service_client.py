"""Unit tests for stream/service_client.py: the captioning service's answers and connection
errors, classified as Poison or Transient."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import free_port, png_bytes
from snap2caption_service.core.contracts import CaptionOptions
from snap2caption_service.core.errors import Poison, Transient
from stream.service_client import ServiceClient
from stream_support import settings


@pytest.mark.parametrize(
    "status,body,kind,reason",
    [
        (415, {"error": "not_an_image", "detail": "x"}, Poison, "not_an_image"),
        (413, {"error": "image_too_large", "detail": "x"}, Poison, "image_too_large"),
        (400, {"error": "1 validation error for CaptionRequest ..."}, Poison, "service_rejected_400"),
        (503, {"error": "overloaded"}, Transient, "overloaded"),
        (429, "slow down", Transient, "service_http_429"),
        (500, {"error": "injected_fault", "detail": "x"}, Transient, "injected_fault"),
        (401, {"error": "unauthorized", "detail": "x"}, Transient, "unauthorized"),  # our config, not the event
    ],
)
def test_service_answers_are_classified(status, body, kind, reason):
    client = ServiceClient(settings(service_url="http://svc.test"))
    payload = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
    client.client = httpx.Client(
        base_url="http://svc.test", transport=httpx.MockTransport(lambda req: httpx.Response(status, content=payload))
    )
    with pytest.raises(kind) as exc:
        client.caption(png_bytes(), CaptionOptions())
    assert (exc.value.reason, exc.value.stage) == (reason, "caption")


def test_service_connection_errors_are_transient():
    client = ServiceClient(settings(service_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(Transient, match="service_unavailable"):
        client.caption(png_bytes(), CaptionOptions())
