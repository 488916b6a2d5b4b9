"""POST /generate-caption with ``image_url``: the service fetches the photo through the same
SSRF-guarded fetcher, and under the same limits, as an event's image URL, then captions it.
Every failed fetch is a 4xx naming the reason, or 502/504 when the image host failed; never a
500, never a caption. Runs on the real service (tiny model) with 127.0.0.1 allowlisted, as a
deployment would allowlist its own image host; image hosts are local HTTP servers."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time

import httpx
import pytest

from conftest import png_bytes, start_service, stop_service
from stream_support import ImageSite

pytestmark = pytest.mark.service

FETCH_TIMEOUT_S = 2.0
FETCH_MAX_BYTES = 64 * 1024
FETCH_MAX_CONCURRENCY = 2


@pytest.fixture(scope="module")
def url_service(tmp_path_factory, tiny_model_dir):
    svc = start_service(
        tmp_path_factory.mktemp("svc-image-url"),
        tiny_model_dir,
        {
            "SNAP2CAPTION_URL_ALLOWLIST": "127.0.0.1",
            "SNAP2CAPTION_FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S),
            "SNAP2CAPTION_FETCH_MAX_BYTES": str(FETCH_MAX_BYTES),
            "SNAP2CAPTION_FETCH_MAX_CONCURRENCY": str(FETCH_MAX_CONCURRENCY),
        },
    )
    yield svc
    stop_service(svc.proc)


@pytest.fixture(scope="module")
def site():
    site = ImageSite()
    yield site
    site.close()


class Listener:
    """A TCP listener on 127.0.0.2: loopback, but not the allowlisted 127.0.0.1."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.2", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]

    def connected(self) -> bool:
        """Whether anything connected (a connection waits in the backlog until accepted)."""
        try:
            conn, _ = self.sock.accept()
        except TimeoutError:
            return False
        conn.close()
        return True


@pytest.fixture
def forbidden_listener():
    listener = Listener()
    yield listener
    listener.sock.close()


def post(svc, body: dict) -> httpx.Response:
    with svc.client() as c:
        return c.post("/generate-caption", json=body)


def assert_error(r: httpx.Response, status: int, code: str, detail_part: str = "") -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code, body
    assert detail_part in body["detail"], body
    return body


def test_an_image_url_is_fetched_and_captioned(url_service, site):
    image = png_bytes((30, 140, 200))
    site.routes["/photo.png"] = image
    r = post(url_service, {"image_url": f"{site.url}/photo.png", "tone": "witty", "num_candidates": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["caption"].strip() and len(body["candidates"]) == 2
    assert body["image_sha256"] == hashlib.sha256(image).hexdigest()  # the very bytes the site served
    assert site.hits["/photo.png"] == 1

    site.routes["/moved"] = ("redirect", "/photo.png")  # redirects are followed, each hop checked
    r = post(url_service, {"image_url": f"{site.url}/moved"})
    assert r.status_code == 200 and r.json()["image_sha256"] == body["image_sha256"], r.text


@pytest.mark.parametrize(
    "body,wanted",
    [
        ({"tone": "funny"}, "a photo is required: send image"),
        ({"image": "aGk=", "image_url": "https://example.com/a.png"}, "exactly one of image and image_url"),
    ],
    ids=["neither", "both"],
)
def test_exactly_one_of_image_and_image_url(url_service, body, wanted):
    err = assert_error(post(url_service, body), 400, "invalid_request", wanted)
    assert len(err["fields"]) == 1 and "image" in err["fields"][0]["loc"], err


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "file:///etc/passwd", "https://", "https://example.com/" + "a" * 4100]
)
def test_an_address_that_is_not_a_web_url_is_an_invalid_request(url_service, url):
    err = assert_error(post(url_service, {"image_url": url}), 400, "invalid_request")
    assert any("image_url" in f["loc"] for f in err["fields"]), err


