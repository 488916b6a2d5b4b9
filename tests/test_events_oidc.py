"""SNAP2CAPTION_EVENTS_AUTH=oidc: Knative Eventing sender tokens on /events (serving/oidc.py).

Tokens are signed here with an RSA and an EC key; the verifier fetches their public halves from a
real JWKS HTTP server on a thread (http.server), as it fetches the API server's /openid/v1/jwks in
a cluster. The claims are those of a Kubernetes service-account token requested by Knative's
dispatcher (knative/eventing pkg/auth/token_provider.go): iss = the cluster's issuer, aud = [the
destination's audience], sub = system:serviceaccount:<ns>:<sender's OIDC service account>.
The last test starts the real service in oidc mode."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from conftest import free_port

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "serving.knative.dev/service/snap2caption-prod/snap2caption"
SENDER = "system:serviceaccount:snap2caption-prod:snap2caption-captioning-kn-sequ0123456789abcdef"
SERVICE, NAMESPACE = "snap2caption", "snap2caption-prod"


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa-2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec-1": ec.generate_private_key(ec.SECP256R1()),
    }


def jwk(kid: str, private_key) -> dict:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        out, alg = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True), "RS256"
    else:
        out, alg = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True), "ES256"
    return {**out, "kid": kid, "use": "sig", "alg": alg}


class JwksServer:
    """A JWKS on http://127.0.0.1:<port>/openid/v1/jwks (https with ``tls``); ``keys`` and
    ``status`` can be changed while it runs; ``hits`` and ``auth`` record what it was asked."""

    def __init__(self, keys: list[dict], tls: ssl.SSLContext | None = None, require_auth: str | None = None):
        self.keys, self.status, self.delay_s, self.hits, self.auth = keys, 200, 0.0, 0, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.hits += 1
                server.auth.append(self.headers.get("Authorization"))
                time.sleep(server.delay_s)
                status = server.status
                if require_auth and self.headers.get("Authorization") != require_auth:
                    status = 401
                body = json.dumps({"keys": server.keys}).encode() if status == 200 else b"{}"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}/openid/v1/jwks"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks(keys):
    server = JwksServer([jwk("rsa-1", keys["rsa-1"]), jwk("ec-1", keys["ec-1"])])
    yield server
    server.close()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_verifier(url: str, clock=None, **cache_kw):
    from snap2caption_service.serving.oidc import JwksCache, OidcConfig, OidcVerifier

    config = OidcConfig(issuer=ISSUER, audience=AUDIENCE, subjects=frozenset({SENDER}), jwks_url=url)
    cache_kw.setdefault("timeout_s", 3.0)
    return OidcVerifier(config, JwksCache(url, clock=clock or Clock(), **cache_kw))


def claims(**override) -> dict:
    now = int(time.time())
    out = {"iss": ISSUER, "aud": [AUDIENCE], "sub": SENDER, "iat": now, "nbf": now, "exp": now + 3600}
    out.update(override)
    return {k: v for k, v in out.items() if v is not None}


def sign(private_key, kid: str = "rsa-1", alg: str | None = None, **claim_override) -> str:
    alg = alg or ("RS256" if isinstance(private_key, rsa.RSAPrivateKey) else "ES256")
    # PyJWS, not jwt.encode: that one refuses to write some of the malformed claims tested here.
    payload = json.dumps(claims(**claim_override)).encode()
    return jwt.api_jws.encode(payload, private_key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify(verifier, authorization: str):
    return asyncio.run(verifier.verify(authorization))


def rejected(verifier, authorization: str) -> str:
    from snap2caption_service.serving.oidc import TokenRejected

    with pytest.raises(TokenRejected) as e:
        verify(verifier, authorization)
    return str(e.value)


def test_tokens_signed_by_the_issuers_rsa_and_ec_keys_are_accepted(keys, jwks):
    verifier = make_verifier(jwks.url)
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"])) == SENDER
    assert verify(verifier, "bearer " + sign(keys["ec-1"], kid="ec-1")) == SENDER
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"], aud=AUDIENCE)) == SENDER  # `aud` as a string
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"], aud=["other", AUDIENCE])) == SENDER
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"], nbf=None, iat=None)) == SENDER  # both optional
    assert jwks.hits == 1  # the key set is cached


@pytest.mark.parametrize(
    "override,reason",
    [
        ({"exp": int(time.time()) - 120}, "token expired"),
        ({"nbf": int(time.time()) + 600}, "not yet valid"),
        ({"iat": int(time.time()) + 600}, "not yet valid"),
        ({"iss": "https://evil.example"}, "wrong issuer"),
        ({"iss": "https://kubernetes.default"}, "wrong issuer"),  # a prefix (PyJWT 2.10.0's partial match)
        ({"iss": ISSUER + "/"}, "wrong issuer"),
        ({"iss": [ISSUER]}, "wrong issuer"),
        ({"aud": ["serving.knative.dev/service/snap2caption-prod/other"]}, "wrong audience"),
        ({"aud": "snap2caption"}, "wrong audience"),
        ({"sub": "system:serviceaccount:snap2caption-prod:default"}, "subject not allowed"),
        ({"exp": None}, "token has no exp claim"),
        ({"aud": None}, "token has no aud claim"),
        ({"sub": None}, "token has no sub claim"),
        ({"sub": [SENDER]}, "invalid sub claim"),
    ],
)
def test_claims_that_fail_are_refused_with_a_reason(keys, jwks, override, reason):
    verifier = make_verifier(jwks.url)
    assert reason in rejected(verifier, "Bearer " + sign(keys["rsa-1"], **override))
    assert reason in rejected(verifier, "Bearer " + sign(keys["ec-1"], kid="ec-1", **override))


def test_a_small_clock_skew_is_tolerated(keys, jwks):
    verifier = make_verifier(jwks.url)
    now = int(time.time())
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"], exp=now - 5, iat=now - 60, nbf=now + 5)) == SENDER


def test_alg_none_is_refused(keys, jwks):
    token = f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT', 'kid': 'rsa-1'}).encode())}.{b64(json.dumps(claims()).encode())}."
    verifier = make_verifier(jwks.url)
    assert "signing algorithm not accepted" in rejected(verifier, "Bearer " + token)


def test_hs256_signed_with_the_public_key_as_secret_is_refused(keys, jwks):
    """The classic confusion attack: a verifier that takes the algorithm from the token would check
    an HMAC keyed with the (public) key material."""
    verifier = make_verifier(jwks.url)
    for kid, pem in (
        (
            "rsa-1",
            keys["rsa-1"]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        ),
        ("rsa-1", json.dumps(jwk("rsa-1", keys["rsa-1"])).encode()),
    ):
        for alg in ("HS256", "HS384", "HS512"):
            signing_input = f"{b64(json.dumps({'alg': alg, 'kid': kid}).encode())}.{b64(json.dumps(claims()).encode())}"
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
            token = signing_input + "." + b64(hmac.new(pem, signing_input.encode(), digest).digest())
            assert "signing algorithm not accepted" in rejected(verifier, "Bearer " + token)


def test_the_header_algorithm_must_be_the_keys(keys, jwks):
    """An ES256 header naming the RSA key's kid (and the reverse) is refused before any check."""
    verifier = make_verifier(jwks.url)
    es_token_with_rsa_kid = sign(keys["ec-1"], kid="rsa-1")
    assert "does not match the key" in rejected(verifier, "Bearer " + es_token_with_rsa_kid)
    rs_token_with_ec_kid = sign(keys["rsa-1"], kid="ec-1")
    assert "does not match the key" in rejected(verifier, "Bearer " + rs_token_with_ec_kid)


