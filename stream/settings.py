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
        "long, then the event is tried again (never DLQ'd, unless its image host is unavailable: below).",
    )
    url_retries: int = Field(
        2,
        ge=0,
        description="Rounds (retries with backoff, then a retry_later_s pause) an event whose image URL's "
        "host does not answer (timeout, DNS failure, refused, 5xx) is tried again before it is "
        "dead-lettered as url_unavailable. Our own service, S3 and the broker are retried without end.",
    )
    url_retry_max_age_s: float = Field(
        120.0,
        gt=0,
        description="... or once the event is this old (since it was polled; checked when a round ends), "
        "whichever comes first. Keep it well under stall_timeout_s.",
    )
    produce_max_bytes: int = Field(
        1_000_000,
        ge=64 * 1024,
        description="Largest record the consumer produces, key and headers included: within the "
        "output topics' max.message.bytes (broker default 1 MiB); the producer's max_request_size is "
        "set above it. A dead letter that would be larger (a huge poison record) goes out as a stub "
        "(source topic/partition/offset, sha256, sizes, reason); a larger captioned event is "
        "dead-lettered (result_too_large).",
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
        description="Most time an upload event may stay uncommitted (the oldest one; not while it "
        "waits out an outage of the service, S3 or the broker), or events may wait on this "
        "consumer's partitions while it polls none (committed offsets that stay unreadable). "
        "Then it exits with status 70 so that its supervisor restarts it; the restart aborts "
        "any transaction it left open.",
    )

    metrics_port: int = Field(9400, ge=0, le=65535, description="Prometheus /metrics; 0 = off.")
    metrics_host: str = Field("0.0.0.0")

    @property
    def transactional_id(self) -> str:
        return f"{self.consumer_group}-{self.instance_id}"


class FeedbackPublisherSettings(KafkaSettings):
    """The service's feedback publisher: ships the feedback log (SNAP2CAPTION_FEEDBACK_PATH) to the
    training topic from a cursor of its own (stream/feedback_producer.py)."""

    feedback_spool: str = Field(
        "",
        description="Only read once, on upgrade: the separate spool file earlier versions kept "
        "(default <data_dir>/feedback-spool.jsonl). Its unsent records are resumed from the "
        "feedback log, then it is renamed *.migrated.",
    )
    feedback_drain_timeout_s: float = Field(
        10.0, ge=0, description="On shutdown (SIGTERM): most time to ship what is still waiting."
    )
    feedback_lock_timeout_s: float = Field(
        30.0,
        ge=0,
        description="How long a second process waits for the feedback log's shipping lock "
        "before it fails (one publisher per log).",
    )
    feedback_batch_records: int = Field(500, ge=1, description="Most records sent per round trip.")

    @property
    def kafka_configured(self) -> bool:
        """Whether KAFKA_BOOTSTRAP_SERVERS was given at all (not only the default)."""
        return "kafka_bootstrap_servers" in self.model_fields_set and bool(self.bootstrap)
