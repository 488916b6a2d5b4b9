"""Optional bearer-key auth as ASGI middleware, so it covers every route the same way."""

from __future__ import annotations

import hmac
import json

# Health, metrics, docs and the web page's static shell stay open: probes and scrapers have
# no key, and the page asks the creator for one before calling the API.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/docs", "/docs.json",
                        "/schema.json", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/", "/static_content/", "/ui/", "/docs/")


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def key_matches(presented: str, keys: list[str]) -> bool:
    # compare_digest against every key, without early exit, so timing reveals nothing.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


class ApiKeyMiddleware:
    def __init__(self, app, keys: list[str]):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or is_open_path(scope["path"]):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token and key_matches(token.strip(), self.keys):
            return await self.app(scope, receive, send)
        body = json.dumps({"error": "unauthorized",
                           "detail": "Missing or wrong API key: send 'Authorization: Bearer <key>'."}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"www-authenticate", b'Bearer realm="snap2caption"')]})
        await send({"type": "http.response.body", "body": body})