def test_a_token_signed_by_a_key_not_in_the_jwks_is_refused(keys, jwks):
    verifier = make_verifier(jwks.url)
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "unknown signing key" in rejected(verifier, "Bearer " + sign(foreign, kid="foreign"))
    # The same kid as a real key, but another key signed it.
    assert "bad signature" in rejected(verifier, "Bearer " + sign(foreign, kid="rsa-1"))


def test_unknown_key_ids_cannot_force_a_refetch_storm(keys, jwks):
    clock = Clock()
    verifier = make_verifier(jwks.url, clock=clock, min_interval_s=10)
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"])) == SENDER
    for i in range(50):
        assert "unknown signing key" in rejected(verifier, "Bearer " + sign(keys["rsa-2"], kid=f"made-up-{i}"))
    assert jwks.hits == 1  # the first fetch was under 10 s ago: no refetch at all
    clock.now += 11
    for i in range(50):
        rejected(verifier, "Bearer " + sign(keys["rsa-2"], kid=f"made-up-again-{i}"))
    assert jwks.hits == 2  # one refetch for the lot


def test_concurrent_requests_share_one_fetch(keys, jwks):
    jwks.delay_s = 0.3
    verifier = make_verifier(jwks.url)
    token = "Bearer " + sign(keys["rsa-1"])

    async def many():
        return await asyncio.gather(*(verifier.verify(token) for _ in range(20)))

    assert asyncio.run(many()) == [SENDER] * 20
    assert jwks.hits == 1


