"""Request limits (issue 13): serving/limits.py's body limit and Retry-After, driven as a bare
ASGI app and over real HTTP against the service; the decode budget of serving/pipeline.py."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from snap2caption_service.core import images
from snap2caption_service.core.settings import Settings
from snap2caption_service.serving.limits import RequestLimitMiddleware

MB = 1 << 20


# --- the middleware as a bare ASGI app ------------------------------------------------------


def run_asgi(mw, path="/generate-caption", headers=(), chunks=(b"",)):
    """Drive ``mw`` with a request whose body arrives as ``chunks``; returns (messages sent, chunks read)."""
    sent, read = [], []
    pending = list(chunks)

    async def receive():
        if not pending:
            return {"type": "http.disconnect"}
        body = pending.pop(0)
        read.append(body)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
    asyncio.run(mw(scope, receive, send))
    return sent, read


def reading_app(status=200, headers=(), catch=False):
    """An app that reads the whole body (as a handler or multipart parser does), then answers."""
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["path"])
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
        except Exception:  # noqa: BLE001 - what BentoML's endpoint wrapper does: answer 500
            if not catch:
                raise
            status_ = 500
        else:
            status_ = status
        await send({"type": "http.response.start", "status": status_, "headers": list(headers)})
        await send({"type": "http.response.body", "body": b"handler"})

    return app, calls


def test_declared_length_over_the_limit_is_refused_before_the_body_is_read():
    app, calls = reading_app()
    mw = RequestLimitMiddleware(app, {"/generate-caption": 1000}, default_limit=100)
    sent, read = run_asgi(mw, headers=[(b"content-length", b"1001")], chunks=[b"x" * 1001])
    assert calls == [] and read == []  # neither the app nor the body was touched
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    body = json.loads(sent[1]["body"])
    assert body["error"] == "request_too_large" and "/generate-caption" in body["detail"]


@pytest.mark.parametrize("catch", [False, True])
def test_a_streamed_body_is_cut_at_the_limit(catch):
    """No Content-Length (chunked): counted as it arrives; 413 the moment it crosses the limit,
    nothing more is read, and whatever the handler answers after that is dropped."""
    app, calls = reading_app(catch=catch)
    mw = RequestLimitMiddleware(app, {"/generate-caption": 10}, default_limit=100)
    sent, read = run_asgi(mw, chunks=[b"a" * 5, b"b" * 5, b"c" * 5, b"d" * 5, b"e" * 5])
    assert calls == ["/generate-caption"]
    assert read == [b"a" * 5, b"b" * 5, b"c" * 5]  # cut at 15 > 10: d and e never read
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["error"] == "request_too_large"


def test_a_cut_body_is_logged_as_one_line_not_as_an_error(caplog):
    import logging

    from snap2caption_service.serving.limits import BENTOML_HANDLER_LOGGER, BodyTooLarge

    RequestLimitMiddleware(None, {}, default_limit=1)  # installs the filter
    bentoml_log = logging.getLogger(BENTOML_HANDLER_LOGGER)
    with caplog.at_level(logging.INFO):
        for exc in (BodyTooLarge("request body on /x cut at 20 bytes"), ValueError("other")):
            try:
                try:
                    raise exc
                except BodyTooLarge as cut:
                    raise RuntimeError("what a parser makes of it") from cut
            except Exception:
                bentoml_log.exception("Exception on /x [POST]")
    errors = [r for r in caplog.records if r.name == BENTOML_HANDLER_LOGGER]
    assert [type(r.exc_info[1]) for r in errors] == [ValueError]  # other errors still logged as errors
    assert any(r.levelno == logging.INFO and "cut at 20 bytes" in r.getMessage() for r in caplog.records)


def test_bodies_within_the_limit_pass_untouched():
    app, calls = reading_app()
    mw = RequestLimitMiddleware(app, {"/generate-caption": 10}, default_limit=100)
    sent, read = run_asgi(mw, headers=[(b"content-length", b"10")], chunks=[b"12345", b"67890"])
    assert calls == ["/generate-caption"] and sent[0]["status"] == 200 and sent[1]["body"] == b"handler"


@pytest.mark.parametrize(
    "path,size,status",
    [
        ("/generate-caption", 900, 200),
        ("/generate-caption/upload", 900, 200),
        ("/events", 900, 200),
        ("/feedback", 900, 413),  # everything else gets the small limit
        ("/feedback", 100, 200),
        ("/anything-else", 101, 413),
    ],
)
def test_limits_are_per_route(path, size, status):
    app, _ = reading_app()
    routes = dict.fromkeys(("/generate-caption", "/generate-caption/upload", "/events"), 1000)
    mw = RequestLimitMiddleware(app, routes, default_limit=100)
    for headers, chunks in (([(b"content-length", str(size).encode())], [b"x" * size]), ([], [b"x" * size])):
        sent, _ = run_asgi(mw, path, headers, chunks)
        assert sent[0]["status"] == status


@pytest.mark.parametrize(
    "status,headers,expected",
    [
        (503, [], [(b"retry-after", b"1")]),
        (503, [(b"Retry-After", b"5")], [(b"Retry-After", b"5")]),  # the handler's own value stands
        (500, [], []),
        (200, [], []),
    ],
)
def test_every_503_carries_retry_after(status, headers, expected):
    app, _ = reading_app(status=status, headers=headers)
    sent, _ = run_asgi(RequestLimitMiddleware(app, {}, default_limit=100), "/generate-caption", (), [b"{}"])
    assert sent[0]["status"] == status and sent[0]["headers"] == expected


def test_other_scopes_pass_through_and_limits_are_checked():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(RequestLimitMiddleware(app, {}, default_limit=1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
    with pytest.raises(ValueError, match="/events"):
        RequestLimitMiddleware(app, {"/events": 0}, default_limit=1)


def test_the_caption_limit_is_derived_from_the_image_limit_and_admits_every_image_the_handler_would():
    s = Settings(_env_file=None, max_image_bytes=3 * MB)
    assert s.max_request_bytes == 4 * MB + 64 * 1024
    assert Settings(_env_file=None).max_request_bytes == 10 * MB * 4 // 3 + 64 * 1024
    assert Settings(_env_file=None, max_request_bytes=123_456).max_request_bytes == 123_456
    assert Settings(_env_file=None).max_small_request_bytes == 128 * 1024
    # The largest image the handlers accept, as JSON (base64 with padding, the longest tone) and
    # as a multipart upload, fits under the body limit: the middleware never refuses it first.
    image = os.urandom(s.max_image_bytes)
    body = json.dumps(
        {
            "image": base64.b64encode(image).decode(),
            "tone": "t" * 200,
            "audience": "business",
            "num_hashtags": 30,
            "platform": "generic",
        }
    )
    assert len(body) <= s.max_request_bytes
    request = httpx.Request("POST", "http://x/", files={"image": ("photo.jpg", image)}, data={"tone": "t" * 200})
    assert len(request.read()) <= s.max_request_bytes


def test_the_small_limit_admits_the_largest_valid_feedback():
    from snap2caption_service.core import contracts

    emoji = "\U0001f600"  # one character, 12 bytes as JSON escapes (a surrogate pair)
    fields = {
        "request_id": "0" * 32,
        "rating": "down",
        "edited_caption": emoji * contracts.MAX_CAPTION_CHARS,
        "edited_hashtags": [emoji * contracts.MAX_HASHTAG_CHARS] * contracts.MAX_HASHTAGS_LIST,
        "reason": emoji * contracts.MAX_REASON_CHARS,
        "creator_id": emoji * contracts.MAX_CREATOR_ID_CHARS,
    }
    contracts.FeedbackRequest.model_validate(fields)  # valid: the handler would accept it
    assert len(json.dumps(fields, ensure_ascii=True)) <= Settings(_env_file=None).max_small_request_bytes


# --- the decode budget around prepare_image ---------------------------------------------------


def png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_prepare_image_bounds_pixels_decoded_at_once(monkeypatch):
    """16 threads, each with a 1 MP image, against a 2 MP budget: never more than two decoded
    (full-size bitmaps alive) at once, and the budget is only given back once the bitmap is shrunk."""
    from snap2caption_service.serving import pipeline

    s = Settings(_env_file=None, decode_budget_pixels=2_000_000, decode_wait_s=60, model_image_side=64)
    budget = pipeline.decode_budget(s.decode_budget_pixels)
    lock, alive, peak = threading.Lock(), [0], [0]
    real_load, real_downscale = images.load_image, images.downscale

    def load(*args):
        img = real_load(*args)
        with lock:
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            assert 0 <= budget.free <= budget.capacity
        time.sleep(0.02)
        return img

    def shrink(img, side):
        out = real_downscale(img, side)
        with lock:
            alive[0] -= 1
        return out

    monkeypatch.setattr(images, "load_image", load)
    monkeypatch.setattr(images, "downscale", shrink)
    data = png((1000, 1000))
    results = []
    threads = [threading.Thread(target=lambda: results.append(pipeline.prepare_image(data, s))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 16 and all(r.image.size == (64, 64) for r in results)
    assert peak[0] == 2
    assert budget.free == budget.capacity


def test_prepare_image_answers_overloaded_when_no_budget_comes_free():
    from snap2caption_service.serving import pipeline

    s = Settings(_env_file=None, decode_budget_pixels=1_000_000, decode_wait_s=0.05)
    budget = pipeline.decode_budget(s.decode_budget_pixels)
    with budget.hold(1_000_000, wait_s=1):
        with pytest.raises(images.DecodeBusy) as err:
            pipeline.prepare_image(png((200, 200)), s)
        assert err.value.status == 503
        # What needs no decoding is answered at once, budget or not.
        with pytest.raises(images.ImageError) as bad:
            pipeline.prepare_image(b"plain text, not a picture", s)
        assert bad.value.status == 415
        huge = Settings(_env_file=None, decode_budget_pixels=1_000_000, decode_wait_s=0.05, max_image_pixels=1024)
        with pytest.raises(images.ImageError) as big:
            pipeline.prepare_image(png((200, 200)), huge)
        assert big.value.code == "too_many_pixels"
    assert pipeline.prepare_image(png((200, 200)), s).image.size == (200, 200)


# --- over real HTTP, against the service ---------------------------------------------------------


@pytest.fixture(scope="module")
def limits_service(tmp_path_factory, tiny_model_dir):
    """The service with its own TMPDIR, to see whether anything is spooled there."""
    from conftest import start_service, stop_service

    tmp = tmp_path_factory.mktemp("svc-limits")
    (tmp / "tmpdir").mkdir()
    svc = start_service(tmp, tiny_model_dir, {"TMPDIR": str(tmp / "tmpdir")})
    svc.tmpdir = tmp / "tmpdir"
    yield svc
    stop_service(svc.proc)


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size if p.is_file() else -1 for p in folder.rglob("*")}


def raw_post(url: str, path: str, headers: dict[str, str], body_parts, timeout: float = 20):
    """POST over a bare socket: send the head and ``body_parts`` (stopping if the server hangs
    up), then read the answer. Lets a test send a head that promises more than it sends."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode())
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed: read what it said
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


