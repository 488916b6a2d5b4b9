"""Image fetchers for upload events: S3 (boto3), HTTP(S) and inline base64.

Each returns the raw image bytes or raises ``Poison`` (the event is at fault: DLQ) or
``Transient`` (try again later); an image host that does not answer (timeout, DNS failure,
refused or reset connection, 5xx/429) raises ``UrlUnavailable``, the Transient the consumer may
dead-letter after bounded retries. Our own S3 being away stays a plain Transient. Every source
obeys the same size limit.

SSRF: an upload event names a URL chosen by whoever produced it, and the consumer runs
inside the platform's network, so a URL must not reach loopback, private, link-local, site-local
or cloud-metadata addresses unless they are allowlisted. IPv6 forms that carry an IPv4 address
(IPv4-mapped and -compatible, 6to4, Teredo, NAT64) are judged by the address they carry. A host
spelled as a number other than a dotted quad (``2130706433``, ``0x7f.1``, ``017700000001``) is
refused before any lookup. The host is resolved here, every address is checked, and the
connection goes to a checked address (the Host header and TLS SNI keep the name), so a DNS
answer that changes between check and connect cannot slip through. Redirects are followed by
hand, each hop checked again, at most ``fetch_max_redirects`` of them. Plain http is refused
unless the host is allowlisted.

Hostile hosts: one wall-clock deadline (``fetch_timeout_s``) covers a whole URL fetch: DNS (a
lookup runs in a worker thread that is abandoned when time runs out), connect, TLS, every
redirect and every read of the head and body (each socket read waits at most until the
deadline, so a host trickling a byte a second is cut at it). The request asks for identity
encoding; one gzip/deflate layer is still inflated, never past the size limit, and anything else
(stacked encodings, br, zstd) is refused. The size limit counts the bytes that arrive.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import zlib
from urllib.parse import urljoin

import httpx

from snap2caption_service.core.contracts import ImageRef
from snap2caption_service.core.errors import Poison, Transient, UrlUnavailable
from snap2caption_service.core.images import ImageError, decode_base64_image
from snap2caption_service.core.settings import FetchSettings
from snap2caption_service.core.storage import s3_client

STAGE = "fetch"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud instance-metadata and credential endpoints. An allowlisted CIDR never opens them; only
# the exact address does.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, Oracle, OpenStack, DigitalOcean, Hetzner
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS Pod Identity agent (credentials)
        "fd00:ec2::23",  # the same over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
        "168.63.129.16",  # Azure WireServer (a public address)
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud Classic
        "169.254.0.23",  # Tencent Cloud
        "169.254.42.42",  # Scaleway
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the IPv4 address is the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215): site-internal
_V4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible addresses
REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_HEAD_ROOM = 64 * 1024  # raw bytes allowed beyond fetch_max_bytes: the head and chunk framing
_DNS_SLOTS = threading.BoundedSemaphore(32)  # lookups in flight at once, hung ones included
_ENCODINGS = ("gzip", "x-gzip", "deflate")  # the one layer that is inflated (bounded)


def _too_large(size: int | None, limit: int) -> Poison:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return Poison("image_too_large", STAGE, f"the image is {what}; the limit is {limit} bytes")


# --- SSRF rules --------------------------------------------------------------------------


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """(the form, the IPv4 address) an IPv6 address carries, if it carries one."""
    if ip.ipv4_mapped is not None:
        return "an IPv4-mapped address", ip.ipv4_mapped
    if ip in _NAT64:
        return "a NAT64 address", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "a 6to4 address", ip.sixtofour
    if ip.teredo is not None:  # (server, client); the client is stored XOR 0xffffffff
        return "a Teredo address", ip.teredo[1]
    if ip in _V4_COMPATIBLE and int(ip) > 1:  # not :: or ::1
        return "an IPv4-compatible address", ipaddress.IPv4Address(int(ip))
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why an address must not be fetched from by default (None = a public address)."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            form, v4 = embedded
            why = blocked_reason(v4)
            if why is not None:
                return f"{form} embedding {v4}, {why}"
            if form in ("an IPv4-mapped address", "a NAT64 address", "a 6to4 address"):
                return None  # reaches that public IPv4 address (DNS64 on an IPv6-only cluster)
            return f"{form} (a tunnel form that is never fetched from)"
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if ip.is_site_local:
            return "a site-local address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "not a public address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def _is_metadata(ip: IPAddress) -> bool:
    if ip in METADATA_ADDRESSES:
        return True
    embedded = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    return embedded is not None and embedded[1] in METADATA_ADDRESSES


def numeric_host_problem(host: str) -> str | None:
    """Why a host spelled as a number is refused: anything but a dotted quad (``2130706433``,
    ``0x7f.1``, ``017700000001``, ``127.1``, ``127.0.0.1.``) means what the resolver makes of it.
    A host whose last label is a number is an IPv4 spelling, as in a browser's URL parser."""
    if ":" in host:  # an IPv6 literal
        return None
    labels = host.split(".")
    last = labels[-2] if labels[-1] == "" and len(labels) > 1 else labels[-1]
    numeric = last.isdigit() or (last[:2].lower() == "0x" and all(c in "0123456789abcdefABCDEF" for c in last[2:]))
    if not numeric:
        return None
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return f"{host!r} is a numeric host but not a dotted-quad IPv4 address"
    return None


