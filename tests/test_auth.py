"""Unit tests for snap2caption_service.serving.auth: which host names are cluster-local, and
the /events authentication modes (ApiKeyMiddleware driven as a bare ASGI app).
tests/test_stream_push.py checks the same over real HTTP."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

SERVICE, NAMESPACE = "snap2caption", "prod"


@pytest.mark.parametrize(
    "host,local",
    [
        # This Service's own in-cluster names, in every spelling a client may send.
        ("snap2caption.prod.svc.cluster.local", True),
        ("snap2caption.prod.svc.cluster.local:80", True),
        ("snap2caption.prod.svc", True),
        ("snap2caption.prod.svc:8080", True),
        ("SNAP2CAPTION.Prod.SVC.Cluster.Local.", True),
        # Any other Service's *.svc name: another workload in the cluster must not get in
        # without a key (before issue 13 every *.svc host was accepted).
        ("other.prod.svc.cluster.local", False),
        ("snap2caption.other-ns.svc.cluster.local", False),
        ("evil.snap2caption.prod.svc.cluster.local", False),
        ("snap2caption-00001-private.prod.svc.cluster.local", False),
        ("snap2caption-00001.prod.svc.cluster.local", False),
        ("canary-snap2caption.prod.svc.cluster.local", False),
        # Not cluster-local at all.
        ("snap2caption.prod", False),
        ("snap2caption.prod.example.com", False),
        ("snap2caption.prod.svc.example.com", False),
        ("snap2caption.prod.svc.cluster.local.evil.example", False),
        ("svc.cluster.local", False),
        ("..svc", False),
        ("127.0.0.1:3000", False),
        ("[::1]:3000", False),
        ("", False),
    ],
)
def test_cluster_local_host_is_this_service_only(host, local):
    from snap2caption_service.serving.auth import is_cluster_local_host

    assert is_cluster_local_host(host, SERVICE, NAMESPACE) is local


@pytest.mark.parametrize(
    "host,domain,local",
    [
        ("snap2caption.prod.svc.corp.internal", "corp.internal", True),
        ("snap2caption.prod.svc.corp.internal", ".corp.internal.", True),
        ("snap2caption.prod.svc", "corp.internal", True),
        ("snap2caption.prod.svc.cluster.local", "corp.internal", False),
    ],
)
def test_cluster_local_host_uses_the_cluster_domain(host, domain, local):
    from snap2caption_service.serving.auth import is_cluster_local_host

    assert is_cluster_local_host(host, SERVICE, NAMESPACE, domain) is local


@pytest.mark.parametrize(
    "service,namespace",
    [("", "prod"), ("snap2caption", ""), ("", ""), ("a.b", "prod"), ("snap2caption", "*"), ("-x", "prod")],
)
def test_no_cluster_local_name_without_a_valid_service_and_namespace(service, namespace):
    from snap2caption_service.serving.auth import cluster_local_names, is_cluster_local_host

    assert cluster_local_names(service, namespace) == frozenset()
    assert not is_cluster_local_host(f"{service}.{namespace}.svc.cluster.local", service, namespace)
    assert not is_cluster_local_host(".prod.svc", service, namespace)


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
    mw = ApiKeyMiddleware(
        app, ["k1"], events_auth=mode, cluster_domain="cluster.local", service_name=SERVICE, namespace=NAMESPACE
    )
    asyncio.run(mw({"type": "http", "path": path, "headers": headers}, None, send))
    return sent[0]["status"]


@pytest.mark.parametrize(
    "mode,path,host,auth,status",
    [
        ("bearer", "/events", "snap2caption.prod.svc.cluster.local", None, 401),
        ("bearer", "/events", "snap2caption.prod.svc.cluster.local", "Bearer k1", 200),
        ("cluster-local", "/events", "snap2caption.prod.svc.cluster.local", None, 200),
        ("cluster-local", "/events", "snap2caption.prod.svc:80", None, 200),
        ("cluster-local", "/events", "other.prod.svc.cluster.local", None, 401),
        ("cluster-local", "/events", "other.prod.svc.cluster.local", "Bearer k1", 200),
        ("cluster-local", "/events", "snap2caption.staging.svc.cluster.local", None, 401),
        ("cluster-local", "/events", "a.b.example.com", None, 401),
        ("cluster-local", "/events", "a.b.example.com", "Bearer k1", 200),
        ("cluster-local", "/events", "a.b.example.com", "Bearer wrong", 401),
        ("cluster-local", "/generate-caption", "snap2caption.prod.svc.cluster.local", None, 401),
        ("cluster-local", "/feedback", "snap2caption.prod.svc.cluster.local", None, 401),
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


@pytest.mark.parametrize("service,namespace", [("", "prod"), ("snap2caption", ""), ("not.a.label", "prod")])
def test_cluster_local_mode_refuses_to_start_without_its_own_name(service, namespace):
    """Without the Service's own name nothing could be cluster-local: fail at start, loudly,
    rather than answer 401 to every delivered event."""
    from snap2caption_service.serving.auth import ApiKeyMiddleware

    with pytest.raises(ValueError, match="K_SERVICE"):
        ApiKeyMiddleware(None, ["k"], "cluster-local", "cluster.local", service_name=service, namespace=namespace)
    ApiKeyMiddleware(None, ["k"], "bearer", "cluster.local", service_name=service, namespace=namespace)  # unused there


@pytest.mark.parametrize(
    "env,service,namespace",
    [
        ({"K_SERVICE": "snap2caption", "POD_NAMESPACE": "prod"}, "snap2caption", "prod"),
        (
            {"K_SERVICE": "snap2caption", "SNAP2CAPTION_SERVICE_NAME": "captions", "SNAP2CAPTION_NAMESPACE": "ns1"},
            "captions",
            "ns1",
        ),
        ({"POD_NAMESPACE": "prod", "SNAP2CAPTION_NAMESPACE": "ns1"}, "", "ns1"),
    ],
)
def test_service_name_and_namespace_come_from_knative_and_the_downward_api(
    monkeypatch, tmp_path, env, service, namespace
):
    from snap2caption_service.core import settings as settings_module

    for name in ("K_SERVICE", "SNAP2CAPTION_SERVICE_NAME", "POD_NAMESPACE", "SNAP2CAPTION_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    s = settings_module.Settings(_env_file=None)
    assert (s.service_name, s.namespace) == (service, namespace)


def test_namespace_falls_back_to_the_service_account_mount(monkeypatch, tmp_path):
    from snap2caption_service.core import settings as settings_module

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.delenv("SNAP2CAPTION_NAMESPACE", raising=False)
    (tmp_path / "namespace").write_text("snap2caption-prod\n")
    monkeypatch.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    assert settings_module.Settings(_env_file=None).namespace == "snap2caption-prod"


def test_oidc_mode_opens_events_to_no_host_only_to_a_key_or_a_sender_token():
    """SNAP2CAPTION_EVENTS_AUTH=oidc: the cluster-local Host that `cluster-local` trusts opens
    nothing; the key still works. (Sender tokens: tests/test_events_oidc.py.)"""
    import asyncio
    import json

    from snap2caption_service.core.settings import Settings
    from snap2caption_service.serving.auth import ApiKeyMiddleware
    from snap2caption_service.serving.oidc import OidcConfig, OidcVerifier

    assert Settings(_env_file=None, events_auth="oidc").events_auth == "oidc"
    config = OidcConfig("https://issuer", "aud", frozenset({"system:serviceaccount:ns:sa"}), "http://127.0.0.1:9/jwks")

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = ApiKeyMiddleware(app, ["k1"], "oidc", "cluster.local", SERVICE, NAMESPACE, oidc=OidcVerifier(config))
    for path, auth, status in [
        ("/events", None, 401),
        ("/events", "Bearer k1", 200),
        ("/events", "Basic k1", 401),
        ("/feedback", None, 401),
        ("/readyz", None, 200),
    ]:
        sent = []

        async def send(message, sent=sent):
            sent.append(message)

        headers = [(b"host", b"snap2caption.prod.svc.cluster.local")] + (
            [(b"authorization", auth.encode())] if auth else []
        )
        asyncio.run(mw({"type": "http", "path": path, "headers": headers}, None, send))
        assert sent[0]["status"] == status, (path, auth)
        if path == "/events" and status == 401:
            assert "no bearer token" in json.loads(sent[1]["body"])["detail"]
