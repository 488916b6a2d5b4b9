"""Canary analysis: is the candidate revision as good as the stable one, judged by Prometheus?

Three signals per revision over a window, from the metrics every pod exports on /metrics:

- request success rate: caption requests (HTTP JSON, upload, Knative push) that did not end in
  a 5xx, from BentoML's ``bentoml_service_request_total``. 4xx are the caller's fault and count
  as served.
- p95 latency of successful captions, from our ``snap2caption_caption_latency_seconds`` (request
  in to result out, queueing in the batcher included). Not BentoML's request histogram: its
  default buckets (1, 2.5, 5 s) are too coarse to compare two revisions by.
- caption-error rate: our ``snap2caption_captions_total`` outcome ``error`` against ``ok`` +
  ``error`` (bad input is excluded: a candidate cannot be blamed for it).

``decide`` turns the two revisions' figures into promote, hold or rollback. It is pure, so the
policy is unit-tested without Prometheus; ``fetch_stats`` is the only part that talks to it.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

# Exit codes of `snap2caption canary analyze`; a workflow branches on them. 2 is argparse's
# usage error, so hold is 3, never confused with a typo in the command line.
EXIT_PROMOTE, EXIT_ROLLBACK, EXIT_HOLD, EXIT_NO_ANALYSIS = 0, 1, 3, 4

Action = Literal["promote", "hold", "rollback"]
EXIT_CODES: dict[str, int] = {"promote": EXIT_PROMOTE, "rollback": EXIT_ROLLBACK, "hold": EXIT_HOLD}

THRESHOLDS_ENV_PREFIX = "SNAP2CAPTION_CANARY_"

# The public service's name in BentoML's runner_name label (the model worker is
# "snap2caption-model" and answers only the API, so it must not be counted twice).
API_RUNNER = "snap2caption"
CAPTION_ENDPOINTS = "/generate-caption|/generate-caption/upload|/events"
_WINDOW = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


class Thresholds(BaseModel):
    """When a candidate is promoted, held or rolled back. Relative limits apply only when the
    stable revision itself served ``min_requests`` in the window (at the 100 % step it serves
    nothing, and the absolute limits alone decide)."""

    model_config = ConfigDict(extra="forbid")

    min_requests: int = Field(
        100,
        ge=1,
        description="Caption requests the candidate must have served "
        "in the window before it is judged at all (else hold).",
    )
    min_success_rate: float = Field(0.99, ge=0, le=1, description="Lowest share of non-5xx answers.")
    max_success_rate_drop: float = Field(
        0.005, ge=0, le=1, description="How far the success rate may fall below stable's."
    )
    max_p95_seconds: float = Field(2.0, gt=0, description="Highest p95 latency of successful requests.")
    max_p95_ratio: float = Field(1.5, ge=1, description="Highest candidate/stable p95 ratio.")
    p95_slack_seconds: float = Field(
        0.1, ge=0, description="p95 differences from stable below this are noise (histogram buckets), never a failure."
    )
    max_caption_error_rate: float = Field(0.01, ge=0, le=1, description="Highest share of caption errors.")
    max_caption_error_increase: float = Field(
        0.005, ge=0, le=1, description="How far the caption-error rate may exceed stable's."
    )


class _ThresholdsEnv(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=THRESHOLDS_ENV_PREFIX, env_ignore_empty=True, extra="ignore")


# Thresholds set as SNAP2CAPTION_CANARY_<NAME> env vars; unset ones stay None (not applied).
ThresholdsFromEnv = create_model(
    "ThresholdsFromEnv",
    __base__=_ThresholdsEnv,
    **{name: (info.annotation | None, None) for name, info in Thresholds.model_fields.items()},
)


class CanarySettings(BaseSettings):
    """`snap2caption canary analyze` defaults, overridden by its flags."""

    model_config = SettingsConfigDict(env_prefix="SNAP2CAPTION_", env_ignore_empty=True, extra="ignore")

    prometheus_url: str = "http://127.0.0.1:9090"
    prometheus_token: str = Field("", description="Bearer token for Prometheus, if it needs one.")
    canary_candidate: str | None = None
    canary_stable: str | None = None
    canary_window: str = "5m"
    canary_revision_label: str = "revision"
    canary_selector: str = ""
    canary_config: str | None = None


@dataclass(frozen=True)
class RevisionStats:
    """One revision's figures over the window; None where there was nothing to measure."""

    revision: str
    requests: float
    success_rate: float | None
    p95_seconds: float | None
    caption_error_rate: float | None
    captions: float = 0.0