def _getaddrinfo(host: str, port: int, timeout: float) -> list:
    """socket.getaddrinfo within ``timeout`` (it has none of its own): the lookup runs in a daemon
    thread, abandoned to finish by itself when time runs out; raises TimeoutError."""
    start = time.monotonic()
    if not _DNS_SLOTS.acquire(timeout=timeout):
        raise TimeoutError(f"all {host} lookups slots busy")
    result: dict = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # noqa: BLE001  (re-raised in the caller)
            result["error"] = exc
        finally:
            _DNS_SLOTS.release()
            done.set()

    threading.Thread(target=lookup, name="fetch-dns", daemon=True).start()
    if not done.wait(max(0.0, timeout - (time.monotonic() - start))):
        raise TimeoutError(f"resolving {host} took over {timeout:.1f}s")
    if "error" in result:
        raise result["error"]
    return result["infos"]


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
            if ip in net or plain in net:
                # Metadata endpoints hand out credentials: a broad CIDR such as 169.254.0.0/16 (or
                # 2002::/16 around a 6to4 spelling of one) does not open them, only the exact address.
                return not _is_metadata(ip) or net.num_addresses == 1
        return False

    def check_url(self, url: httpx.URL) -> None:
        """Scheme and host rules that need no DNS; raises Poison."""
        if url.scheme not in ("http", "https"):
            raise Poison("url_scheme_not_allowed", STAGE, f"{url.scheme}:// URLs are not fetched")
        if not url.host:
            raise Poison("invalid_url", STAGE, "the URL has no host")
        if url.userinfo:
            raise Poison("invalid_url", STAGE, "URLs with credentials are not fetched")
        host = url.raw_host.decode("ascii")  # IDNA-encoded: what is resolved, and what the allowlist names
        problem = numeric_host_problem(host)
        if problem:
            raise Poison("invalid_url", STAGE, f"{problem}; write the address as a dotted quad")
        if url.scheme == "http" and not self.host_allowlisted(host):
            raise Poison(
                "url_scheme_not_allowed",
                STAGE,
                f"plain http to {url.host} is refused; use https (or allowlist the host)",
            )

    def resolve(self, host: str, port: int, timeout: float = 10.0) -> list[IPAddress]:
        """The addresses to connect to, after checking every address the name resolves to.
        Raises Poison (no such name, a blocked address) or UrlUnavailable (DNS failing or slow)."""
        name = host.strip("[]")
        try:
            addresses = [ipaddress.ip_address(name)]  # a literal: no lookup
        except ValueError:
            try:
                infos = _getaddrinfo(name, port, timeout)
            except TimeoutError as exc:
                raise UrlUnavailable("dns_timeout", STAGE, str(exc)) from None
            except socket.gaierror as exc:
                if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                    raise Poison("url_unresolvable", STAGE, f"{host} does not resolve: {exc}") from None
                raise UrlUnavailable("dns_unavailable", STAGE, f"resolving {host}: {exc}") from None
            except (OSError, UnicodeError) as exc:
                raise UrlUnavailable("dns_unavailable", STAGE, f"resolving {host}: {exc}") from None
            addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))
        for ip in addresses:
            if not self.address_allowed(host, ip):
                raise Poison("ssrf_blocked", STAGE, f"{host} resolves to {ip}, {blocked_reason(ip)}")
        return addresses


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
        self._ssl.sslsocket_class = _DeadlineSSLSocket

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
            host = target.raw_host.decode("ascii")
            port = target.port or (443 if target.scheme == "https" else 80)
            addresses = self.policy.resolve(host, port, self._left(deadline, target))
            status, location, data = self._get(target, addresses, deadline)
            if status in REDIRECTS:
                if not location:
                    raise Poison("url_fetch_failed", STAGE, f"{status} redirect without Location from {target}")
                current = urljoin(str(target), location)
                continue
            return data
        raise Poison("too_many_redirects", STAGE, f"more than {self.settings.fetch_max_redirects} redirects from {url}")

    def _left(self, deadline: float, url: httpx.URL) -> float:
        return _left(deadline, url, self.settings.fetch_timeout_s)

    def _get(self, url: httpx.URL, addresses: list[IPAddress], deadline: float) -> tuple[int, str | None, bytes]:
        """One GET over a connection to a checked address: (status, Location, body)."""
        sock = self._connect(url, addresses, deadline)
        resp = None
        try:
            if url.scheme == "https":
                sock.settimeout(self._left(deadline, url))  # bounds the whole handshake
                sock = self._ssl.wrap_socket(sock, server_hostname=url.raw_host.decode("ascii"))
                sock.arm(deadline, self.settings.fetch_timeout_s, self.max_bytes, url)
            sock.settimeout(self._left(deadline, url))  # bounds the whole sendall
            sock.sendall(_request_head(url))
            resp = http.client.HTTPResponse(sock, method="GET")  # reads through sock.recv_into
            resp.begin()
            status = resp.status
            if status in REDIRECTS:
                return status, resp.getheader("location"), b""
            _classify_status(status, url)
            return status, None, self._read_body(resp, url)
        except ssl.SSLCertVerificationError as exc:
            # The URL's fault (a bad certificate): retrying will not fix it.
            raise Poison("tls_error", STAGE, f"{url}: {exc}") from None
        except TimeoutError:
            raise UrlUnavailable("fetch_timeout", STAGE, f"{url}: over {self.settings.fetch_timeout_s}s") from None
        except (http.client.RemoteDisconnected, http.client.IncompleteRead) as exc:
            raise UrlUnavailable("fetch_unavailable", STAGE, f"{url}: {type(exc).__name__}: {exc}") from None
        except (http.client.HTTPException, ValueError) as exc:
            raise Poison("invalid_http_response", STAGE, f"{url}: {type(exc).__name__}: {exc}") from None
        except OSError as exc:  # resets, TLS failures other than the certificate
            raise UrlUnavailable("fetch_unavailable", STAGE, f"{url}: {type(exc).__name__}: {exc}") from None
        finally:
            if resp is not None:
                resp.close()
            sock.close()

    def _connect(self, url: httpx.URL, addresses: list[IPAddress], deadline: float) -> _DeadlineSocket:
        port = url.port or (443 if url.scheme == "https" else 80)
        failure: OSError | None = None
        for ip in addresses:
            sock = _DeadlineSocket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(self._left(deadline, url))
                sock.connect((str(ip), port))
            except TimeoutError:
                sock.close()
                raise UrlUnavailable("fetch_timeout", STAGE, f"{url}: connecting to {ip} timed out") from None
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            except BaseException:
                sock.close()
                raise
            sock.arm(deadline, self.settings.fetch_timeout_s, self.max_bytes, url)
            return sock
        raise UrlUnavailable("fetch_unavailable", STAGE, f"{url}: cannot connect: {failure}")

    def _read_body(self, resp: http.client.HTTPResponse, url: httpx.URL) -> bytes:
        length = resp.getheader("content-length")
        if length and length.strip().isdigit() and int(length) > self.max_bytes:
            raise _too_large(int(length), self.max_bytes)
        transfer = (resp.getheader("transfer-encoding") or "").strip().lower()
        if transfer not in ("", "chunked"):
            raise Poison("unsupported_transfer_encoding", STAGE, f"{url}: Transfer-Encoding {transfer!r}")
        inflater = _inflater(resp, url, self.max_bytes)
        body = bytearray()
        arrived = 0
        while chunk := resp.read(_CHUNK):
            arrived += len(chunk)
            if inflater is None:
                body += chunk
                if len(body) > self.max_bytes:
                    raise _too_large(None, self.max_bytes)
            else:
                inflater.feed(chunk)
        if not resp.chunked and length and length.strip().isdigit() and arrived < int(length):
            raise UrlUnavailable("fetch_unavailable", STAGE, f"{url}: closed after {arrived} of {length} bytes")
        return inflater.finish() if inflater is not None else bytes(body)


