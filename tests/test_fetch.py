"""Unit tests for snap2caption_service.core.fetch: the SSRF rules, and the image fetchers
(inline, URL and S3) against a local web server and moto's S3 server."""

from __future__ import annotations

import base64
import ipaddress
import socket

import pytest

from conftest import free_port, png_bytes
from snap2caption_service.core.contracts import ImageRef
from snap2caption_service.core.errors import Poison, Transient, UrlUnavailable
from snap2caption_service.core.fetch import ImageFetcher, UrlPolicy, blocked_reason
from stream_support import image_site, moto_s3, settings  # noqa: F401  (fixtures)

# --- SSRF rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "fd00:ec2::254",
        "fe80::1",
        "0.0.0.0",
        "100.64.0.1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_blocked(address):
    assert blocked_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_allowlist_opens_hosts_and_cidrs_but_not_metadata_by_accident():
    policy = UrlPolicy.from_settings(settings(url_allowlist="127.0.0.1, 10.0.0.0/8, 169.254.0.0/16, img.local"))
    ip = ipaddress.ip_address
    assert policy.address_allowed("127.0.0.1", ip("127.0.0.1"))
    assert policy.address_allowed("x", ip("10.9.9.9"))
    assert policy.address_allowed("img.local", ip("192.168.7.7"))  # an allowlisted name may resolve anywhere
    assert not policy.address_allowed("x", ip("192.168.7.7"))
    assert policy.address_allowed("x", ip("169.254.1.1"))
    assert not policy.address_allowed("x", ip("169.254.169.254"))  # a broad CIDR does not open metadata
    assert UrlPolicy.from_settings(settings(url_allowlist="169.254.169.254")).address_allowed(
        "x", ip("169.254.169.254")
    )


def _fetcher(**kw) -> ImageFetcher:
    return ImageFetcher(settings(**kw))


@pytest.mark.parametrize(
    "url,reason",
    [
        ("https://127.0.0.1/x.png", "ssrf_blocked"),
        ("https://localhost/x.png", "ssrf_blocked"),
        ("https://169.254.169.254/latest/meta-data/", "ssrf_blocked"),
        ("https://[fd00:ec2::254]/latest/", "ssrf_blocked"),
        ("https://10.0.0.1/x.png", "ssrf_blocked"),
        ("https://2130706433/x.png", "invalid_url"),  # 127.0.0.1 as a decimal integer (tests/test_ssrf.py)
        ("http://example.com/x.png", "url_scheme_not_allowed"),
        ("https://user:pw@example.com/x.png", "invalid_url"),
        ("https://name.invalid/x.png", "url_unresolvable"),
    ],
)
def test_url_fetch_refusals(url, reason):
    with pytest.raises(Poison) as exc:
        _fetcher().fetch_url(url)
    assert (exc.value.reason, exc.value.stage) == (reason, "fetch")


def test_url_fetch_from_allowlisted_server_and_every_redirect_hop_rechecked(image_site):
    img = png_bytes()
    image_site.routes.update(
        {
            "/a.png": img,
            "/hop": ("redirect", "/a.png"),
            "/to-private": ("redirect", "https://10.1.1.1/x.png"),
            "/to-meta": ("redirect", "https://169.254.169.254/latest/meta-data/"),
            "/to-file": ("redirect", "file:///etc/passwd"),
            "/loop": ("redirect", "/loop"),
            "/big": b"x" * 5000,
            "/gone": 404,
            "/busy": 503,
        }
    )
    f = _fetcher(url_allowlist="127.0.0.1", fetch_max_bytes=4096, fetch_max_redirects=3)
    assert f.fetch_url(image_site.url + "/a.png") == img
    assert f.fetch_url(image_site.url + "/hop") == img
    for path, reason in [
        ("/to-private", "ssrf_blocked"),
        ("/to-meta", "ssrf_blocked"),
        ("/to-file", "url_scheme_not_allowed"),
        ("/loop", "too_many_redirects"),
        ("/big", "image_too_large"),
        ("/gone", "url_not_found"),
    ]:
        with pytest.raises(Poison) as exc:
            f.fetch_url(image_site.url + path)
        assert exc.value.reason == reason, path
    assert image_site.hits["/loop"] == 4  # the first request plus 3 redirects, then refused
    with pytest.raises(UrlUnavailable):  # the image host's outage: dead-lettered after bounded retries
        f.fetch_url(image_site.url + "/busy")
    # Without the allowlist the very same server is refused before any request is made.
    hits = dict(image_site.hits)
    with pytest.raises(Poison, match="url_scheme_not_allowed"):
        _fetcher().fetch_url(image_site.url + "/a.png")
    with pytest.raises(Poison, match="ssrf_blocked"):
        _fetcher(url_allowlist="10.0.0.0/8").fetch_url(
            image_site.url.replace("http://127.0.0.1", "https://localhost") + "/a.png"
        )
    assert image_site.hits == hits


