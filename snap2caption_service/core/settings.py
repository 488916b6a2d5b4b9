"""Configuration shared below the entry points, env prefix SNAP2CAPTION_, documented defaults:

- ``Settings``       the model and the HTTP service (``get_settings()``);
- ``KafkaSettings``  the broker and topics, for every Kafka client;
- ``FetchSettings``  images fetched by reference, for the consumer and ``/events``.

The consumer's own loop settings extend the last two (stream/settings.py).

Values come from (highest first) CLI flags (the CLI writes them into the environment),
environment variables, then an env file named by SNAP2CAPTION_ENV_FILE (default
``snap2caption.env`` in the working directory, if present).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from snap2caption_service.core.alt_text import ALT_TEXT_MAX_CHARS, ALT_TEXT_TARGET_CHARS
from snap2caption_service.core.contracts import MAX_ALT_TEXT_CHARS


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "snap2caption"


# Mounted in every pod whose service account token is automounted (the Kubernetes default).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def pod_namespace() -> str:
    """The pod's namespace from its service-account mount; "" outside Kubernetes."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return ""


@dataclass
class GenerationSettings:
    """How the captioner samples and bounds its answer; the service's come from Settings,
    training's eval from its config."""

    max_new_tokens: int = 128  # unconstrained only: a constrained answer has its grammar's bound
    repetition_penalty: float = 1.0
    top_p: float = 0.95
    seed: int = 0
    constrained: bool = True
    alt_text_max_chars: int = ALT_TEXT_MAX_CHARS


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _config() -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix="SNAP2CAPTION_",
        env_file=os.environ.get("SNAP2CAPTION_ENV_FILE", "snap2caption.env"),
        extra="ignore",
        populate_by_name=True,
    )


class RegistrySettings(BaseSettings):
    """Where the MLflow registry is, and which registered model holds the served champion."""

    model_config = _config()

    mlflow_tracking_uri: str = Field(
        "",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "mlflow_tracking_uri"),
        description="The MLflow tracking server (http://...); empty = no registry [MLFLOW_TRACKING_URI]",
    )
    registered_model: str = Field(
        "snap2caption-captioner",
        description="MLflow registered model whose @champion is served when MLFLOW_TRACKING_URI is set.",
    )


