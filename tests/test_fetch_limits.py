"""The URL fetcher's limits against hostile or broken image hosts, on a raw loopback socket
server that sends whatever bytes a test needs: stacked and bomb gzip, bytes trickled one a
second, silence, resets, 5xx. And /events' own bounded pool for fetches."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
import zlib

import anyio
import pytest

from conftest import free_port, png_bytes
from snap2caption_service.core.errors import Poison, Transient, UrlUnavailable
from snap2caption_service.core.fetch import ImageFetcher
from stream_support import settings


class RawSite:
    """A loopback TCP server: reads each request head, records it, then calls ``respond(conn)``."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.tls, self.server_names = tls, []
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self.requests: list[bytes] = []
        self.conns: list[socket.socket] = []
        self.closing = threading.Event()
        self.respond = self.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.tls is not None:
                    conn.settimeout(10)
                    conn = self.tls.wrap_socket(conn, server_side=True)
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                self.requests.append(head)
                self.respond(conn)
            except OSError:
                pass

    # responses --------------------------------------------------------------------------
    def send(self, data: bytes):
        return lambda conn: conn.sendall(data)

    def trickle(self, data: bytes, every: float, head: bytes = b""):
        def respond(conn):
            conn.sendall(head)
            for i in range(len(data)):
                if self.closing.wait(every):
                    return
                conn.sendall(data[i : i + 1])

        return respond

    def silence(self, conn) -> None:
        self.closing.wait(30)

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def site():
    s = RawSite()
    yield s
    s.close()


def _response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: image/png", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _fetcher(**kw) -> ImageFetcher:
    return ImageFetcher(settings(url_allowlist="127.0.0.1", **kw))


