"""Knative Eventing sender identity on ``/events``: SNAP2CAPTION_EVENTS_AUTH=oidc.

With Eventing's ``authentication-oidc`` feature enabled (``config-features`` in
``knative-eventing``), the dispatcher that delivers an event asks the Kubernetes API for a token
of the sender's own OIDC service account (TokenRequest, audiences ``[<destination audience>]``,
one hour; knative/eventing pkg/auth/token_provider.go) and sends it as
``Authorization: Bearer <JWT>``. That token is a service-account JWT:

  iss  the cluster's service-account issuer (kube-apiserver --service-account-issuer;
       ``https://kubernetes.default.svc.cluster.local`` on kubeadm and kind)
  aud  ``[<audience>]``: the destination's ``audience``. Eventing's own addressables announce
       ``<group>/<kind>/<namespace>/<name>`` in ``status.address.audience`` (pkg/auth/audience.go);
       a Knative *Serving* Service announces none, so the Sequence step / Trigger subscriber that
       points here sets ``audience:`` itself, and that value is SNAP2CAPTION_EVENTS_OIDC_AUDIENCE.
  sub  ``system:serviceaccount:<namespace>:<name>`` of the sender's OIDC service account, named
       ``kmeta.ChildName(<resource>, "-oidc-<group>-<kind>")`` in lower case
       (pkg/auth/serviceaccount.go). For a Sequence step the sender is the step's Subscription,
       ``<sequence>-kn-sequence-<step>`` (messaging.knative.dev); for a Broker the Trigger.
  exp, iat, nbf  and ``kid`` in the header: the key that signed it, from the issuer's JWKS.

See https://knative.dev/docs/eventing/features/sender-identity/ for the feature itself.

What is checked, and how it fails (never echoing the token):

- the header is ``Authorization: Bearer <token>`` (401 otherwise);
- the header names RS256 or ES256 (never ``none``, never HS*: an HMAC "signed" with the public key
  as secret is the classic confusion attack), a key id, no ``crit``; the key with that id is an
  RSA (>= 2048 bits, RS256) or P-256 (ES256) key, and the header's algorithm is that key's;
- the signature; ``exp`` (required), ``nbf`` and ``iat`` when present, with a small leeway;
  ``iss`` equal to the issuer; ``aud`` (string or list) containing the audience; ``sub`` one of
  the allowed subjects;
- the keys (JWKS) are fetched with an async client, one total timeout, and cached. An unknown key
  id triggers a refetch (so a rotated key works) at most once per REFETCH_MIN_INTERVAL_S, one
  fetch at a time: a stream of made-up key ids costs one fetch per interval, not one per request.
  A JWKS that cannot be had, when the token's key is not already known, answers 503 with
  Retry-After (the dispatcher retries) rather than 401 (which it would dead-letter at once).

Why httpx and not ``jwt.PyJWKClient``: PyJWKClient fetches with blocking ``urllib`` (it would
need a thread per fetch), refetches on *every* unknown key id with no rate limit, and sends the
headers it was built with, while the projected service-account token it must send is rotated by
the kubelet. Verification itself is PyJWT's (``jwt.decode``, ``jwt.PyJWK``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger(__name__)

# Where Kubernetes mounts the pod's service-account credentials (when it mounts them).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
JWKS_PATH = "/openid/v1/jwks"  # kube-apiserver's JWKS (Service Account Issuer Discovery)
NO_TOKEN = "none"  # events_oidc_jwks_token_file: send no token with the JWKS fetch

ALGORITHMS = ("RS256", "ES256")
LEEWAY_S = 30  # clock skew allowed on exp / nbf / iat
JWKS_TIMEOUT_S = 5.0  # one fetch, everything included (DNS, connect, TLS, body)
REFETCH_MIN_INTERVAL_S = 10.0  # fewest seconds between two fetches, however many unknown kids
JWKS_MAX_AGE_S = 3600.0  # a cached key set older than this is refreshed on the next request
MAX_JWKS_BYTES = 1024 * 1024
MAX_TOKEN_CHARS = 16 * 1024
MIN_RSA_BITS = 2048


class TokenRejected(Exception):
    """The request carries no acceptable sender token: 401, ``str()`` is the reason."""


class JwksUnavailable(Exception):
    """The signing keys cannot be had right now: 503 with Retry-After."""

    def __init__(self, reason: str, retry_after_s: int = 1):
        super().__init__(reason)
        self.retry_after_s = max(1, retry_after_s)


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    subjects: frozenset[str]
    jwks_url: str
    ca_file: str | None = None  # None: the system's trust store
    token_file: str | None = None  # None: no Authorization on the JWKS fetch

    def __post_init__(self):
        missing = [
            env
            for env, value in (
                ("SNAP2CAPTION_EVENTS_OIDC_ISSUER", self.issuer),
                ("SNAP2CAPTION_EVENTS_OIDC_AUDIENCE", self.audience),
                ("SNAP2CAPTION_EVENTS_OIDC_SUBJECTS", self.subjects),
            )
            if not value
        ]
        if missing:
            # Fail at start, not with a 401 on every delivered event.
            raise ValueError(
                f"SNAP2CAPTION_EVENTS_AUTH=oidc needs {', '.join(missing)}: the audience is the `audience` "
                "of the Sequence step / Trigger that delivers to /events, the subjects "
                "system:serviceaccount:<namespace>:<name> of its OIDC service account (k8s/README.md)"
            )
        if not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"SNAP2CAPTION_EVENTS_OIDC_JWKS_URL={self.jwks_url!r}: expected an https:// URL")
        if self.token_file and not self.jwks_url.startswith("https://"):
            raise ValueError(
                f"SNAP2CAPTION_EVENTS_OIDC_JWKS_URL={self.jwks_url!r} is not https: refusing to send the "
                f"service-account token ({self.token_file}) in clear text; set "
                f"SNAP2CAPTION_EVENTS_OIDC_JWKS_TOKEN_FILE={NO_TOKEN} for a JWKS that needs none"
            )

    @classmethod
    def from_settings(cls, s) -> OidcConfig:
        """From core.settings.Settings (events_oidc_*), defaults resolved against this pod."""
        issuer = s.events_oidc_issuer.strip()  # compared as is: `iss` must be exactly this
        ca_file = s.events_oidc_jwks_ca_file.strip() or _if_present(SERVICE_ACCOUNT_DIR / "ca.crt")
        token_file = s.events_oidc_jwks_token_file.strip()
        for env, path in (("CA_FILE", ca_file), ("TOKEN_FILE", token_file)):
            if path and path.lower() != NO_TOKEN and not Path(path).is_file():
                raise ValueError(f"SNAP2CAPTION_EVENTS_OIDC_JWKS_{env}={path}: no such file")
        if token_file.lower() == NO_TOKEN:
            token_file = None
        else:
            token_file = token_file or _if_present(SERVICE_ACCOUNT_DIR / "token")
        return cls(
            issuer=issuer,
            audience=s.events_oidc_audience.strip(),
            subjects=frozenset(v.strip() for v in s.events_oidc_subjects.split(",") if v.strip()),
            jwks_url=s.events_oidc_jwks_url.strip() or issuer.rstrip("/") + JWKS_PATH,
            ca_file=ca_file,
            token_file=token_file,
        )


def _if_present(path: Path) -> str | None:
    return str(path) if path.is_file() else None


@dataclass(frozen=True)
class _Key:
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    algorithm: str


def parse_jwks(document: object) -> dict[str, _Key]:
    """kid -> public key, for the RS256 / ES256 signing keys of a JWKS; anything else is skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS (no `keys` list)")
    keys = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(jwk).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        if isinstance(parsed, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            parsed = parsed.public_key()  # a JWKS should never hold one; verify with its public half
        if isinstance(parsed, rsa.RSAPublicKey) and parsed.key_size >= MIN_RSA_BITS:
            algorithm = "RS256"
        elif isinstance(parsed, ec.EllipticCurvePublicKey) and isinstance(parsed.curve, ec.SECP256R1):
            algorithm = "ES256"
        else:
            continue
        if jwk.get("alg", algorithm) != algorithm:
            continue
        keys[jwk["kid"]] = _Key(parsed, algorithm)
    return keys


class JwksCache:
    """The issuer's signing keys, fetched on demand, refetched for an unknown key id at most once
    per ``min_interval_s`` and when older than ``max_age_s``; one fetch at a time."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None = None,
        token_file: str | None = None,
        timeout_s: float = JWKS_TIMEOUT_S,
        min_interval_s: float = REFETCH_MIN_INTERVAL_S,
        max_age_s: float = JWKS_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.url, self.ca_file, self.token_file = url, ca_file, token_file
        self.timeout_s, self.min_interval_s, self.max_age_s = timeout_s, min_interval_s, max_age_s
        self.clock = clock
        self.keys: dict[str, _Key] = {}
        self.fetched_at: float | None = None  # last successful fetch
        self.attempted_at: float | None = None  # last fetch, successful or not
        self.last_error: str | None = None  # of the last fetch; None once one succeeds
        self._loop_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def _lock(self) -> asyncio.Lock:
        """The fetch lock of the running event loop (one per process in the service; tests run several)."""
        loop = asyncio.get_running_loop()
        if self._loop_lock is None or self._loop_lock[0] is not loop:
            self._loop_lock = (loop, asyncio.Lock())
        return self._loop_lock[1]

    def _fresh(self, now: float) -> bool:
        return self.fetched_at is not None and now - self.fetched_at < self.max_age_s

    async def key(self, kid: str) -> _Key:
        known = self.keys.get(kid)
        if known is not None and self._fresh(self.clock()):
            return known
        lock = self._lock()
        if known is not None and lock.locked():
            return known  # a refresh is under way: the key we have is still good meanwhile
        async with lock:
            now = self.clock()
            if self.attempted_at is None or now - self.attempted_at >= self.min_interval_s:
                if kid not in self.keys or not self._fresh(now):
                    await self._refresh(now)
            known = self.keys.get(kid)
            if known is not None:
                return known  # a stale key whose refresh failed is kept: availability over a 503
            wait = math.ceil(self.min_interval_s - (self.clock() - (self.attempted_at or 0.0)))
            if self.fetched_at is None or self.last_error is not None:
                raise JwksUnavailable(f"the signing keys (JWKS) could not be fetched: {self.last_error}", wait)
            raise TokenRejected("unknown signing key (kid not in the issuer's JWKS)")

    async def _refresh(self, now: float) -> None:
        self.attempted_at = now
        try:
            keys = await asyncio.wait_for(self._fetch(), self.timeout_s)
        except TimeoutError:
            self.last_error = f"no answer within {self.timeout_s:g} s"
        except (httpx.HTTPError, OSError, ssl.SSLError, ValueError) as e:
            self.last_error = f"{type(e).__name__}: {e}"[:300]
        else:
            self.keys, self.fetched_at, self.last_error = keys, self.clock(), None
            log.info("JWKS %s: %d signing key(s) loaded", self.url, len(keys))
            return
        log.warning("JWKS %s: fetch failed (%s); %d cached key(s) kept", self.url, self.last_error, len(self.keys))

    async def _fetch(self) -> dict[str, _Key]:
        headers = {"Accept": "application/json"}
        if self.token_file:
            # Read at every fetch: the kubelet rotates a projected service-account token.
            headers["Authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        async with httpx.AsyncClient(verify=verify, timeout=self.timeout_s, follow_redirects=False) as client:
            async with client.stream("GET", self.url, headers=headers) as r:
                if r.status_code != 200:
                    raise ValueError(f"HTTP {r.status_code} from the JWKS URL")
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        keys = parse_jwks(json.loads(body))
        if not keys:
            raise ValueError("the JWKS holds no RS256/ES256 signing key")
        return keys


# PyJWT's verdicts -> the reason a 401 names (the token itself is never echoed).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid (nbf/iat in the future)"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidIssuedAtError, "invalid iat claim"),
    (jwt.exceptions.InvalidSubjectError, "invalid sub claim"),
    (jwt.InvalidAlgorithmError, "signing algorithm not accepted"),
    (jwt.DecodeError, "malformed token"),
)


class OidcVerifier:
    def __init__(self, config: OidcConfig, jwks: JwksCache | None = None):
        self.config = config
        self.jwks = jwks or JwksCache(config.jwks_url, ca_file=config.ca_file, token_file=config.token_file)

    async def verify(self, authorization: str) -> str:
        """The sender's subject when ``authorization`` (the header's value) carries a valid token.
        Raises TokenRejected (401) or JwksUnavailable (503)."""
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenRejected("no bearer token (send 'Authorization: Bearer <token>')")
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenRejected("malformed token (too long)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenRejected("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise TokenRejected(f"signing algorithm not accepted ({' or '.join(ALGORITHMS)} only)")
        if "crit" in header:
            raise TokenRejected("unsupported critical header parameters")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise TokenRejected("no key id (kid) in the token header")
        key = await self.jwks.key(kid)
        if alg != key.algorithm:
            raise TokenRejected("signing algorithm does not match the key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.MissingRequiredClaimError as e:
            raise TokenRejected(f"token has no {e.claim} claim") from None
        except jwt.InvalidTokenError as e:
            reason = next((text for kind, text in _REASONS if isinstance(e, kind)), "invalid token")
            raise TokenRejected(reason) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or subject not in self.config.subjects:
            log.info("/events: sender token for subject %r refused (not in SNAP2CAPTION_EVENTS_OIDC_SUBJECTS)", subject)
            raise TokenRejected("subject not allowed to send events")
        return subject
