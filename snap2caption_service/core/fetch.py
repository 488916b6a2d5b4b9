"""Image fetchers for upload events: S3 (boto3), HTTP(S) (httpx) and inline base64.

Each returns the raw image bytes or raises ``Poison`` (the event is at fault: DLQ) or
``Transient`` (try again later). Every source obeys the same size limit.

SSRF: an upload event names a URL chosen by whoever produced it, and the consumer runs
inside the platform's network, so a URL must not reach loopback, private, link-local or
cloud-metadata addresses unless they are allowlisted. The host is resolved here, every
address is checked, and the connection goes to the checked address (the Host header and TLS
SNI keep the name), so a DNS answer that changes between check and connect cannot slip
through. Redirects are followed by hand, each hop checked again, at most
``fetch_max_redirects`` of them. Plain http is refused unless the host is allowlisted.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from urllib.parse import urljoin

import httpx

from snap2caption_service.core.contracts import ImageRef
from snap2caption_service.core.errors import Poison, Transient
from snap2caption_service.core.images import ImageError, decode_base64_image
from snap2caption_service.core.settings import FetchSettings
from snap2caption_service.core.storage import s3_client

STAGE = "fetch"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud instance-metadata endpoints (AWS IPv4/IPv6, ECS task metadata, Alibaba, Oracle-style).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "192.0.0.192")
)
REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


def _too_large(size: int | None, limit: int) -> Poison:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return Poison("image_too_large", STAGE, f"the image is {what}; the limit is {limit} bytes")


# --- SSRF rules --------------------------------------------------------------------------


def blocked_reason(ip: IPAddress) -> str | None:
    """Why an address must not be fetched from by default (None = a public address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


class UrlPolicy:
    """Which hosts and addresses a URL may reach; built from ``url_allowlist``."""

    def __init__(self, names: frozenset[str] = frozenset(), nets: tuple = ()):
        self.names, self.nets = names, nets

    @classmethod
    def from_settings(cls, settings: FetchSettings) -> UrlPolicy:
        return cls(*settings.url_allow())

    def host_allowlisted(self, host: str) -> bool:
        host = host.lower().rstrip(".").strip("[]")
        if host in self.names:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.nets)

    def address_allowed(self, host: str, ip: IPAddress) -> bool:
        if blocked_reason(ip) is None or host.lower().rstrip(".") in self.names:
            return True
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        for net in self.nets:
            if plain in net:
                # Metadata endpoints hand out credentials: a broad CIDR such as 169.254.0.0/16
                # does not open them, only the exact address does.
                return plain not in METADATA_ADDRESSES or net.num_addresses == 1
        return False

    def check_url(self, url: httpx.URL) -> None:
        """Scheme and host rules that need no DNS; raises Poison."""
        if url.scheme not in ("http", "https"):
            raise Poison("url_scheme_not_allowed", STAGE, f"{url.scheme}:// URLs are not fetched")
        if not url.host:
            raise Poison("invalid_url", STAGE, "the URL has no host")
        if url.userinfo:
            raise Poison("invalid_url", STAGE, "URLs with credentials are not fetched")
        if url.scheme == "http" and not self.host_allowlisted(url.host):
            raise Poison(
                "url_scheme_not_allowed",
                STAGE,
                f"plain http to {url.host} is refused; use https (or allowlist the host)",
            )

    def resolve(self, host: str, port: int) -> IPAddress:
        """The address to connect to, after checking every address the name resolves to."""
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_AGAIN,):
                raise Transient("dns_unavailable", STAGE, f"resolving {host}: {exc}") from None
            raise Poison("url_unresolvable", STAGE, f"{host} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
        for ip in addresses:
            if not self.address_allowed(host, ip):
                raise Poison("ssrf_blocked", STAGE, f"{host} resolves to {ip}, {blocked_reason(ip)}")
        return addresses[0]


# --- fetchers ----------------------------------------------------------------------------


class ImageFetcher:
    def __init__(self, settings: FetchSettings, s3_client=None, max_connections: int = 10):
        self.settings = settings
        self.max_connections = max(10, max_connections)
        self.max_bytes = settings.fetch_max_bytes
        self.policy = UrlPolicy.from_settings(settings)
        self.buckets = settings.bucket_allowlist
        self._s3 = s3_client
        self._s3_lock = threading.Lock()  # boto3 client creation is not thread-safe
        self._ssl = ssl.create_default_context()

    def fetch(self, ref: ImageRef) -> bytes:
        if ref.s3_uri is not None:
            return self.fetch_s3(ref.s3_uri)
        if ref.url is not None:
            return self.fetch_url(ref.url)
        return self.fetch_inline(ref.inline_base64 or "")

    # inline -------------------------------------------------------------------------------
    def fetch_inline(self, payload: str) -> bytes:
        try:
            return decode_base64_image(payload, self.max_bytes)
        except ImageError as exc:
            raise Poison(exc.code, STAGE, exc.detail) from None

    # S3 -----------------------------------------------------------------------------------
    @property
    def s3(self):
        with self._s3_lock:
            return self._s3 or self._make_s3()

    def _make_s3(self):
        from botocore.config import Config

        # The client, its endpoint and region rules: core/storage.py. The endpoint stays a fetch
        # setting so a fetcher can be pointed at its own S3 (the same AWS_ENDPOINT_URL_S3 by default).
        self._s3 = s3_client(
            endpoint_url=self.settings.aws_endpoint_url_s3,
            config=Config(
                connect_timeout=min(5.0, self.settings.fetch_timeout_s),
                read_timeout=self.settings.fetch_timeout_s,
                retries={"max_attempts": 1, "mode": "standard"},  # the consumer retries
                max_pool_connections=self.max_connections,
            ),
        )
        return self._s3

    def fetch_s3(self, uri: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        bucket, _, key = uri[len("s3://") :].partition("/")
        if bucket not in self.buckets:
            raise Poison("s3_bucket_not_allowed", STAGE, f"bucket {bucket!r} is not in SNAP2CAPTION_S3_BUCKETS")
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
            size = obj.get("ContentLength")
            if size is not None and size > self.max_bytes:
                obj["Body"].close()
                raise _too_large(size, self.max_bytes)
            data = obj["Body"].read(self.max_bytes + 1)
            obj["Body"].close()
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            detail = f"{uri}: {code} {err.get('Message', '')}".strip()
            if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
                raise Poison("object_not_found", STAGE, detail) from None
            if status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout", "Throttling"):
                raise Transient("s3_unavailable", STAGE, detail) from None
            if code in ("AccessDenied", "403") or status == 403:
                raise Poison("object_access_denied", STAGE, detail) from None
            raise Poison("s3_error", STAGE, detail) from None
        except NoCredentialsError as exc:
            raise Transient("s3_no_credentials", STAGE, str(exc)) from None
        except (BotoCoreError, OSError) as exc:  # endpoint down, timeouts, connection resets
            raise Transient("s3_unavailable", STAGE, f"{uri}: {exc}") from None
        if len(data) > self.max_bytes:
            raise _too_large(None, self.max_bytes)
        return data

    # HTTP(S) ------------------------------------------------------------------------------
    def fetch_url(self, url: str) -> bytes:
        deadline = time.monotonic() + self.settings.fetch_timeout_s
        current = url
        for _hop in range(self.settings.fetch_max_redirects + 1):
            try:
                target = httpx.URL(current)
            except (httpx.InvalidURL, ValueError) as exc:
                raise Poison("invalid_url", STAGE, f"{current!r}: {exc}") from None
            self.policy.check_url(target)
            ip = self.policy.resolve(target.host, target.port or (443 if target.scheme == "https" else 80))
            status, location, data = self._get_pinned(target, ip, deadline)
            if status in REDIRECTS:
                if not location:
                    raise Poison("url_fetch_failed", STAGE, f"{status} redirect without Location from {target}")
                current = urljoin(str(target), location)
                continue
            return data
        raise Poison("too_many_redirects", STAGE, f"more than {self.settings.fetch_max_redirects} redirects from {url}")

    def _get_pinned(self, url: httpx.URL, ip: IPAddress, deadline: float) -> tuple[int, str | None, bytes]:
        host = url.host
        pinned = url.copy_with(host=str(ip))
        default_port = 443 if url.scheme == "https" else 80
        host_header = host if (url.port in (None, default_port)) else f"{host}:{url.port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if url.port in (None, default_port) else f"[{host}]:{url.port}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Transient("fetch_timeout", STAGE, f"{url}: over {self.settings.fetch_timeout_s}s")
        # A client per hop: pooled connections are keyed by address, and a TLS session
        # verified for one name must never carry a request for another name on that address.
        try:
            with httpx.Client(
                verify=self._ssl, trust_env=False, follow_redirects=False, timeout=httpx.Timeout(remaining)
            ) as client:
                with client.stream(
                    "GET", pinned, headers={"Host": host_header, "Accept": "image/*"}, extensions={"sni_hostname": host}
                ) as resp:
                    status = resp.status_code
                    if status in REDIRECTS:
                        return status, resp.headers.get("location"), b""
                    _classify_status(status, url)
                    length = resp.headers.get("content-length")
                    if length and length.isdigit() and int(length) > self.max_bytes:
                        raise _too_large(int(length), self.max_bytes)
                    buf = bytearray()
                    for chunk in resp.iter_bytes(_CHUNK):
                        buf += chunk
                        if len(buf) > self.max_bytes:
                            raise _too_large(None, self.max_bytes)
                        if time.monotonic() > deadline:
                            raise Transient(
                                "fetch_timeout", STAGE, f"{url}: download over {self.settings.fetch_timeout_s}s"
                            )
                    return status, None, bytes(buf)
        except httpx.TimeoutException as exc:
            raise Transient("fetch_timeout", STAGE, f"{url}: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            # TLS failures are the URL's fault (bad certificate): retrying will not fix them.
            if isinstance(exc, httpx.ConnectError) and "CERTIFICATE" in str(exc).upper():
                raise Poison("tls_error", STAGE, f"{url}: {exc}") from None
            raise Transient("fetch_unavailable", STAGE, f"{url}: {type(exc).__name__}: {exc}") from None


def _classify_status(status: int, url: httpx.URL) -> None:
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise Poison("url_not_found", STAGE, f"{url} answered {status}")
    if status in (401, 403):
        raise Poison("url_forbidden", STAGE, f"{url} answered {status}")
    if status in (408, 425, 429) or status >= 500:
        raise Transient("fetch_unavailable", STAGE, f"{url} answered {status}")
    raise Poison("url_fetch_failed", STAGE, f"{url} answered {status}")