def _gzip_of_zeros(mib: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join(z.compress(block) for _ in range(mib)) + z.flush()


def _peak_memory(fn) -> tuple[object, int]:
    """(what fn raised, or returned; the peak of Python allocations while it ran, in bytes)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001  (the caller asserts on it)
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- compressed responses ----------------------------------------------------------------


def test_stacked_gzip_is_refused_without_inflating_it(site):
    """373 bytes of gzip(gzip(128 MiB of zeros)): before, httpx inflated both layers of the first
    chunk (128 MiB in memory) before the size cap looked at it."""
    bomb = gzip.compress(_gzip_of_zeros(128), 9)
    site.respond = site.send(_response(bomb, "Content-Encoding: gzip, gzip"))
    out, peak = _peak_memory(lambda: _fetcher(fetch_max_bytes=4096).fetch_url(site.url + "/bomb.png"))
    assert isinstance(out, Poison) and out.reason == "unsupported_content_encoding", out
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"
    assert b"accept-encoding: identity" in site.requests[0].lower()


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_unknown_content_encodings_are_refused(site, encoding):
    site.respond = site.send(_response(b"x" * 100, f"Content-Encoding: {encoding}"))
    with pytest.raises(Poison) as exc:
        _fetcher().fetch_url(site.url + "/a.png")
    assert exc.value.reason == "unsupported_content_encoding"


def test_one_gzip_layer_is_inflated_only_up_to_the_limit(site):
    """127 KiB of gzip (under the 256 KiB limit) that inflates to 128 MiB: refused as too large
    having inflated no more than the limit (before: up to 64 MiB per 64 KiB read)."""
    site.respond = site.send(_response(_gzip_of_zeros(128), "Content-Encoding: gzip"))
    out, peak = _peak_memory(lambda: _fetcher(fetch_max_bytes=256 * 1024).fetch_url(site.url + "/bomb.png"))
    assert isinstance(out, Poison) and out.reason == "image_too_large", out
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"


def test_one_gzip_layer_of_an_image_is_inflated(site):
    img = png_bytes()
    site.respond = site.send(_response(gzip.compress(img), "Content-Encoding: gzip"))
    assert _fetcher().fetch_url(site.url + "/a.png") == img
    site.respond = site.send(_response(gzip.compress(img)[:-20], "Content-Encoding: gzip"))
    with pytest.raises(Poison, match="invalid_content_encoding"):
        _fetcher().fetch_url(site.url + "/a.png")


def test_raw_bytes_are_counted_without_a_content_length(site):
    """No Content-Length, chunked: the cap is on what arrives."""
    chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b"x" * 1000) for _ in range(100)) + b"0\r\n\r\n"
    site.respond = site.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    with pytest.raises(Poison, match="image_too_large"):
        _fetcher(fetch_max_bytes=50_000).fetch_url(site.url + "/a.png")
    assert _fetcher(fetch_max_bytes=200_000).fetch_url(site.url + "/a.png") == b"x" * 100_000


# --- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for img.test and 127.0.0.1: (cert file, key file)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=img.test",
            "-addext",
            "subjectAltName=DNS:img.test,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_site(certificate):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certificate)
    s = RawSite(tls=ctx)
    yield s
    s.close()


def test_https_goes_to_the_checked_address_with_the_name_for_sni_and_verification(tls_site, certificate, monkeypatch):
    img = png_bytes()
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, *a, **k: real("127.0.0.1" if h == "img.test" else h, *a, **k))
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trusted by the fetcher's default context
    tls_site.respond = tls_site.send(_response(img))
    f = ImageFetcher(settings(url_allowlist="img.test"))
    assert f.fetch_url(f"https://img.test:{tls_site.port}/a.png") == img
    assert tls_site.server_names == ["img.test"]
    assert f"host: img.test:{tls_site.port}".encode() in tls_site.requests[0].lower()
    # Trickled over TLS: cut at the deadline like plain http.
    tls_site.respond = tls_site.trickle(b"x" * 20, 1.0, head=_response(b"").replace(b"Length: 0", b"Length: 20"))
    t0 = time.monotonic()
    with pytest.raises(UrlUnavailable, match="fetch_timeout"):
        ImageFetcher(settings(url_allowlist="img.test", fetch_timeout_s=1.5)).fetch_url(
            f"https://img.test:{tls_site.port}/a.png"
        )
    assert time.monotonic() - t0 < 2.5  # the deadline, not the 20 s the trickle lasts
    # A certificate we do not trust: the URL's fault.
    monkeypatch.delenv("SSL_CERT_FILE")
    tls_site.respond = tls_site.send(_response(img))
    with pytest.raises(Poison, match="tls_error"):
        ImageFetcher(settings(url_allowlist="img.test")).fetch_url(f"https://img.test:{tls_site.port}/a.png")


def test_a_tls_handshake_that_never_ends_is_cut_at_the_deadline(site):
    """The server accepts and says nothing: the client waits for its ServerHello."""
    site.respond = site.silence
    t0 = time.monotonic()
    with pytest.raises(UrlUnavailable, match="fetch_timeout"):
        _fetcher(fetch_timeout_s=1.0).fetch_url(f"https://127.0.0.1:{site.port}/a.png")
    assert time.monotonic() - t0 < 2.0


# --- one wall-clock deadline -------------------------------------------------------------


@pytest.mark.parametrize(
    "what",
    ["body", "headers", "silence"],
)
def test_a_trickling_or_silent_host_is_cut_at_the_deadline(site, what):
    """1 byte a second: each read is quick, so per-read timeouts never fire; before, the deadline
    was looked at only every 64 KiB and a trickled head not at all."""
    body = png_bytes()[:20]
    if what == "body":
        site.respond = site.trickle(body, 1.0, head=_response(b"").replace(b"Length: 0", b"Length: 20"))
    elif what == "headers":
        site.respond = site.trickle(_response(body), 1.0)
    else:
        site.respond = site.silence
    t0 = time.monotonic()
    with pytest.raises(UrlUnavailable) as exc:
        _fetcher(fetch_timeout_s=1.5).fetch_url(site.url + "/slow.png")
    elapsed = time.monotonic() - t0
    assert exc.value.reason == "fetch_timeout"
    assert 1.4 < elapsed < 2.5, elapsed


def test_the_deadline_spans_every_redirect(site):
    def hop(conn):
        site.closing.wait(0.4)
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n")

    site.respond = hop
    t0 = time.monotonic()
    with pytest.raises(UrlUnavailable, match="fetch_timeout"):
        _fetcher(fetch_timeout_s=1.0, fetch_max_redirects=20).fetch_url(site.url + "/a.png")
    assert time.monotonic() - t0 < 2.0
    assert len(site.requests) <= 3


def test_dns_is_bounded_by_the_same_deadline(monkeypatch):
    """A resolver that hangs: getaddrinfo has no timeout of its own."""
    real, released = socket.getaddrinfo, threading.Event()

    def slow(host, *args, **kw):
        if host == "slow-dns.test":
            released.wait(5)
            host = "127.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    t0 = time.monotonic()
    try:
        with pytest.raises(UrlUnavailable) as exc:
            _fetcher(fetch_timeout_s=0.5).fetch_url("https://slow-dns.test/a.png")
    finally:
        released.set()
    assert exc.value.reason == "dns_timeout"
    assert time.monotonic() - t0 < 1.5


# --- classification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", ["500 Internal Server Error", "502 Bad Gateway", "503 Service Unavailable", "429 Too Many Requests"]
)
def test_an_unwell_image_host_is_url_unavailable(site, status):
    site.respond = site.send(_response(b"", status=status))
    with pytest.raises(UrlUnavailable) as exc:
        _fetcher().fetch_url(site.url + "/a.png")
    assert exc.value.reason == "fetch_unavailable" and status[:3] in exc.value.detail


def test_refused_reset_and_unresolvable_hosts_are_url_unavailable(site, monkeypatch):
    with pytest.raises(UrlUnavailable, match="fetch_unavailable"):  # nothing listens
        _fetcher().fetch_url(f"http://127.0.0.1:{free_port()}/a.png")
    site.respond = site.send(_response(b"x" * 10).replace(b"Content-Length: 10", b"Content-Length: 500"))
    with pytest.raises(UrlUnavailable, match="fetch_unavailable"):  # closed mid-body
        _fetcher().fetch_url(site.url + "/a.png")
    site.respond = lambda conn: None  # closed without an answer
    with pytest.raises(UrlUnavailable, match="fetch_unavailable"):
        _fetcher().fetch_url(site.url + "/a.png")

    def dns_down(host, *args, **kw):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", dns_down)
    with pytest.raises(UrlUnavailable, match="dns_unavailable"):
        _fetcher().fetch_url("https://img.example/a.png")


def test_the_image_host_s_own_refusals_stay_poison(site):
    for status, reason in [("404 Not Found", "url_not_found"), ("403 Forbidden", "url_forbidden")]:
        site.respond = site.send(_response(b"", status=status))
        with pytest.raises(Poison) as exc:
            _fetcher().fetch_url(site.url + "/a.png")
        assert exc.value.reason == reason
    site.respond = site.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    with pytest.raises(Poison, match="invalid_http_response"):
        _fetcher().fetch_url(site.url + "/a.png")


# --- /events: fetches on their own bounded pool ------------------------------------------

UPLOAD_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "evt-1",
    "ce-source": "urn:uploader",
    "ce-type": "com.snap2caption.media.uploaded",
    "content-type": "application/json",
}


def test_events_fetches_run_on_their_own_bounded_pool(site):
    """Two hanging image hosts fill a pool of two: a third URL event is answered 503 with
    Retry-After at once, and the API's own thread pool (image decoding, /feedback) stays free.
    Before, fetches borrowed the API's threads and the third event queued behind them."""
    from snap2caption_service.core.settings import FetchSettings
    from snap2caption_service.serving.push import PushHandler

    site.respond = site.silence
    handler = PushHandler(
        FetchSettings(_env_file=None, url_allowlist="127.0.0.1", fetch_max_concurrency=2, fetch_timeout_s=20)
    )
    body = json.dumps({"media_id": "m", "creator_id": "c", "image": {"url": site.url + "/a.png"}}).encode()

    async def caption(image, options):  # never reached: every fetch here fails
        raise AssertionError("captioned")

    async def main():
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2  # a small API pool
        answers = []

        async def post():
            answers.append(await handler.handle(UPLOAD_HEADERS, body, caption))

        async with anyio.create_task_group() as tg:
            tg.start_soon(post)
            tg.start_soon(post)
            with anyio.fail_after(5):
                while len(site.requests) < 2:
                    await anyio.sleep(0.02)
            with anyio.fail_after(1):
                busy = await handler.handle(UPLOAD_HEADERS, body, caption)
            with anyio.fail_after(1):  # the API's threads are not the fetches'
                assert await anyio.to_thread.run_sync(lambda: 42) == 42
            inline = json.dumps({"media_id": "m", "creator_id": "c", "image": {"inline_base64": "*"}}).encode()
            with anyio.fail_after(1):  # inline images need no fetch slot
                bad_inline = await handler.handle(UPLOAD_HEADERS, inline, caption)
            site.close()  # the hung hosts hang up
        return busy, bad_inline, answers

    busy, bad_inline, answers = anyio.run(main)
    assert busy.status_code == 503 and busy.headers["retry-after"], busy.body
    assert json.loads(busy.body)["error"] == "fetch_busy"
    assert bad_inline.status_code == 400
    assert [a.status_code for a in answers] == [503, 503]  # the hang-ups: url_unavailable, retried
    assert len(site.requests) == 2


def test_s3_outages_stay_plain_transient(monkeypatch):
    """Our own S3 is retried, never dead-lettered: not a UrlUnavailable."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    f = ImageFetcher(settings(aws_endpoint_url_s3=f"http://127.0.0.1:{free_port()}", s3_buckets="b", fetch_timeout_s=2))
    with pytest.raises(Transient) as exc:
        f.fetch_s3("s3://b/a.png")
    assert exc.value.reason == "s3_unavailable" and not isinstance(exc.value, UrlUnavailable)