def test_a_rotated_key_is_picked_up_by_one_refetch(keys, jwks):
    clock = Clock()
    verifier = make_verifier(jwks.url, clock=clock, min_interval_s=10)
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"])) == SENDER
    # The cluster rotates its signing key: the new one appears in the JWKS, the old one goes.
    jwks.keys = [jwk("rsa-2", keys["rsa-2"])]
    clock.now += 11
    assert verify(verifier, "Bearer " + sign(keys["rsa-2"], kid="rsa-2")) == SENDER
    assert jwks.hits == 2
    # The cache now holds the new set: the retired key is gone with the old set.
    assert "unknown signing key" in rejected(verifier, "Bearer " + sign(keys["rsa-1"]))


def test_the_key_set_is_refreshed_when_old(keys, jwks):
    clock = Clock()
    verifier = make_verifier(jwks.url, clock=clock, max_age_s=60)
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"])) == SENDER
    jwks.keys = [jwk("ec-1", keys["ec-1"])]  # rsa-1 revoked
    clock.now += 61
    assert "unknown signing key" in rejected(verifier, "Bearer " + sign(keys["rsa-1"]))
    assert jwks.hits == 2


def test_a_tampered_payload_is_refused(keys, jwks):
    verifier = make_verifier(jwks.url)
    for key, kid in ((keys["rsa-1"], "rsa-1"), (keys["ec-1"], "ec-1")):
        header, _, signature = sign(key, kid=kid, sub="system:serviceaccount:snap2caption-prod:default").split(".")
        forged = f"{header}.{b64(json.dumps(claims()).encode())}.{signature}"  # sub swapped for the allowed one
        assert "bad signature" in rejected(verifier, "Bearer " + forged)


@pytest.mark.parametrize("scheme", ["Basic", "Token", "JWT", "", "Bearer"])
def test_the_token_must_come_as_a_bearer_token(keys, jwks, scheme):
    verifier = make_verifier(jwks.url)
    token = sign(keys["rsa-1"]) if scheme != "Bearer" else ""
    assert "no bearer token" in rejected(verifier, f"{scheme} {token}".strip())


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "k1", "x" * 20000])
def test_garbage_is_a_malformed_token(jwks, token):
    assert "malformed token" in rejected(make_verifier(jwks.url), "Bearer " + token)


def test_jwks_down_is_503_with_retry_after_then_recovers(keys):
    from snap2caption_service.serving.oidc import JwksUnavailable

    port = free_port()  # nothing listens there
    clock = Clock()
    verifier = make_verifier(f"http://127.0.0.1:{port}/openid/v1/jwks", clock=clock, min_interval_s=10)
    token = "Bearer " + sign(keys["rsa-1"])
    with pytest.raises(JwksUnavailable) as e:
        verify(verifier, token)
    assert e.value.retry_after_s == 10
    clock.now += 4
    with pytest.raises(JwksUnavailable) as e:  # still within the interval: no new attempt, same answer
        verify(verifier, token)
    assert e.value.retry_after_s == 6  # counted from the first attempt: there was no second one


@pytest.mark.parametrize("status", [500, 403, 404])
def test_a_jwks_error_status_is_503_and_the_keys_load_once_it_answers(keys, jwks, status):
    from snap2caption_service.serving.oidc import JwksUnavailable

    clock = Clock()
    verifier = make_verifier(jwks.url, clock=clock, min_interval_s=10)
    jwks.status = status
    with pytest.raises(JwksUnavailable):
        verify(verifier, "Bearer " + sign(keys["rsa-1"]))
    jwks.status = 200
    clock.now += 10
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"])) == SENDER


