"""Optional bearer-key auth as ASGI middleware, so it covers every route the same way.

``/events`` (Knative push mode) is the one route whose caller may be unable to send a key: a
KafkaSource, Sequence or Trigger delivers events without custom headers. How it is
authenticated is SNAP2CAPTION_EVENTS_AUTH (snap2caption_service/core/settings.py):

  bearer         the same key as every other route (the default: nothing is opened by accident)
  cluster-local  no key needed when the request names the Service by its cluster-local host
                 (``<svc>.<ns>.svc[.<cluster domain>]``), which is the address Knative Eventing
                 delivers to; a request through the public domain still needs the key. This
                 relies on Knative's gateways routing cluster-local host names only on the
                 cluster-local gateway, which clients outside the cluster cannot reach.
  none           no key on /events at all: only for a Service that is cluster-local as a whole
                 (label networking.knative.dev/visibility: cluster-local) or otherwise private

A valid key is accepted on /events in every mode.
"""

from __future__ import annotations

import hmac

from snap2caption_service.serving.responses import error_body

# Health, metrics, docs and the web page's static shell stay open: probes and scrapers have
# no key, and the page asks the creator for one before calling the API.
OPEN_PATHS = frozenset(
    {"/livez", "/readyz", "/healthz", "/metrics", "/docs", "/docs.json", "/schema.json", "/", "/favicon.ico"}
)
OPEN_PREFIXES = ("/static/", "/static_content/", "/ui/", "/docs/")
EVENTS_PATH = "/events"
EVENTS_AUTH_MODES = ("bearer", "cluster-local", "none")


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


def is_cluster_local_host(host_header: str, cluster_domain: str = "cluster.local") -> bool:
    """``<svc>.<ns>.svc`` or ``<svc>.<ns>.svc.<cluster_domain>``: Kubernetes' in-cluster names."""
    labels = host_name(host_header).split(".")
    domain = [d for d in cluster_domain.lower().strip(".").split(".") if d]
    if len(labels) >= 3 and labels[-1] == "svc":
        return all(labels[:-1])
    n = len(domain)
    return len(labels) >= 3 + n and labels[-n - 1 :] == ["svc", *domain] and all(labels[: -n - 1])


class ApiKeyMiddleware:
    def __init__(self, app, keys: list[str], events_auth: str | None = None, cluster_domain: str | None = None):
        if events_auth is None or cluster_domain is None:
            from snap2caption_service.core.settings import get_settings

            s = get_settings()
            events_auth = events_auth or s.events_auth
            cluster_domain = cluster_domain or s.cluster_domain
        if events_auth not in EVENTS_AUTH_MODES:
            raise ValueError(
                f"SNAP2CAPTION_EVENTS_AUTH={events_auth!r}: expected one of {', '.join(EVENTS_AUTH_MODES)}"
            )
        self.app = app
        self.keys = keys
        self.events_auth = events_auth
        self.cluster_domain = cluster_domain

    def exempt(self, scope, headers: dict) -> bool:
        path = scope["path"]
        if is_open_path(path):
            return True
        if path != EVENTS_PATH or self.events_auth == "bearer":
            return False
        if self.events_auth == "none":
            return True
        return is_cluster_local_host(headers.get(b"host", b"").decode("latin-1"), self.cluster_domain)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.exempt(scope, headers):
            return await self.app(scope, receive, send)
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token and key_matches(token.strip(), self.keys):
            return await self.app(scope, receive, send)
        body = error_body("unauthorized", "Missing or wrong API key: send 'Authorization: Bearer <key>'.")
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="snap2caption"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