@dataclass
class Verdict:
    action: Action
    reasons: list[str] = field(default_factory=list)  # why rollback / hold; the checks passed for promote
    notes: list[str] = field(default_factory=list)  # what was not checked, and why

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.action]


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def decide(candidate: RevisionStats, stable: RevisionStats | None, t: Thresholds) -> Verdict:
    """The canary policy. Hold until the candidate has enough traffic; then any failed check
    rolls back, and promotion needs every check that could be made to pass."""
    if candidate.requests < t.min_requests:
        return Verdict(
            "hold",
            [
                f"candidate {candidate.revision} served {candidate.requests:.0f} caption "
                f"requests in the window; {t.min_requests} are needed to judge it"
            ],
        )
    notes: list[str] = []
    comparable = stable is not None and stable.requests >= t.min_requests
    if stable is not None and not comparable:
        notes.append(
            f"stable {stable.revision} served {stable.requests:.0f} requests (< {t.min_requests}): absolute limits only"
        )
    failed: list[str] = []
    passed: list[str] = []

    def check(ok: bool, text: str) -> None:
        (passed if ok else failed).append(text)

    sr = candidate.success_rate if candidate.success_rate is not None else 0.0
    check(sr >= t.min_success_rate, f"success rate {_pct(sr)} vs minimum {_pct(t.min_success_rate)}")
    if comparable and stable.success_rate is not None:
        floor = stable.success_rate - t.max_success_rate_drop
        check(
            sr >= floor,
            f"success rate {_pct(sr)} vs stable {_pct(stable.success_rate)} "
            f"- {_pct(t.max_success_rate_drop)} allowed drop",
        )

    p95 = candidate.p95_seconds
    if p95 is None:
        notes.append("no successful requests: no latency to judge")
    else:
        check(p95 <= t.max_p95_seconds, f"p95 {p95:.3f}s vs maximum {t.max_p95_seconds:.3f}s")
        if comparable and stable.p95_seconds is not None:
            s95 = stable.p95_seconds
            ok = p95 <= s95 * t.max_p95_ratio or p95 - s95 <= t.p95_slack_seconds
            check(
                ok,
                f"p95 {p95:.3f}s vs stable {s95:.3f}s x {t.max_p95_ratio:g} "
                f"(differences under {t.p95_slack_seconds:g}s ignored)",
            )

    cer = candidate.caption_error_rate
    if cer is None:
        notes.append("no caption outcomes recorded: caption-error rate not judged")
    else:
        check(
            cer <= t.max_caption_error_rate,
            f"caption-error rate {_pct(cer)} vs maximum {_pct(t.max_caption_error_rate)}",
        )
        if comparable and stable.caption_error_rate is not None:
            ceiling = stable.caption_error_rate + t.max_caption_error_increase
            check(
                cer <= ceiling,
                f"caption-error rate {_pct(cer)} vs stable {_pct(stable.caption_error_rate)} "
                f"+ {_pct(t.max_caption_error_increase)} allowed increase",
            )

    if failed:
        return Verdict("rollback", failed, notes)
    return Verdict("promote", passed, notes)


# -- Prometheus ------------------------------------------------------------------------------


class AnalysisError(Exception):
    """Prometheus could not be asked or did not answer: no verdict at all (exit 4)."""


def _quote(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def revision_selector(revision: str, revision_label: str = "revision", extra: str = "") -> str:
    """Label matchers for one revision. ``extra`` (e.g. ``namespace="snap2caption-prod"``) is
    added as written."""
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", revision_label):
        raise ValueError(f"not a Prometheus label name: {revision_label!r}")
    parts = [f"{revision_label}={_quote(revision)}"]
    if extra.strip():
        parts.append(extra.strip().strip(","))
    return ",".join(parts)


def check_window(window: str) -> str:
    if not _WINDOW.match(window):
        raise ValueError(f"not a PromQL duration: {window!r} (e.g. 5m, 90s, 1h30m)")
    return window


def build_queries(selector: str, window: str) -> dict[str, str]:
    """The PromQL for one revision; each answers a single number (or nothing)."""
    check_window(window)
    api = f'runner_name="{API_RUNNER}",endpoint=~"{CAPTION_ENDPOINTS}",{selector}'

    def total(metric: str, matchers: str) -> str:
        return f"sum(increase({metric}{{{matchers}}}[{window}]))"

    return {
        "requests": total("bentoml_service_request_total", api),
        "server_errors": total("bentoml_service_request_total", api + ',http_response_code=~"5.."'),
        "p95_seconds": (
            "histogram_quantile(0.95, sum by (le) (increase(snap2caption_caption_latency_seconds_bucket"
            f"{{{selector}}}[{window}])))"
        ),
        "captions": total("snap2caption_captions_total", f'outcome=~"ok|error",{selector}'),
        "caption_errors": total("snap2caption_captions_total", f'outcome="error",{selector}'),
        "series": f"count(bentoml_service_request_total{{{api}}})",
    }


def query_scalar(client, expr: str) -> float | None:
    """Evaluate an instant query that yields at most one sample; None when it yields none or NaN."""
    import httpx

    try:
        r = client.get("/api/v1/query", params={"query": expr})
    except httpx.HTTPError as exc:
        raise AnalysisError(f"Prometheus at {client.base_url} is unreachable: {exc}") from exc
    try:
        body = r.json()
    except ValueError:
        raise AnalysisError(f"Prometheus answered {r.status_code} with non-JSON: {r.text[:200]}") from None
    if r.status_code != 200 or body.get("status") != "success":
        raise AnalysisError(
            f"Prometheus rejected the query ({r.status_code} {body.get('errorType')}: {body.get('error')}):\n  {expr}"
        )
    result = body["data"]["result"]
    if not result:
        return None
    if len(result) > 1:
        raise AnalysisError(f"expected one series, got {len(result)}:\n  {expr}")
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def fetch_stats(client, revision: str, selector: str, window: str) -> tuple[RevisionStats, bool]:
    """One revision's figures, and whether Prometheus holds any series for it at all."""
    q = build_queries(selector, window)
    requests = query_scalar(client, q["requests"]) or 0.0
    errors = query_scalar(client, q["server_errors"]) or 0.0
    captions = query_scalar(client, q["captions"]) or 0.0
    caption_errors = query_scalar(client, q["caption_errors"]) or 0.0
    stats = RevisionStats(
        revision=revision,
        requests=requests,
        success_rate=max(0.0, 1.0 - errors / requests) if requests > 0 else None,
        p95_seconds=query_scalar(client, q["p95_seconds"]),
        caption_error_rate=caption_errors / captions if captions > 0 else None,
        captions=captions,
    )
    return stats, query_scalar(client, q["series"]) is not None


def analyze(
    prometheus_url: str,
    candidate: str,
    stable: str | None,
    window: str,
    thresholds: Thresholds,
    revision_label: str = "revision",
    extra_selector: str = "",
    timeout: float = 10.0,
    token: str | None = None,
) -> tuple[Verdict, RevisionStats, RevisionStats | None]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=prometheus_url.rstrip("/"), timeout=timeout, headers=headers) as client:
        cand, cand_seen = fetch_stats(
            client, candidate, revision_selector(candidate, revision_label, extra_selector), window
        )
        stab = None
        if stable:
            stab, _ = fetch_stats(client, stable, revision_selector(stable, revision_label, extra_selector), window)
    verdict = decide(cand, stab, thresholds)
    if not cand_seen:
        verdict.notes.append(
            f"Prometheus has no bentoml_service_request_total series with "
            f"{revision_selector(candidate, revision_label, extra_selector)}: is the candidate "
            f"scraped, and is --revision-label right?"
        )
    return verdict, cand, stab