def test_a_stale_key_set_keeps_working_while_the_jwks_is_down(keys, jwks):
    clock = Clock()
    verifier = make_verifier(jwks.url, clock=clock, max_age_s=60)
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"])) == SENDER
    jwks.status = 503
    clock.now += 61
    assert verify(verifier, "Bearer " + sign(keys["rsa-1"])) == SENDER  # refresh failed: cached key used
    assert jwks.hits == 2


def test_a_slow_jwks_times_out_without_blocking_the_event_loop(keys, jwks):
    from snap2caption_service.serving.oidc import JwksUnavailable

    jwks.delay_s = 3
    verifier = make_verifier(jwks.url, timeout_s=0.5)

    async def run():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        try:
            with pytest.raises(JwksUnavailable):
                await verifier.verify("Bearer " + sign(keys["rsa-1"]))
        finally:
            task.cancel()
        return time.monotonic() - started, ticks

    elapsed, ticks = asyncio.run(run())
    assert elapsed < 2.0
    assert ticks >= 5  # the loop kept running while the fetch waited


def test_unusable_keys_in_the_jwks_are_ignored(keys):
    from snap2caption_service.serving.oidc import parse_jwks

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    document = {
        "keys": [
            jwk("good", keys["rsa-1"]),
            jwk("small-rsa", small),
            {**jwt.algorithms.ECAlgorithm.to_jwk(p384.public_key(), as_dict=True), "kid": "p384"},
            {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"},
            {**jwk("enc", keys["rsa-2"]), "use": "enc"},
            {**jwk("wrong-alg", keys["rsa-2"]), "alg": "RS512"},
            {k: v for k, v in jwk("no-kid", keys["rsa-2"]).items() if k != "kid"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not a key",
        ]
    }
    assert set(parse_jwks(document)) == {"good"}


# --- the JWKS fetch as in a cluster: https with the cluster's CA, the pod's token -------------------


@pytest.fixture
def tls_jwks(keys, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "token").write_text("pod-sa-token\n")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "ca.crt", tmp_path / "tls.key")
    server = JwksServer([jwk("rsa-1", keys["rsa-1"])], tls=tls, require_auth="Bearer pod-sa-token")
    yield server, tmp_path
    server.close()


def test_the_jwks_is_fetched_with_the_cluster_ca_and_the_pods_token(keys, tls_jwks):
    from snap2caption_service.serving.oidc import JwksUnavailable

    server, d = tls_jwks
    token = "Bearer " + sign(keys["rsa-1"])
    ok = make_verifier(server.url, ca_file=str(d / "ca.crt"), token_file=str(d / "token"))
    assert verify(ok, token) == SENDER
    assert server.auth == ["Bearer pod-sa-token"]
    # Without the token the API server refuses (401): that is "JWKS unavailable", not the sender's fault.
    with pytest.raises(JwksUnavailable):
        verify(make_verifier(server.url, ca_file=str(d / "ca.crt")), token)
    # Without the cluster's CA the server is not trusted: no keys, and the token was never sent.
    hits = server.hits
    with pytest.raises(JwksUnavailable):
        verify(make_verifier(server.url, token_file=str(d / "token")), token)
    assert server.hits == hits


# --- settings and start-up ------------------------------------------------------------------------


def test_settings_map_to_the_verifier_with_kubernetes_defaults(monkeypatch, tmp_path):
    from snap2caption_service.core.settings import Settings
    from snap2caption_service.serving import oidc

    monkeypatch.setattr(oidc, "SERVICE_ACCOUNT_DIR", tmp_path)
    s = Settings(
        _env_file=None,
        events_auth="oidc",
        events_oidc_audience=AUDIENCE,
        events_oidc_subjects=f" {SENDER} , system:serviceaccount:ns:other ,",
    )
    config = oidc.OidcConfig.from_settings(s)
    assert config.issuer == ISSUER and config.audience == AUDIENCE
    assert config.subjects == {SENDER, "system:serviceaccount:ns:other"}
    assert config.jwks_url == ISSUER + "/openid/v1/jwks"
    assert (config.ca_file, config.token_file) == (None, None)  # no service-account mount here
    # In a pod with the service-account mount, its CA and token are used.
    (tmp_path / "ca.crt").write_text("-")
    (tmp_path / "token").write_text("-")
    config = oidc.OidcConfig.from_settings(s)
    assert (config.ca_file, config.token_file) == (str(tmp_path / "ca.crt"), str(tmp_path / "token"))
    s2 = s.model_copy(update={"events_oidc_jwks_token_file": "none", "events_oidc_jwks_url": "https://jwks.example/k"})
    config = oidc.OidcConfig.from_settings(s2)
    assert (config.jwks_url, config.token_file) == ("https://jwks.example/k", None)


@pytest.mark.parametrize(
    "missing,env",
    [
        ({"events_oidc_audience": ""}, "SNAP2CAPTION_EVENTS_OIDC_AUDIENCE"),
        ({"events_oidc_subjects": " , "}, "SNAP2CAPTION_EVENTS_OIDC_SUBJECTS"),
        ({"events_oidc_issuer": ""}, "SNAP2CAPTION_EVENTS_OIDC_ISSUER"),
    ],
)
def test_oidc_mode_refuses_to_start_without_its_settings(monkeypatch, tmp_path, missing, env):
    from snap2caption_service.core import settings as settings_module
    from snap2caption_service.serving import oidc
    from snap2caption_service.serving.auth import ApiKeyMiddleware

    monkeypatch.setattr(oidc, "SERVICE_ACCOUNT_DIR", tmp_path)
    values = {"events_auth": "oidc", "events_oidc_audience": AUDIENCE, "events_oidc_subjects": SENDER, **missing}
    monkeypatch.setattr(settings_module, "get_settings", lambda: settings_module.Settings(_env_file=None, **values))
    with pytest.raises(ValueError, match=env):
        ApiKeyMiddleware(None, ["k"], "oidc", "cluster.local", SERVICE, NAMESPACE)
    values.update({"events_oidc_audience": AUDIENCE, "events_oidc_subjects": SENDER, "events_oidc_issuer": ISSUER})
    assert ApiKeyMiddleware(None, ["k"], "oidc", "cluster.local", SERVICE, NAMESPACE).oidc is not None


@pytest.mark.parametrize(
    "field,env", [("events_oidc_jwks_ca_file", "CA_FILE"), ("events_oidc_jwks_token_file", "TOKEN_FILE")]
)
def test_a_configured_ca_or_token_file_must_exist(tmp_path, field, env):
    from snap2caption_service.core.settings import Settings
    from snap2caption_service.serving.oidc import OidcConfig

    s = Settings(
        _env_file=None, events_oidc_audience=AUDIENCE, events_oidc_subjects=SENDER, **{field: "/nonexistent/x"}
    )
    with pytest.raises(ValueError, match=f"SNAP2CAPTION_EVENTS_OIDC_JWKS_{env}=/nonexistent/x: no such file"):
        OidcConfig.from_settings(s)


def test_the_service_account_token_is_never_sent_in_clear_text(tmp_path):
    from snap2caption_service.serving.oidc import OidcConfig

    with pytest.raises(ValueError, match="clear text"):
        OidcConfig(ISSUER, AUDIENCE, frozenset({SENDER}), "http://10.0.0.1/openid/v1/jwks", token_file="/t")
    OidcConfig(ISSUER, AUDIENCE, frozenset({SENDER}), "http://10.0.0.1/openid/v1/jwks")  # no token: allowed


# --- through the middleware -----------------------------------------------------------------------


def asgi(
    verifier, path: str, authorization: str | None, host: str = "snap2caption.snap2caption-prod.svc", keys=("k1",)
):
    from snap2caption_service.serving.auth import ApiKeyMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    sent = []

    async def send(message):
        sent.append(message)

    headers = [(b"host", host.encode())] + ([(b"authorization", authorization.encode())] if authorization else [])
    mw = ApiKeyMiddleware(app, list(keys), "oidc", "cluster.local", SERVICE, NAMESPACE, oidc=verifier)
    asyncio.run(mw({"type": "http", "path": path, "headers": headers}, None, send))
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def test_middleware_lets_only_a_valid_sender_token_or_the_key_through_on_events(keys, jwks):
    verifier = make_verifier(jwks.url)
    good = sign(keys["rsa-1"])
    assert asgi(verifier, "/events", "Bearer " + good)[0] == 200
    assert asgi(verifier, "/events", "Bearer k1")[0] == 200  # the API key still works on /events
    # The cluster-local Host alone no longer opens /events (the point of oidc mode).
    status, headers, body = asgi(verifier, "/events", None)
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    assert "no bearer token" in json.loads(body)["detail"]
    bad = sign(keys["rsa-1"], aud=["someone-else"])
    status, headers, body = asgi(verifier, "/events", "Bearer " + bad)
    assert status == 401 and headers[b"www-authenticate"].startswith(b"Bearer")
    error = json.loads(body)
    assert error["error"] == "unauthorized" and "wrong audience" in error["detail"]
    assert bad not in body.decode() and bad.split(".")[1] not in body.decode()  # never echoed
    # A sender token opens /events only: every other route still needs the key.
    assert asgi(verifier, "/generate-caption", "Bearer " + good)[0] == 401
    assert asgi(verifier, "/feedback", "Bearer " + good)[0] == 401
    assert asgi(verifier, "/events/", "Bearer " + good)[0] == 401
    assert asgi(verifier, "/readyz", None)[0] == 200


def test_oidc_guards_events_even_when_no_api_keys_are_configured(keys, jwks):
    """A Service that takes events only has no API keys; /events must still need a sender token."""
    verifier = make_verifier(jwks.url)
    assert asgi(verifier, "/events", None, keys=())[0] == 401
    assert asgi(verifier, "/events", "Bearer " + sign(keys["rsa-1"], aud=["other"]), keys=())[0] == 401
    assert asgi(verifier, "/events", "Bearer " + sign(keys["rsa-1"]), keys=())[0] == 200
    assert asgi(verifier, "/generate-caption", None, keys=())[0] == 200  # no keys: the API is open, as before


def test_middleware_answers_503_with_retry_after_when_the_jwks_is_down(keys):
    verifier = make_verifier(f"http://127.0.0.1:{free_port()}/openid/v1/jwks")
    status, headers, body = asgi(verifier, "/events", "Bearer " + sign(keys["rsa-1"]))
    assert status == 503 and int(headers[b"retry-after"]) >= 1
    assert json.loads(body)["error"] == "unavailable"
    assert asgi(verifier, "/events", "Bearer k1")[0] == 200  # the key needs no JWKS


# --- the real service -----------------------------------------------------------------------------


@pytest.mark.service
def test_service_in_oidc_mode_checks_sender_tokens_on_events(tmp_path_factory, tiny_model_dir, keys, jwks):
    from conftest import start_service, stop_service

    svc = start_service(
        tmp_path_factory.mktemp("svc-events-oidc"),
        tiny_model_dir,
        {
            "SNAP2CAPTION_API_KEYS": "key-one",
            "SNAP2CAPTION_EVENTS_AUTH": "oidc",
            "SNAP2CAPTION_EVENTS_OIDC_ISSUER": ISSUER,
            "SNAP2CAPTION_EVENTS_OIDC_AUDIENCE": AUDIENCE,
            "SNAP2CAPTION_EVENTS_OIDC_SUBJECTS": SENDER,
            "SNAP2CAPTION_EVENTS_OIDC_JWKS_URL": jwks.url,
            "SNAP2CAPTION_EVENTS_OIDC_JWKS_TOKEN_FILE": "none",
            "K_SERVICE": SERVICE,
            "SNAP2CAPTION_NAMESPACE": NAMESPACE,
        },
    )
    try:
        url, host = svc.url + "/events", {"Host": f"{SERVICE}.{NAMESPACE}.svc.cluster.local"}
        # A good token reaches the handler, which refuses the empty event for what it is.
        r = httpx.post(url, content=b"", headers={**host, "Authorization": "Bearer " + sign(keys["rsa-1"])}, timeout=60)
        assert r.status_code not in (401, 503) and 400 <= r.status_code < 500, r.text
        assert r.json()["error"] != "unauthorized"
        for bad in (sign(keys["rsa-1"], sub="system:serviceaccount:other:default"), sign(keys["rsa-1"], exp=1)):
            r = httpx.post(url, content=b"", headers={**host, "Authorization": "Bearer " + bad}, timeout=60)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
        r = httpx.post(url, content=b"", headers=host, timeout=60)  # the cluster-local Host is not enough
        assert r.status_code == 401
    finally:
        stop_service(svc.proc)
