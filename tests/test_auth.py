"""Unit tests for snap2caption_service.serving.auth: which host names are cluster-local, and
the /events authentication modes (ApiKeyMiddleware driven as a bare ASGI app).
tests/test_stream_push.py checks the same over real HTTP."""

from __future__ import annotations

import pytest
from pydantic import ValidationError


@pytest.mark.parametrize(
    "host,local",
    [
        ("snap2caption.prod.svc.cluster.local", True),
        ("snap2caption.prod.svc.cluster.local:80", True),
        ("snap2caption.prod.svc", True),
        ("SNAP2CAPTION.Prod.SVC.Cluster.Local.", True),
        ("snap2caption.prod", False),
        ("snap2caption.prod.example.com", False),
        ("svc.cluster.local", False),
        ("prod.svc.cluster.local.evil.example", False),
        ("..svc", False),
        ("127.0.0.1:3000", False),
        ("[::1]:3000", False),
        ("", False),
    ],
)
def test_cluster_local_host_names(host, local):
    from snap2caption_service.serving.auth import is_cluster_local_host

    assert is_cluster_local_host(host) is local
    assert is_cluster_local_host("a.b.svc.corp.internal", "corp.internal")
    assert not is_cluster_local_host("a.b.svc.cluster.local", "corp.internal")


def _asgi_status(mode: str, path: str, host: str, auth: str | None = None) -> int:
    import asyncio

    from snap2caption_service.serving.auth import ApiKeyMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(message):
        sent.append(message)

    headers = [(b"host", host.encode())] + ([(b"authorization", auth.encode())] if auth else [])
    mw = ApiKeyMiddleware(app, ["k1"], events_auth=mode, cluster_domain="cluster.local")
    asyncio.run(mw({"type": "http", "path": path, "headers": headers}, None, send))
    return sent[0]["status"]


@pytest.mark.parametrize(
    "mode,path,host,auth,status",
    [
        ("bearer", "/events", "a.b.svc.cluster.local", None, 401),
        ("bearer", "/events", "a.b.svc.cluster.local", "Bearer k1", 200),
        ("cluster-local", "/events", "a.b.svc.cluster.local", None, 200),
        ("cluster-local", "/events", "a.b.example.com", None, 401),
        ("cluster-local", "/events", "a.b.example.com", "Bearer k1", 200),
        ("cluster-local", "/generate-caption", "a.b.svc.cluster.local", None, 401),
        ("none", "/events", "a.b.example.com", None, 200),
        ("none", "/feedback", "a.b.example.com", None, 401),
        ("none", "/readyz", "a.b.example.com", None, 200),
    ],
)
def test_events_auth_modes(mode, path, host, auth, status):
    assert _asgi_status(mode, path, host, auth) == status


def test_events_auth_setting_is_validated():
    from snap2caption_service.core.settings import Settings
    from snap2caption_service.serving.auth import ApiKeyMiddleware

    with pytest.raises(ValidationError, match="events_auth"):
        Settings(_env_file=None, events_auth="open")
    with pytest.raises(ValueError, match="SNAP2CAPTION_EVENTS_AUTH"):
        ApiKeyMiddleware(None, ["k"], events_auth="open", cluster_domain="cluster.local")
    assert Settings(_env_file=None).events_auth == "bearer"  # nothing is opened unless asked for