def load_thresholds(config_file: str | Path | None = None, overrides: dict | None = None) -> Thresholds:
    """Defaults < the YAML/JSON config file < SNAP2CAPTION_CANARY_<NAME> env vars < flags."""
    values: dict = {}
    if config_file:
        import yaml

        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read thresholds file {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of threshold names to values")
        values.update({str(k).replace("-", "_"): v for k, v in (loaded or {}).items()})
    values.update(ThresholdsFromEnv().model_dump(exclude_none=True))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Thresholds.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"bad canary thresholds: {problems}") from None


def report(verdict: Verdict, cand: RevisionStats, stab: RevisionStats | None, window: str) -> dict:
    return {
        "action": verdict.action,
        "exit_code": verdict.exit_code,
        "window": window,
        "reasons": verdict.reasons,
        "notes": verdict.notes,
        "candidate": asdict(cand),
        "stable": asdict(stab) if stab else None,
    }


# -- Knative traffic -------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")


def traffic_patch(
    service: str,
    stable: str,
    candidate: str,
    percent: int,
    image: str | None = None,
    container: str = "snap2caption",
    promote: bool = False,
) -> list[dict]:
    """The JSON patch (RFC 6902) for ``kubectl patch ksvc SERVICE --type json`` at one canary step.

    With ``image``: the candidate revision is created (its name set in the template, so the
    analysis can select it before it serves anything). ``percent`` 0 is deploy-at-0 % and
    rollback; ``promote`` (at 100) makes the candidate the new stable and keeps the old one at
    0 % under the tag ``previous`` for a one-command manual rollback.
    """
    for name in (stable, candidate):
        # Knative only accepts a revision name chosen by us when it is "<service>-<suffix>".
        if not (_DNS_LABEL.match(name) and name.startswith(service + "-")):
            raise ValueError(f"revision {name!r} must be a DNS label starting with {service + '-'!r}")
    if stable == candidate:
        raise ValueError("stable and candidate are the same revision")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be 0-100, not {percent}")
    if promote and percent != 100:
        raise ValueError("promote only at 100 percent")
    ops: list[dict] = []
    if image is not None:
        if not _DIGEST_REF.match(image):
            # A tag can move between the analysis and a pod restart; a digest cannot.
            raise ValueError(f"image must be pinned by digest (name@sha256:<64 hex>), not {image!r}")
        ops += [
            {"op": "test", "path": "/spec/template/spec/containers/0/name", "value": container},
            {"op": "add", "path": "/spec/template/spec/containers/0/image", "value": image},
            {"op": "add", "path": "/spec/template/metadata/name", "value": candidate},
        ]
    if promote:
        traffic = [
            {"revisionName": candidate, "percent": 100, "tag": "stable"},
            {"revisionName": stable, "percent": 0, "tag": "previous"},
        ]
    else:
        traffic = [
            {"revisionName": stable, "percent": 100 - percent, "tag": "stable"},
            {"revisionName": candidate, "percent": percent, "tag": "candidate"},
        ]
    ops.append({"op": "add", "path": "/spec/traffic", "value": traffic})
    return ops
