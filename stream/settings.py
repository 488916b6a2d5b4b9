"""Configuration of the Kafka consumer: one Settings class, env prefix SNAP2CAPTION_.

The broker uses the name every Kafka tool already knows (KAFKA_BOOTSTRAP_SERVERS);
everything else is SNAP2CAPTION_*. The same env file as the service (SNAP2CAPTION_ENV_FILE,
default ./snap2caption.env) is read.
"""

from __future__ import annotations

import socket

from pydantic import Field

from snap2caption_service.core.settings import FetchSettings, KafkaSettings


class StreamSettings(KafkaSettings, FetchSettings):
    """The consumer's settings: the broker and topics (KafkaSettings), how images are fetched
    (FetchSettings, shared with the service's /events), and the consume loop's own below."""

    service_url: str = Field("http://127.0.0.1:3000", description="The captioning service's base URL.")
    service_api_key: str = Field("", description="Bearer key for the service, when it has auth on.")
    service_timeout_s: float = Field(120.0, gt=0, description="One /generate-caption call, queueing included.")

    consumer_group: str = Field("snap2caption-captioner", description="Kafka consumer group id.")
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="Stable per consumer instance (pod name in a StatefulSet): the static group "
        "membership id and the suffix of the transactional id, so a restarted instance "
        "fences its old self and resumes its partitions without a rebalance.",
    )
    session_timeout_ms: int = Field(30000, ge=6000, description="Group session timeout.")
    max_in_flight: int = Field(
        64,
        ge=1,
        description="Upload events being fetched/captioned at once (the "
        "requests the service sees, like that many HTTP clients).",
    )
    max_pending: int = Field(
        256,
        ge=1,
        description="Most polled events not yet committed (in flight, or "
        "finished and waiting for their transaction or for an "
        "earlier offset); partitions pause at this many. At "
        "least max_in_flight.",
    )
    commit_interval_ms: int = Field(200, ge=1, description="Most time a finished event waits for its transaction.")
    commit_max_records: int = Field(500, ge=1, description="Most events per transaction.")
    retries: int = Field(5, ge=0, description="Retries of one transient failure (503, timeout, S3 5xx) in a row.")
    retry_backoff_ms: int = Field(200, ge=1, description="First backoff; doubles per retry, with jitter.")
    retry_backoff_max_ms: int = Field(10000, ge=1)
    retry_later_s: float = Field(
        30.0,
        gt=0,
        description="After retries run out the partition pauses this "
        "long, then the event is tried again (never DLQ'd).",
    )
    transaction_call_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Most time one transactional call "
        "(send offsets, commit, abort, init) may take before the "
        "producer is replaced.",
    )
    drain_timeout_s: float = Field(120.0, gt=0, description="On SIGTERM: most time to finish in-flight events.")
    stall_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Most time upload events may wait on this consumer's partitions while it "
        "polls none and has none in flight (committed offsets that stay unreadable, "
        "a fetch that never answers). Then it exits with status 70 so that its "
        "supervisor restarts it; the restart aborts any transaction it left open.",
    )

    metrics_port: int = Field(9400, ge=0, le=65535, description="Prometheus /metrics; 0 = off.")
    metrics_host: str = Field("0.0.0.0")

    @property
    def transactional_id(self) -> str:
        return f"{self.consumer_group}-{self.instance_id}"


class FeedbackPublisherSettings(KafkaSettings):
    """The service's feedback publisher: the training topic, and a spool for while the broker is away."""

    feedback_spool: str = Field(
        "", description="Feedback spool file while the broker is away; default <data_dir>/feedback-spool.jsonl"
    )

    @property
    def kafka_configured(self) -> bool:
        """Whether KAFKA_BOOTSTRAP_SERVERS was given at all (not only the default)."""
        return "kafka_bootstrap_servers" in self.model_fields_set and bool(self.bootstrap)