MULTIPART_HEAD = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.service
@pytest.mark.parametrize(
    "path,content_type,size",
    [
        ("/generate-caption/upload", "multipart/form-data; boundary=b0undary", 50_000_000),
        ("/generate-caption", "application/json", 50_000_000),
        ("/events", "application/json", 50_000_000),
        ("/feedback", "application/json", 200_000),
    ],
)
def test_an_oversized_body_is_refused_before_it_is_read(limits_service, path, content_type, size):
    """The head promises ``size`` bytes and only 64 KiB follow: the 413 can only come before
    the body is read (before the fix the service waited for the rest: a timeout here)."""
    before = tree(limits_service.tmpdir)
    t0 = time.monotonic()
    status, headers, body = raw_post(
        limits_service.url,
        path,
        {"Content-Type": content_type, "Content-Length": str(size)},
        [MULTIPART_HEAD + b"\xff" * 65536],
    )
    assert status == 413, body
    assert json.loads(body)["error"] == ("request_too_large" if path == "/feedback" else "image_too_large")
    assert headers.get("connection") == "close"
    assert time.monotonic() - t0 < 10
    assert tree(limits_service.tmpdir) == before


@pytest.mark.service
@pytest.mark.parametrize(
    "path,content_type,head",
    [
        ("/generate-caption/upload", "multipart/form-data; boundary=b0undary", MULTIPART_HEAD),
        ("/generate-caption", "application/json", b'{"image": "'),
        ("/feedback", "application/json", b'{"request_id": "'),
    ],
)
def test_a_chunked_body_without_length_is_cut_at_the_limit(limits_service, path, content_type, head):
    """Chunked, never finished: 1 MiB chunks up to 2 MiB past the limit, then silence. The 413
    comes when the limit is crossed (before the fix the service waited for the end: a timeout)."""
    s = Settings(_env_file=None)
    limit = s.max_small_request_bytes if path == "/feedback" else s.max_request_bytes
    step = min(MB, limit // 4)
    parts = [chunked(head)] + [chunked(b"A" * step) for _ in range(limit // step + 2)]
    before = tree(limits_service.tmpdir)
    status, headers, body = raw_post(
        limits_service.url, path, {"Content-Type": content_type, "Transfer-Encoding": "chunked"}, parts
    )
    assert status == 413, body
    assert json.loads(body)["error"] == ("request_too_large" if path == "/feedback" else "image_too_large")
    assert tree(limits_service.tmpdir) == before
    assert "BodyTooLarge" not in limits_service.log()  # the handler's traceback is not logged as an error


@pytest.mark.service
def test_a_50_mb_upload_from_a_real_client_gets_413_and_nothing_is_spooled(limits_service):
    before = tree(limits_service.tmpdir)
    with limits_service.client() as c:
        t0 = time.monotonic()
        r = c.post("/generate-caption/upload", files={"image": ("big.jpg", b"\xff\xd8\xff" + b"\0" * 50_000_000)})
        elapsed = time.monotonic() - t0
        assert r.status_code == 413, r.text
        # Before the fix: 413 image_too_large too, but from the handler, after starlette had
        # spooled the 50 MB and BentoML had written them again into its request folder here.
        assert tree(limits_service.tmpdir) == before
        assert r.json()["error"] == "image_too_large"
        assert elapsed < 20
        # The service is fine, and an ordinary upload still goes through (and, unlike the
        # refused one, does leave BentoML's request folder in TMPDIR: the check above can see it).
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
        ok = c.post("/generate-caption/upload", files={"image": ("ok.png", buf.getvalue())})
        assert ok.status_code == 200, ok.text
        assert any(name.startswith("bentoml-request-") for name in tree(limits_service.tmpdir))
        # Small bodies on the small-limit route are untouched by the limit.
        fb = c.post("/feedback", json={"request_id": "0" * 32, "rating": "up"})
        assert fb.status_code == 404, fb.text