class Settings(RegistrySettings):
    """The model and the HTTP service (and the registry the champion comes from)."""

    model: str = Field("", description="HF LLaVA id or local folder; empty = the embedded demo model.")
    adapter: str = Field("", description="PEFT LoRA adapter folder merged at load time; empty = none.")
    data_dir: Path = Field(default_factory=default_data_dir, description="Demo model cache, feedback store.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto (CUDA bf16/fp16, CPU fp32) | float32 | bfloat16 | float16")
    max_new_tokens: int = Field(128, ge=8, le=1024)
    repetition_penalty: float = Field(1.0, ge=0.5, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = 0
    constrained: bool = Field(
        True,
        description="Constrain generation to the answer layout (llguidance), so every answer parses. Turn off "
        "only for a model fine-tuned on the layout; max_new_tokens then bounds the answer.",
    )
    # The lint's 125-character target is guidance a model can miss; this cap is what every
    # answer is cut to (core/alt_text.py, cut at a word, with a full stop).
    alt_text_max_chars: int = Field(
        ALT_TEXT_MAX_CHARS,
        ge=16,
        le=MAX_ALT_TEXT_CHARS,
        description=f"Hard cap on an answer's alt text in characters (target: {ALT_TEXT_TARGET_CHARS}).",
    )
    # 0.35: the demo model's scene heads put pictures of coloured shapes above 0.8 and photos
    # without one below 0.2; a real checkpoint's mean token probability of a fluent answer sits
    # well above it, so only answers the model itself barely believes are flagged.
    min_confidence: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Answers whose confidence is below this are flagged (low_confidence, notice) rather than "
        "served as if fine.",
    )
    # Creator adapters (core/creator_adapters.py): per-creator LoRAs on top of the registry's
    # champion, served unmerged beside it. Each resident one costs its LoRA weights in memory
    # (a 7B model's r=16 attention LoRA: ~35 MB) and a little time in every batch that uses it.
    max_resident_adapters: int = Field(
        8,
        ge=0,
        description="Creator adapters kept loaded when no batch needs them (least recently used go first); "
        "adapters in use by a batch stay loaded beyond it. 0 = creator adapters off, the champion answers all.",
    )
    adapter_refresh_s: float = Field(
        30.0,
        gt=0,
        description="How long a creator's adapter version is trusted before its registry alias is read again: "
        "a newly promoted adapter is served within this, without a restart, and the old one unloaded.",
    )
    host: str = Field("127.0.0.1", description="`snap2caption serve`: address to listen on.")
    port: int = Field(3000, ge=0, le=65535, description="`snap2caption serve`: port to listen on.")

    max_batch_size: int = Field(32, ge=1, le=512, description="Adaptive batcher: most items per model call.")
    # BentoML's batcher refuses (503) requests it predicts will exceed this, and until it has
    # measured the model it predicts pessimistically (~2 s per item): a small budget turns a
    # burst right after start-up into errors. Overload is bounded by max_concurrency instead.
    max_latency_ms: int = Field(300_000, ge=10, description="Adaptive batcher: latency budget per request.")
    max_concurrency: int = Field(256, ge=1, description="Requests in flight before the API answers 503.")

    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1024)
    model_image_side: int = Field(
        448, ge=32, description="Images are shrunk to this long side before crossing to the model worker."
    )
    # Request bodies are refused (413) by serving/limits.py before any handler or multipart
    # parser reads them, so an oversized upload is never spooled to disk or held in memory.
    max_request_bytes: int = Field(
        0,
        ge=0,
        description="Largest request body on the caption routes and /events; 0 = derived from "
        "max_image_bytes: 4/3 x max_image_bytes (base64) + 64 KiB (JSON, form fields).",
    )
    # The largest valid feedback, every character an emoji sent as JSON \u escapes, is ~70 KB.
    max_small_request_bytes: int = Field(
        128 * 1024, ge=1024, description="Largest request body on every other route (/feedback ...)."
    )
    # Decoding holds the full-size bitmap (40 MP is ~120 MB as RGB, more while converting):
    # a process-wide pixel budget bounds what all requests decode at once (serving/pipeline.py).
    decode_budget_pixels: int = Field(
        0, ge=0, description="Pixels decoded at once across all requests; 0 = 4 x max_image_pixels."
    )
    decode_wait_s: float = Field(
        5.0, ge=0, description="Longest wait for decode budget; then 503 with Retry-After (overloaded)."
    )

    api_keys: str = Field("", description="Comma-separated bearer keys; empty = auth off.")
    feedback_path: Path | None = Field(None, description="Feedback store file; default <data_dir>/feedback.jsonl")
    feedback_fsync: bool = True
    tag_stats_path: Path | None = Field(
        None,
        validation_alias="SNAP2CAPTION_TAG_STATS_FILE",
        description="What creators keep, remove and add per hashtag (snap2caption tag-stats writes it, the "
        "ranker reads it); default <data_dir>/tag-stats.sqlite",
    )
    archive: str = Field(
        "",
        description="Where served images and results are kept for feedback: a folder or "
        "s3://bucket/prefix; default <data_dir>/archive",
    )

    events_auth: Literal["bearer", "cluster-local", "oidc", "none"] = Field(
        "bearer",
        description="How POST /events (Knative push mode) is authenticated when "
        "SNAP2CAPTION_API_KEYS is set: bearer = the API key like every route; "
        "cluster-local = no key when the request's Host is the Service's "
        "cluster-local name (what Knative Eventing delivers to), the key "
        "otherwise; oidc = the key or a Knative Eventing sender token (a Kubernetes "
        "service-account JWT, settings events_oidc_*); none = never a key (only for a "
        "Service that is private as a whole). See snap2caption_service/serving/auth.py.",
    )
    # events_auth=oidc: Knative Eventing's sender identity (config-features authentication-oidc:
    # enabled) sends `Authorization: Bearer <JWT>` issued by the cluster's service-account issuer
    # for the destination's audience (serving/oidc.py checks it; k8s/README.md has the cluster side).
    events_oidc_issuer: str = Field(
        "https://kubernetes.default.svc.cluster.local",
        description="events_auth=oidc: the tokens' `iss`, the cluster's service-account issuer "
        "(`kubectl get --raw /.well-known/openid-configuration`; kubeadm/kind default shown).",
    )
    events_oidc_audience: str = Field(
        "",
        description="events_auth=oidc, required: the `aud` the tokens must carry, the `audience` of "
        "the Sequence step / Trigger subscriber that delivers to /events.",
    )
    events_oidc_subjects: str = Field(
        "",
        description="events_auth=oidc, required: comma-separated `sub` values let through, "
        "system:serviceaccount:<namespace>:<name> of the sender's OIDC service account.",
    )
    events_oidc_jwks_url: str = Field(
        "",
        description="events_auth=oidc: where the issuer's signing keys are; empty = the issuer + "
        "/openid/v1/jwks (where the Kubernetes API server serves them).",
    )
    events_oidc_jwks_ca_file: str = Field(
        "",
        description="events_auth=oidc: CA bundle for the JWKS fetch; empty = the pod's service-account "
        "ca.crt when mounted, else the system's trust store.",
    )
    events_oidc_jwks_token_file: str = Field(
        "",
        description="events_auth=oidc: a token file sent as `Authorization: Bearer` with the JWKS fetch "
        "(the API server's /openid/v1/jwks needs an authenticated caller); empty = the pod's "
        "service-account token when mounted; none = send nothing (a public JWKS).",
    )
    cluster_domain: str = Field(
        "cluster.local", description="The Kubernetes cluster domain, for events_auth=cluster-local."
    )
    # events_auth=cluster-local accepts only this Service's own in-cluster name,
    # <service_name>.<namespace>.svc[.<cluster_domain>], not any *.svc host.
    service_name: str = Field(
        "",
        validation_alias=AliasChoices("SNAP2CAPTION_SERVICE_NAME", "K_SERVICE", "service_name"),
        description="This Service's Kubernetes/Knative name, for events_auth=cluster-local "
        "[SNAP2CAPTION_SERVICE_NAME, else K_SERVICE, which Knative sets].",
    )
    namespace: str = Field(
        default_factory=pod_namespace,
        validation_alias=AliasChoices("SNAP2CAPTION_NAMESPACE", "POD_NAMESPACE", "namespace"),
        description="This Service's namespace, for events_auth=cluster-local [SNAP2CAPTION_NAMESPACE, "
        "else POD_NAMESPACE (downward API), else the pod's service-account namespace file].",
    )

    # Fault injection for canary-analysis tests and drills; never set in production.
    fault_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    fault_latency_ms: int = Field(0, ge=0)

    graceful_shutdown_s: int = Field(
        30,
        ge=1,
        description="`snap2caption serve`: on SIGTERM, most seconds to finish requests in flight before "
        "the shutdown hooks run (BentoML's own default is a day).",
    )

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, v):
        return Path(v).expanduser() if v else default_data_dir()

    @model_validator(mode="after")
    def _derived_limits(self):
        """0 means 'derive from the image limits', so raising those raises these with them."""
        if not self.max_request_bytes:
            self.max_request_bytes = self.max_image_bytes * 4 // 3 + 64 * 1024
        if not self.decode_budget_pixels:
            self.decode_budget_pixels = 4 * self.max_image_pixels
        return self

    @property
    def generation(self) -> GenerationSettings:
        return GenerationSettings(
            self.max_new_tokens,
            self.repetition_penalty,
            self.top_p,
            self.seed,
            self.constrained,
            alt_text_max_chars=self.alt_text_max_chars,
        )

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def archive_location(self) -> str:
        return self.archive or str(self.data_dir / "archive")

    @property
    def feedback_file(self) -> Path:
        return self.feedback_path or self.data_dir / "feedback.jsonl"

    @property
    def tag_stats_file(self) -> Path:
        return self.tag_stats_path or self.data_dir / "tag-stats.sqlite"