def _left(deadline: float, url: httpx.URL, budget: float) -> float:
    """Seconds left before the fetch's deadline; raises UrlUnavailable when there are none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise UrlUnavailable("fetch_timeout", STAGE, f"{url}: over {budget}s")
    return left


def _request_head(url: httpx.URL) -> bytes:
    host = url.raw_host
    if b":" in host:
        host = b"[" + host + b"]"
    if url.port is not None and url.port != (443 if url.scheme == "https" else 80):
        host += b":%d" % url.port
    lines = [
        b"GET " + (url.raw_path or b"/") + b" HTTP/1.1",
        b"Host: " + host,
        b"Accept: image/*",
        b"Accept-Encoding: identity",
        b"User-Agent: snap2caption-fetch",
        b"Connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _DeadlineReads:
    """For the fetch's sockets (plain and TLS): once armed, every ``recv_into`` (what http.client's
    reads come down to) waits at most until the fetch's deadline, so a host trickling a byte at a
    time is cut at it, and every byte that arrives counts toward the size limit (head room aside)."""

    deadline: float | None = None

    def arm(self, deadline: float, budget: float, limit: int, url: httpx.URL) -> None:
        self.deadline, self.budget, self.limit, self.url = deadline, budget, limit, url
        self.arrived = 0

    def recv_into(self, buffer, *args) -> int:
        if self.deadline is None:
            return super().recv_into(buffer, *args)
        self.settimeout(_left(self.deadline, self.url, self.budget))
        n = super().recv_into(buffer, *args)
        self.arrived += n
        if self.arrived > self.limit + _HEAD_ROOM:
            raise _too_large(None, self.limit)
        return n


class _DeadlineSocket(_DeadlineReads, socket.socket):
    pass


class _DeadlineSSLSocket(_DeadlineReads, ssl.SSLSocket):
    pass


class _Inflater:
    """One gzip or deflate layer (several gzip members allowed), inflated into at most ``limit``
    bytes: the output is bounded on every call, so a bomb is refused having inflated no more."""

    def __init__(self, limit: int, url: httpx.URL):
        self.limit, self.url = limit, url
        self.out = bytearray()
        self.z = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header

    def feed(self, data: bytes) -> None:
        try:
            while data:
                self.out += self.z.decompress(data, self.limit + 1 - len(self.out))
                if len(self.out) > self.limit or self.z.unconsumed_tail:
                    raise _too_large(None, self.limit)
                data = self.z.unused_data if self.z.eof else b""
                if data:  # a further gzip member
                    self.z = zlib.decompressobj(zlib.MAX_WBITS | 32)
        except zlib.error as exc:
            raise Poison("invalid_content_encoding", STAGE, f"{self.url}: {exc}") from None

    def finish(self) -> bytes:
        if not self.z.eof:
            raise Poison("invalid_content_encoding", STAGE, f"{self.url}: the compressed body ends early")
        return bytes(self.out)


def _inflater(resp: http.client.HTTPResponse, url: httpx.URL, limit: int) -> _Inflater | None:
    """None for an identity body; raises Poison for stacked or unknown encodings."""
    codings = [
        c.strip().lower()
        for header in resp.headers.get_all("content-encoding") or []
        for c in header.split(",")
        if c.strip().lower() not in ("", "identity")
    ]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _ENCODINGS:
        raise Poison(
            "unsupported_content_encoding",
            STAGE,
            f"{url}: Content-Encoding {', '.join(codings)}; identity or one layer of gzip/deflate is fetched",
        )
    return _Inflater(limit, url)


def _classify_status(status: int, url: httpx.URL) -> None:
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise Poison("url_not_found", STAGE, f"{url} answered {status}")
    if status in (401, 403):
        raise Poison("url_forbidden", STAGE, f"{url} answered {status}")
    if status in (408, 425, 429) or status >= 500:
        raise UrlUnavailable("fetch_unavailable", STAGE, f"{url} answered {status}")
    raise Poison("url_fetch_failed", STAGE, f"{url} answered {status}")
