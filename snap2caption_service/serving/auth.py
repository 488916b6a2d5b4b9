"""Optional bearer-key auth as ASGI middleware, so it covers every route the same way.

``/events`` (Knative push mode) is the one route whose caller may be unable to send a key: a
KafkaSource, Sequence or Trigger delivers events without custom headers. How it is
authenticated is SNAP2CAPTION_EVENTS_AUTH (snap2caption_service/core/settings.py):

  bearer         the same key as every other route (the default: nothing is opened by accident)
  cluster-local  no key needed when the request names *this* Service by its cluster-local
                 host, ``<service>.<namespace>.svc[.<cluster domain>]`` (SNAP2CAPTION_SERVICE_NAME
                 or Knative's K_SERVICE; SNAP2CAPTION_NAMESPACE, POD_NAMESPACE or the pod's
                 service-account namespace), which is the address Knative Eventing delivers to.
                 Any other host, another Service's ``*.svc`` name included, needs the key, as
                 does a request through the public domain. This relies on Knative's gateways
                 routing cluster-local host names only on the cluster-local gateway, which
                 clients outside the cluster cannot reach. Knative's per-revision names
                 (``<revision>[-private]``) are not accepted: Eventing never addresses them, and
                 the activator keeps the original Host when it forwards.
  oidc           the key, or a Knative Eventing sender token: with Eventing's
                 authentication-oidc feature the dispatcher sends ``Authorization: Bearer <JWT>``,
                 a service-account token of the sender's OIDC identity for this Service's audience.
                 Checked by serving/oidc.py (signature against the cluster's JWKS, exp, iss, aud,
                 sub in SNAP2CAPTION_EVENTS_OIDC_SUBJECTS); only the named senders get in, whatever
                 Host they use. 401 naming what failed; 503 + Retry-After while the JWKS cannot be
                 fetched. The recommended production setting (k8s/overlays/production).
  none           no key on /events at all: only for a Service that is cluster-local as a whole
                 (label networking.knative.dev/visibility: cluster-local) or otherwise private

A valid key is accepted on /events in every mode.
"""

from __future__ import annotations

import hmac
import logging
import re

from snap2caption_service.serving.oidc import JwksUnavailable, OidcConfig, OidcVerifier, TokenRejected
from snap2caption_service.serving.responses import error_body

log = logging.getLogger(__name__)

# Health, metrics, docs and the web page's static shell stay open: probes and scrapers have
# no key, and the page asks the creator for one before calling the API.
OPEN_PATHS = frozenset(
    {"/livez", "/readyz", "/healthz", "/metrics", "/docs", "/docs.json", "/schema.json", "/", "/favicon.ico"}
    | {"/platforms", "/info"}  # public rules and model, read by the page before any key is entered
)
OPEN_PREFIXES = ("/static/", "/static_content/", "/ui/", "/docs/")
EVENTS_PATH = "/events"
EVENTS_AUTH_MODES = ("bearer", "cluster-local", "oidc", "none")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def key_matches(presented: str, keys: list[str]) -> bool:
    # compare_digest against every key, without early exit, so timing reveals nothing.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


def host_name(host_header: str) -> str:
    """The host part of a Host header, lower case, without port or trailing dot."""
    host = host_header.strip().lower()
    if host.startswith("["):  # IPv6 literal: never a cluster-local name
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def is_dns_label(name: str) -> bool:
    """An RFC 1123 label, as Kubernetes requires of Service and namespace names."""
    return bool(_DNS_LABEL.fullmatch(name))


def cluster_local_names(service: str, namespace: str, cluster_domain: str = "cluster.local") -> frozenset[str]:
    """The host names that reach this Service inside the cluster: ``<service>.<namespace>.svc``
    and ``<service>.<namespace>.svc.<cluster_domain>``; none when either name is missing or invalid."""
    service, namespace = service.strip().lower(), namespace.strip().lower()
    if not (is_dns_label(service) and is_dns_label(namespace)):
        return frozenset()
    short = f"{service}.{namespace}.svc"
    domain = cluster_domain.strip().lower().strip(".")
    return frozenset({short, f"{short}.{domain}"} if domain else {short})