class KafkaSettings(BaseSettings):
    """The broker and the topics, for every Kafka client (consumer, feedback publisher, retrain)."""

    model_config = _config()

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="host:port[,host:port] [KAFKA_BOOTSTRAP_SERVERS]",
    )
    topic_uploaded: str = Field("media.uploaded", description="Upload events in.")
    topic_captioned: str = Field("media.captioned", description="Captioned events out (key = media_id).")
    topic_feedback: str = Field("caption.feedback", description="Creators' feedback: the training topic.")
    topic_dlq: str = Field("media.uploaded.dlq", description="Poison upload events, original bytes + reason headers.")
    topic_partitions: int = Field(3, ge=1, description="Partitions for topics this process creates.")
    topic_replication_factor: int = Field(
        1, ge=1, description="Replication for topics this process creates (3 in production)."
    )

    @property
    def bootstrap(self) -> list[str]:
        return _csv(self.kafka_bootstrap_servers)


class FetchSettings(BaseSettings):
    """Images by reference (s3://, https://, inline), for the consumer and the service's /events
    and /generate-caption ``image_url``."""

    model_config = _config()

    aws_endpoint_url_s3: str = Field(
        "",
        validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "aws_endpoint_url_s3"),
        description="S3 API endpoint for fetched images (MinIO, moto); empty = AWS [AWS_ENDPOINT_URL_S3]. "
        "Passed to core/storage.py's s3_client(), which owns the region rule.",
    )
    s3_buckets: str = Field("", description="Comma-separated buckets s3:// images may come from; empty = none.")
    url_allowlist: str = Field(
        "",
        description="Comma-separated hosts, IPs or CIDRs that https:// (and http://) images may come "
        "from even though they resolve to loopback/private/link-local addresses.",
    )
    fetch_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest image fetched (S3, URL, inline).")
    fetch_timeout_s: float = Field(
        10.0,
        gt=0,
        description="One wall-clock deadline per URL fetch (DNS, connect, TLS, every redirect, the body); "
        "the connect and read timeouts of an S3 fetch.",
    )
    fetch_max_redirects: int = Field(3, ge=0)
    fetch_max_concurrency: int = Field(
        16,
        ge=1,
        description="/events and image_url: URL and S3 fetches at once, on their own threads (not the API's); "
        "one more is answered 503 with Retry-After.",
    )

    @property
    def bucket_allowlist(self) -> frozenset[str]:
        return frozenset(_csv(self.s3_buckets))

    def url_allow(self) -> tuple[frozenset[str], tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
        """(host names, networks) from url_allowlist."""
        names, nets = set(), []
        for item in _csv(self.url_allowlist):
            try:
                nets.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                names.add(item.lower().rstrip("."))
        return frozenset(names), tuple(nets)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
