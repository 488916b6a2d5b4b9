"""The fetcher's SSRF rules, table-driven: every address form an upload event's URL (or its DNS
answer, or a redirect) can reach -> allowed, or the reason it is blocked. IPv6 forms that embed an
IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64) are judged by the address they
embed; numeric IPv4 spellings other than the dotted quad are refused before any DNS lookup."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from conftest import png_bytes
from snap2caption_service.core.errors import Poison
from snap2caption_service.core.fetch import ImageFetcher, UrlPolicy, blocked_reason
from stream_support import image_site, settings  # noqa: F401  (fixtures)

# address -> None (a public address: fetched) or a fragment of the reason it is blocked
ADDRESS_FORMS = [
    # public
    ("8.8.8.8", None),
    ("93.184.216.34", None),
    ("2606:4700:4700::1111", None),
    ("::ffff:8.8.8.8", None),  # IPv4-mapped public: it is 8.8.8.8
    ("2002:808:808::1", None),  # 6to4 of a public address
    ("64:ff9b::808:808", None),  # NAT64 (DNS64 on an IPv6-only cluster) of a public address
    # plain IPv4
    ("127.0.0.1", "a loopback address"),
    ("127.8.9.10", "a loopback address"),
    ("10.1.2.3", "a private address"),
    ("172.16.0.1", "a private address"),
    ("192.168.1.1", "a private address"),
    ("169.254.1.1", "a link-local address"),
    ("0.0.0.0", "not a public address"),
    ("100.64.0.1", "not a public address"),  # carrier-grade NAT
    ("224.0.0.1", "not a public address"),
    ("255.255.255.255", "not a public address"),
    # cloud metadata and credential endpoints (an allowlisted CIDR never opens these)
    ("169.254.169.254", "a cloud metadata address"),  # AWS, GCP, Azure, Oracle, OpenStack, DigitalOcean
    ("169.254.170.2", "a cloud metadata address"),  # AWS ECS task credentials
    ("169.254.170.23", "a cloud metadata address"),  # AWS EKS Pod Identity agent
    ("fd00:ec2::254", "a cloud metadata address"),  # AWS IMDS over IPv6
    ("fd00:ec2::23", "a cloud metadata address"),  # EKS Pod Identity over IPv6
    ("fd20:ce::254", "a cloud metadata address"),  # GCP metadata over IPv6
    ("100.100.100.200", "a cloud metadata address"),  # Alibaba Cloud
    ("192.0.0.192", "a cloud metadata address"),  # Oracle Cloud (classic)
    ("168.63.129.16", "a cloud metadata address"),  # Azure WireServer: a public address
    ("169.254.0.23", "a cloud metadata address"),  # Tencent Cloud
    ("169.254.42.42", "a cloud metadata address"),  # Scaleway
    # plain IPv6
    ("::1", "a loopback address"),
    ("::", "not a public address"),
    ("fe80::1", "a link-local address"),
    ("fd12:3456::1", "a private address"),
    ("2001:db8::1", "a private address"),
    ("fec0::1", "a site-local address"),  # deprecated site-local: passed before
    ("fec0::a9fe:a9fe", "a site-local address"),
    # IPv4-mapped ::ffff:0:0/96
    ("::ffff:127.0.0.1", "an IPv4-mapped address embedding 127.0.0.1, a loopback address"),
    ("::ffff:10.0.0.1", "embedding 10.0.0.1, a private address"),
    ("::ffff:169.254.169.254", "embedding 169.254.169.254, a cloud metadata address"),
    # IPv4-compatible ::/96 (deprecated: never fetched from)
    ("::127.0.0.1", "an IPv4-compatible address embedding 127.0.0.1, a loopback address"),
    ("::169.254.169.254", "embedding 169.254.169.254, a cloud metadata address"),
    ("::8.8.8.8", "an IPv4-compatible address"),
    # 6to4 2002::/16 (the IPv4 address is bits 16-47): passed before
    ("2002:7f00:1::", "a 6to4 address embedding 127.0.0.1, a loopback address"),
    ("2002:a9fe:a9fe::1", "a 6to4 address embedding 169.254.169.254, a cloud metadata address"),
    ("2002:a00:1::", "a 6to4 address embedding 10.0.0.1, a private address"),
    # Teredo 2001::/32 (the client is the last 32 bits XOR 0xffffffff)
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "a Teredo address embedding 127.0.0.1, a loopback address"),
    ("2001:0:4136:e378:8000:63bf:5601:5601", "a Teredo address embedding 169.254.169.254"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "a Teredo address"),  # client 8.8.8.8: still a tunnel
    # NAT64 64:ff9b::/96 and the local-use 64:ff9b:1::/48
    ("64:ff9b::7f00:1", "a NAT64 address embedding 127.0.0.1, a loopback address"),
    ("64:ff9b::a9fe:a9fe", "a NAT64 address embedding 169.254.169.254, a cloud metadata address"),
    ("64:ff9b::a00:1", "a NAT64 address embedding 10.0.0.1, a private address"),
    ("64:ff9b:1::808:808", "a local-use NAT64 address"),
]


@pytest.mark.parametrize("address,reason", ADDRESS_FORMS, ids=[a for a, _ in ADDRESS_FORMS])
def test_address_forms(address, reason):
    got = blocked_reason(ipaddress.ip_address(address))
    if reason is None:
        assert got is None, got
    else:
        assert got is not None and reason in got, got


def test_the_table_covers_every_form():
    assert len(ADDRESS_FORMS) >= 25


def test_an_allowlisted_range_does_not_open_metadata_through_an_embedded_form():
    ip = ipaddress.ip_address
    policy = UrlPolicy.from_settings(settings(url_allowlist="2002::/16, 64:ff9b::/96, ::ffff:0:0/96"))
    assert policy.address_allowed("x", ip("2002:a00:1::"))  # the operator opened 6to4
    for meta in ("2002:a9fe:a9fe::", "64:ff9b::a9fe:a9fe", "::ffff:169.254.169.254"):
        assert not policy.address_allowed("x", ip(meta)), meta
    # Only the exact address opens a metadata endpoint, in any spelling of it.
    exact = UrlPolicy.from_settings(settings(url_allowlist="169.254.169.254"))
    assert exact.address_allowed("x", ip("::ffff:169.254.169.254"))


# --- URLs --------------------------------------------------------------------------------

NUMERIC_HOSTS = [
    "2130706433",  # 127.0.0.1 as one decimal number
    "0x7f.1",  # hex first part, short form
    "017700000001",  # octal
    "0x7f000001",
    "127.1",  # inet_aton short form
    "0177.0.0.1",  # octal first part
    "010.0.0.1",  # 8.0.0.1 to inet_aton, 10.0.0.1 to a reader
    "127.0.0.1.",  # trailing dot
    "example.0x7f",  # ends in a number: an IPv4 spelling to a WHATWG parser
]


@pytest.mark.parametrize("host", NUMERIC_HOSTS)
def test_numeric_ipv4_spellings_are_refused_before_any_lookup(host, monkeypatch):
    """Whatever the resolver would make of them (glibc reads them as inet_aton does; another may
    send them to DNS), they are refused, even with loopback allowlisted."""
    looked_up = []
    real = socket.getaddrinfo

    def spy(name, *args, **kw):
        looked_up.append(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    for scheme in ("https", "http"):
        with pytest.raises(Poison) as exc:
            ImageFetcher(settings(url_allowlist="127.0.0.0/8")).fetch_url(f"{scheme}://{host}/x.png")
        assert exc.value.reason == "invalid_url", exc.value
    assert looked_up == []


@pytest.mark.parametrize(
    "location,reason",
    [
        ("https://[::ffff:169.254.169.254]/latest/meta-data/", "ssrf_blocked"),
        ("https://[::ffff:a9fe:a9fe]/latest/meta-data/", "ssrf_blocked"),
        ("https://[2002:a9fe:a9fe::]/latest/meta-data/", "ssrf_blocked"),
        ("https://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "ssrf_blocked"),
        ("https://[2001:0:4136:e378:8000:63bf:5601:5601]/", "ssrf_blocked"),
        ("https://[fec0::1]/x.png", "ssrf_blocked"),
        ("https://[fd00:ec2::254]/latest/", "ssrf_blocked"),
        ("https://100.100.100.200/latest/meta-data/", "ssrf_blocked"),
        ("https://168.63.129.16/machine?comp=goalstate", "ssrf_blocked"),
        ("https://2130706433/x.png", "invalid_url"),
        ("https://0x7f.1/x.png", "invalid_url"),
    ],
)
def test_every_redirect_hop_is_checked_like_the_first(image_site, location, reason):
    image_site.routes.update({"/a.png": png_bytes(), "/hop": ("redirect", location)})
    f = ImageFetcher(settings(url_allowlist="127.0.0.1"))
    assert f.fetch_url(image_site.url + "/a.png") == png_bytes()
    with pytest.raises(Poison) as exc:
        f.fetch_url(image_site.url + "/hop")
    assert exc.value.reason == reason, exc.value


@pytest.mark.parametrize("answer", ["2002:7f00:1::", "64:ff9b::a9fe:a9fe", "fec0::1", "::ffff:10.0.0.1"])
def test_dns_answers_in_embedded_forms_are_blocked(answer, monkeypatch):
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *a, **k: real(answer, *a, **k) if host == "img.test" else real(host, *a, **k),
    )
    with pytest.raises(Poison) as exc:
        ImageFetcher(settings()).fetch_url("https://img.test/a.png")
    assert exc.value.reason == "ssrf_blocked" and answer.split("::")[0] in exc.value.detail