def is_cluster_local_host(
    host_header: str, service: str, namespace: str, cluster_domain: str = "cluster.local"
) -> bool:
    """Whether the Host header names this very Service by its in-cluster name (any port)."""
    return host_name(host_header) in cluster_local_names(service, namespace, cluster_domain)


class ApiKeyMiddleware:
    def __init__(
        self,
        app,
        keys: list[str],
        events_auth: str | None = None,
        cluster_domain: str | None = None,
        service_name: str | None = None,
        namespace: str | None = None,
        oidc: OidcVerifier | None = None,
    ):
        if None in (events_auth, cluster_domain, service_name, namespace):
            from snap2caption_service.core.settings import get_settings

            s = get_settings()
            events_auth = s.events_auth if events_auth is None else events_auth
            cluster_domain = s.cluster_domain if cluster_domain is None else cluster_domain
            service_name = s.service_name if service_name is None else service_name
            namespace = s.namespace if namespace is None else namespace
        if events_auth not in EVENTS_AUTH_MODES:
            raise ValueError(
                f"SNAP2CAPTION_EVENTS_AUTH={events_auth!r}: expected one of {', '.join(EVENTS_AUTH_MODES)}"
            )
        if events_auth == "cluster-local" and not cluster_local_names(service_name, namespace, cluster_domain):
            # Fail at start, not with a 401 on every delivered event.
            raise ValueError(
                "SNAP2CAPTION_EVENTS_AUTH=cluster-local needs this Service's name and namespace as DNS "
                f"labels (got service {service_name!r}, namespace {namespace!r}): set K_SERVICE (Knative "
                "sets it) or SNAP2CAPTION_SERVICE_NAME, and POD_NAMESPACE or SNAP2CAPTION_NAMESPACE"
            )
        if events_auth == "oidc" and oidc is None:
            from snap2caption_service.core.settings import get_settings

            # ValueError (no start) when a required setting is missing, as for cluster-local.
            oidc = OidcVerifier(OidcConfig.from_settings(get_settings()))
        self.app = app
        self.keys = keys
        self.events_auth = events_auth
        self.oidc = oidc if events_auth == "oidc" else None
        self.service_name, self.namespace, self.cluster_domain = service_name, namespace, cluster_domain

    def exempt(self, scope, headers: dict) -> bool:
        path = scope["path"]
        if is_open_path(path):
            return True
        if path != EVENTS_PATH or self.events_auth in ("bearer", "oidc"):
            return False
        if self.events_auth == "none":
            return True
        host = headers.get(b"host", b"").decode("latin-1")
        return is_cluster_local_host(host, self.service_name, self.namespace, self.cluster_domain)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # Without API keys every route is open, except /events in oidc mode: the sender check
        # does not depend on keys existing (a Service may take events only, keys never issued).
        if not self.keys and not (self.oidc is not None and scope["path"] == EVENTS_PATH):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.exempt(scope, headers):
            return await self.app(scope, receive, send)
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token and key_matches(token.strip(), self.keys):
            return await self.app(scope, receive, send)
        if self.oidc is not None and scope["path"] == EVENTS_PATH:
            try:
                await self.oidc.verify(auth)
            except TokenRejected as e:
                log.info("/events: sender token refused: %s", e)  # the reason only, never the token
                detail = f"Not a valid API key or event sender token: {e}."
                return await _answer(send, 401, error_body("unauthorized", detail), _CHALLENGE_INVALID_TOKEN)
            except JwksUnavailable as e:
                detail = "Cannot check the event sender token now: the issuer's signing keys are unreachable."
                retry = [(b"retry-after", str(e.retry_after_s).encode())]
                return await _answer(send, 503, error_body("unavailable", detail), retry)
            return await self.app(scope, receive, send)
        body = error_body("unauthorized", "Missing or wrong API key: send 'Authorization: Bearer <key>'.")
        await _answer(send, 401, body, _CHALLENGE)


_CHALLENGE = [(b"www-authenticate", b'Bearer realm="snap2caption"')]
_CHALLENGE_INVALID_TOKEN = [(b"www-authenticate", b'Bearer realm="snap2caption", error="invalid_token"')]


async def _answer(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