@pytest.mark.parametrize(
    "url,reason",
    [
        ("https://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("https://10.0.0.1/photo.jpg", "a private address"),
        ("https://[::ffff:10.0.0.1]/photo.jpg", "embedding 10.0.0.1, a private address"),
        ("https://2130706433/photo.jpg", "not a dotted-quad"),
    ],
)
def test_blocked_addresses_are_refused_with_the_reason(url_service, url, reason):
    code = "invalid_url" if reason == "not a dotted-quad" else "ssrf_blocked"
    err = assert_error(post(url_service, {"image_url": url}), 422, code, reason)
    assert err["stage"] == "fetch"


def test_a_blocked_address_is_never_connected_to(url_service, site, forbidden_listener):
    port = forbidden_listener.port
    err = assert_error(
        post(url_service, {"image_url": f"https://127.0.0.2:{port}/photo.png"}), 422, "ssrf_blocked", "loopback"
    )
    assert "127.0.0.2" in err["detail"]
    # ... nor through a redirect from an allowed host: every hop is checked before connecting.
    site.routes["/to-internal"] = ("redirect", f"https://127.0.0.2:{port}/admin")
    assert_error(post(url_service, {"image_url": f"{site.url}/to-internal"}), 422, "ssrf_blocked", "loopback")
    assert site.hits["/to-internal"] == 1
    assert not forbidden_listener.connected()


def test_plain_http_to_a_host_not_allowlisted_is_refused(url_service):
    assert_error(
        post(url_service, {"image_url": "http://example.com/photo.png"}), 422, "url_scheme_not_allowed", "use https"
    )


def test_what_the_host_answers_is_named(url_service, site):
    site.routes["/gone.png"] = 404
    assert_error(post(url_service, {"image_url": f"{site.url}/gone.png"}), 422, "url_not_found", "404")
    site.routes["/private.png"] = 403
    assert_error(post(url_service, {"image_url": f"{site.url}/private.png"}), 422, "url_forbidden", "403")
    site.routes["/loop"] = ("redirect", "/loop")
    assert_error(post(url_service, {"image_url": f"{site.url}/loop"}), 422, "too_many_redirects")


def test_too_large_and_not_an_image(url_service, site):
    site.routes["/huge.png"] = b"\x89PNG" + b"\0" * (FETCH_MAX_BYTES + 1)
    assert_error(post(url_service, {"image_url": f"{site.url}/huge.png"}), 413, "image_too_large", str(FETCH_MAX_BYTES))
    site.routes["/page.html"] = b"<!doctype html><title>A page</title><p>not an image</p>"
    assert_error(post(url_service, {"image_url": f"{site.url}/page.html"}), 415, "not_an_image")


def test_an_upstream_error_is_a_bad_gateway(url_service, site):
    site.routes["/broken.png"] = 500
    err = assert_error(post(url_service, {"image_url": f"{site.url}/broken.png"}), 502, "fetch_unavailable", "500")
    assert err["stage"] == "fetch"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert_error(post(url_service, {"image_url": f"http://127.0.0.1:{closed}/a.png"}), 502, "fetch_unavailable")


def test_a_slow_host_is_a_gateway_timeout_within_the_limit(url_service, site):
    site.routes["/slow.png"] = ("slow", 30.0, png_bytes())  # a byte at a time, for 30 s
    t0 = time.monotonic()
    assert_error(post(url_service, {"image_url": f"{site.url}/slow.png"}), 504, "fetch_timeout")
    assert time.monotonic() - t0 < FETCH_TIMEOUT_S + 4


def test_fetches_share_one_bounded_pool(url_service, site):
    """Hanging hosts holding every fetch slot: one more image_url is 503 fetch_busy at once, and
    captioning a photo sent inline does not wait for them."""
    site.routes["/hang.png"] = ("slow", 30.0, png_bytes())
    answers: list[httpx.Response] = []
    hanging = [
        threading.Thread(target=lambda: answers.append(post(url_service, {"image_url": f"{site.url}/hang.png"})))
        for _ in range(FETCH_MAX_CONCURRENCY)
    ]
    for t in hanging:
        t.start()
    deadline = time.monotonic() + 5
    while site.hits.get("/hang.png", 0) < FETCH_MAX_CONCURRENCY and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    busy = post(url_service, {"image_url": f"{site.url}/hang.png"})
    busy_s = time.monotonic() - t0
    inline = post(url_service, {"image": base64.b64encode(png_bytes()).decode()})
    for t in hanging:
        t.join(30)
    assert_error(busy, 503, "fetch_busy", "SNAP2CAPTION_FETCH_MAX_CONCURRENCY")
    assert busy.headers["retry-after"] and busy_s < FETCH_TIMEOUT_S, busy_s  # not queued for a slot
    assert inline.status_code == 200, inline.text
    assert sorted(a.status_code for a in answers) == [504] * FETCH_MAX_CONCURRENCY
