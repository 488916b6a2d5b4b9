"""Configuration of the Kafka side: one Settings class, env prefix SNAP2CAPTION_.

The broker and the S3 endpoint use the names every Kafka and AWS tool already knows
(KAFKA_BOOTSTRAP_SERVERS, AWS_ENDPOINT_URL_S3); everything else is SNAP2CAPTION_*. The same
env file as the service (SNAP2CAPTION_ENV_FILE, default ./snap2caption.env) is read.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class StreamSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SNAP2CAPTION_",
        env_file=os.environ.get("SNAP2CAPTION_ENV_FILE", "snap2caption.env"),
        extra="ignore",
        populate_by_name=True,
    )

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="host:port[,host:port] [KAFKA_BOOTSTRAP_SERVERS]")
    topic_uploaded: str = Field("media.uploaded", description="Upload events in.")
    topic_captioned: str = Field("media.captioned", description="Captioned events out (key = media_id).")
    topic_feedback: str = Field("caption.feedback", description="Creators' feedback: the training topic.")
    topic_dlq: str = Field("media.uploaded.dlq", description="Poison upload events, original bytes + reason headers.")
    topic_partitions: int = Field(3, ge=1, description="Partitions for topics this process creates.")
    topic_replication_factor: int = Field(1, ge=1,
                                          description="Replication for topics this process creates (3 in production).")

    service_url: str = Field("http://127.0.0.1:3000", description="The captioning service's base URL.")
    service_api_key: str = Field("", description="Bearer key for the service, when it has auth on.")
    service_timeout_s: float = Field(120.0, gt=0, description="One /generate-caption call, queueing included.")

    consumer_group: str = Field("snap2caption-captioner", description="Kafka consumer group id.")
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="Stable per consumer instance (pod name in a StatefulSet): the static group "
                    "membership id and the suffix of the transactional id, so a restarted instance "
                    "fences its old self and resumes its partitions without a rebalance.")
    session_timeout_ms: int = Field(30000, ge=6000, description="Group session timeout.")
    max_in_flight: int = Field(64, ge=1, description="Upload events being fetched/captioned at once (the "
                                                     "requests the service sees, like that many HTTP clients).")
    max_pending: int = Field(256, ge=1, description="Most polled events not yet committed (in flight, or "
                                                    "finished and waiting for their transaction or for an "
                                                    "earlier offset); partitions pause at this many. At "
                                                    "least max_in_flight.")
    commit_interval_ms: int = Field(200, ge=1, description="Most time a finished event waits for its transaction.")
    commit_max_records: int = Field(500, ge=1, description="Most events per transaction.")
    retries: int = Field(5, ge=0, description="Retries of one transient failure (503, timeout, S3 5xx) in a row.")
    retry_backoff_ms: int = Field(200, ge=1, description="First backoff; doubles per retry, with jitter.")
    retry_backoff_max_ms: int = Field(10000, ge=1)
    retry_later_s: float = Field(30.0, gt=0, description="After retries run out the partition pauses this "
                                                         "long, then the event is tried again (never DLQ'd).")
    transaction_call_timeout_s: float = Field(30.0, gt=0, description="Most time one transactional call "
                                              "(send offsets, commit, abort, init) may take before the "
                                              "producer is replaced.")
    drain_timeout_s: float = Field(120.0, gt=0, description="On SIGTERM: most time to finish in-flight events.")
    stall_timeout_s: float = Field(
        300.0, gt=0, description="Most time upload events may wait on this consumer's partitions while it "
                                 "polls none and has none in flight (committed offsets that stay unreadable, "
                                 "a fetch that never answers). Then it exits with status 70 so that its "
                                 "supervisor restarts it; the restart aborts any transaction it left open.")

    aws_endpoint_url_s3: str = Field(
        "", validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "aws_endpoint_url_s3"),
        description="S3 API endpoint (MinIO, moto); empty = AWS [AWS_ENDPOINT_URL_S3]")
    s3_buckets: str = Field("", description="Comma-separated buckets s3:// images may come from; empty = none.")
    url_allowlist: str = Field(
        "", description="Comma-separated hosts, IPs or CIDRs that https:// (and http://) images may come "
                        "from even though they resolve to loopback/private/link-local addresses.")
    fetch_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest image fetched (S3, URL, inline).")
    fetch_timeout_s: float = Field(10.0, gt=0, description="Whole download of one URL or S3 object.")
    fetch_max_redirects: int = Field(3, ge=0)

    events_auth: Literal["bearer", "cluster-local", "none"] = Field(
        "bearer", description="How POST /events (Knative push mode) is authenticated when "
                              "SNAP2CAPTION_API_KEYS is set: bearer = the API key like every route; "
                              "cluster-local = no key when the request's Host is the Service's "
                              "cluster-local name (what Knative Eventing delivers to), the key "
                              "otherwise; none = never a key (only for a Service that is private "
                              "as a whole). See snap2caption_service/auth.py.")
    cluster_domain: str = Field("cluster.local", description="The Kubernetes cluster domain, for "
                                                             "events_auth=cluster-local.")

    metrics_port: int = Field(9400, ge=0, le=65535, description="Prometheus /metrics; 0 = off.")
    metrics_host: str = Field("0.0.0.0")

    feedback_spool: str = Field("", description="Feedback spool file while the broker is away; "
                                                "default <data_dir>/feedback-spool.jsonl")

    @property
    def bootstrap(self) -> list[str]:
        return _csv(self.kafka_bootstrap_servers)

    @property
    def bucket_allowlist(self) -> frozenset[str]:
        return frozenset(_csv(self.s3_buckets))

    @property
    def transactional_id(self) -> str:
        return f"{self.consumer_group}-{self.instance_id}"

    def url_allow(self) -> tuple[frozenset[str], tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
        """(host names, networks) from url_allowlist."""
        names, nets = set(), []
        for item in _csv(self.url_allowlist):
            try:
                nets.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                names.add(item.lower().rstrip("."))
        return frozenset(names), tuple(nets)