def test_connection_goes_to_the_checked_address(image_site, monkeypatch):
    """DNS rebinding: the name is resolved once, checked, and that address is what is dialled;
    the Host header keeps the name."""
    image_site.routes["/a.png"] = png_bytes()
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"] + ["10.66.66.66"] * 10)  # a rebinding DNS: safe first, then private

    def fake(host, *args, **kw):
        if host == "img.test":
            return real(next(answers), *args, **kw)
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    port = image_site.url.rsplit(":", 1)[1]
    f = _fetcher(url_allowlist="127.0.0.1")
    with pytest.raises(Poison, match="url_scheme_not_allowed"):  # http to a name not on the list
        f.fetch_url(f"http://img.test:{port}/a.png")
    f = _fetcher(url_allowlist="127.0.0.1,img.test")
    assert f.fetch_url(f"http://img.test:{port}/a.png") == png_bytes()
    assert image_site.hosts[-1] == f"img.test:{port}"
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *a, **k: real("10.66.66.66", *a, **k) if host == "evil.test" else real(host, *a, **k),
    )
    with pytest.raises(Poison, match="ssrf_blocked"):
        _fetcher(url_allowlist="127.0.0.1").fetch_url("https://evil.test/a.png")


def test_slow_download_is_url_unavailable_not_poison(image_site):
    image_site.routes["/slow"] = ("slow", 3.0, b"x" * 30)
    with pytest.raises(UrlUnavailable) as exc:
        _fetcher(url_allowlist="127.0.0.1", fetch_timeout_s=0.5).fetch_url(image_site.url + "/slow")
    assert exc.value.reason == "fetch_timeout"


def test_inline_fetch_limits():
    f = _fetcher(fetch_max_bytes=2048)
    small = png_bytes(size=(8, 8))
    assert f.fetch(ImageRef(inline_base64=base64.b64encode(small).decode())) == small
    with pytest.raises(Poison, match="invalid_base64"):
        f.fetch(ImageRef(inline_base64="not*base64!"))
    with pytest.raises(Poison, match="image_too_large"):
        f.fetch(ImageRef(inline_base64=base64.b64encode(b"x" * 4096).decode()))


def test_s3_fetch(moto_s3):
    img = png_bytes()
    uri = moto_s3.put("unit/a.png", img)
    big = moto_s3.put("unit/big.bin", b"x" * 5000)
    other = moto_s3.put("unit/x.png", img, bucket="someone-elses-bucket")
    kw = dict(aws_endpoint_url_s3=moto_s3.endpoint, s3_buckets=moto_s3.bucket, fetch_max_bytes=4096)
    f = _fetcher(**kw)
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    assert f.fetch(ImageRef(s3_uri=uri)) == img
    for ref, reason in [
        (f"s3://{moto_s3.bucket}/unit/missing.png", "object_not_found"),
        (big, "image_too_large"),
        (other, "s3_bucket_not_allowed"),
    ]:
        with pytest.raises(Poison) as exc:
            f.fetch(ImageRef(s3_uri=ref))
        assert exc.value.reason == reason
    down = _fetcher(**{**kw, "aws_endpoint_url_s3": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(Transient, match="s3_unavailable") as exc:
        down.fetch(ImageRef(s3_uri=uri))
    assert not isinstance(exc.value, UrlUnavailable)  # our own S3: retried, never dead-lettered
