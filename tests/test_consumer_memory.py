"""The consumer's memory bound (issue 13): what one worker holds while it captions an image of
fetch_max_bytes. The consumer needs about max_in_flight x that for images, plus max_pending x
the uploads topic's max.message.bytes for the records it holds until they are committed
(README, "Reliability")."""

from __future__ import annotations

import base64
import http.server
import json
import os
import threading
import tracemalloc
from collections import namedtuple

import httpx

from snap2caption_service.core.contracts import CaptionOptions, CaptionRequest
from stream.consumer import Captioned, Handler
from stream.service_client import ServiceClient, request_body
from stream_support import LoopbackServer, settings, upload_event

IMAGE_BYTES = 10 * 1024 * 1024
RESULT = json.dumps(
    {
        "caption": "hi",
        "hashtags": ["#a"],
        "alt_text": "a",
        "candidates": [],
        "model_version": "v",
        "request_id": "r",
        "latency_ms": 1.0,
        "image_sha256": "x",
    }
).encode()
Record = namedtuple("Record", "topic partition offset key value headers")


def test_the_request_body_is_the_caption_request_json():
    image = os.urandom(3 * 64 * 1024 * 2 + 7)  # several pieces, and padding at the end
    options = CaptionOptions(tone="dry", audience="promotional", num_hashtags=5, creator_id="c-1")
    length, pieces = request_body(image, options)
    body = b"".join(pieces)
    assert len(body) == length
    assert json.loads(body) == CaptionRequest(
        image=base64.b64encode(image).decode(), **options.model_dump()
    ).model_dump(exclude_unset=True)


class _Service(LoopbackServer):
    """Answers /generate-caption with a fixed result, reading the body as a server does, in
    pieces; notes the start, size and transfer encoding of each body."""

    def __init__(self):
        self.received = []
        service = self

        class Handler_(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                left, size = int(self.headers["Content-Length"]), 0
                head = self.rfile.read(min(left, 64))
                left -= len(head)
                size += len(head)
                while left:
                    chunk = self.rfile.read(min(left, 65536))
                    left -= len(chunk)
                    size += len(chunk)
                service.received.append((head, size, self.headers.get("Transfer-Encoding")))
                self.send_response(200)
                self.send_header("Content-Length", str(len(RESULT)))
                self.end_headers()
                self.wfile.write(RESULT)

            def log_message(self, *args):
                pass

        self.start(Handler_)


class _Fetcher:
    def fetch(self, ref):
        return os.urandom(IMAGE_BYTES)  # a fresh image of fetch_max_bytes, as a fetch returns


def test_a_worker_holds_its_image_and_little_more_while_it_is_captioned():
    """Before: 6.8 x the image at the peak (its base64 as bytes, as a str, in a JSON str, the
    JSON encoded, and base64's own 2 x working buffer): 64 workers x 10 MiB images = 4.3 GiB."""
    service = _Service()
    try:
        s = settings(retries=0, metrics_port=0, service_url=service.url)
        handler = Handler(s, _Fetcher(), ServiceClient(s), threading.Event())
        key, value, headers = upload_event("m-mem", {"url": "https://img.example/a.png"})
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            out = handler(Record("t", 0, 0, key, value, headers), 0.0)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    finally:
        service.close()
    assert isinstance(out, Captioned), out
    ((head, size, chunked),) = service.received
    assert head.startswith(b'{"image":"') and size > 4 * IMAGE_BYTES // 3  # the whole body arrived
    assert chunked is None  # sent with a Content-Length, as before
    print(f"\npeak while captioning one {IMAGE_BYTES >> 20} MiB image: {peak / IMAGE_BYTES:.2f} x the image")
    assert peak < 1.3 * IMAGE_BYTES


def test_the_service_still_gets_a_body_it_reads(monkeypatch):
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.read()))
        return httpx.Response(200, content=RESULT)

    client = ServiceClient(settings(service_url="http://svc.test"))
    client.client = httpx.Client(base_url="http://svc.test", transport=httpx.MockTransport(answer))
    image = os.urandom(1000)
    result = client.caption(image, CaptionOptions(tone="funny"))
    assert result.caption == "hi"
    assert seen[0]["image"] == base64.b64encode(image).decode() and seen[0]["tone"] == "funny"
