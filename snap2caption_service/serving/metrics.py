"""Our Prometheus metrics, beside BentoML's own on /metrics.

Created on first use, not at import: BentoML sets PROMETHEUS_MULTIPROC_DIR in each worker
after importing the service module, and metrics made before that would never be exported.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128)
ADAPTER_ROWS_BUCKETS = (0, *BATCH_BUCKETS)  # 0: a batch of champion rows only
# A creator adapter is small: from the local cache in milliseconds, from the registry in seconds.
ADAPTER_LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# From the demo model's second to a 7B LLaVA downloaded and loaded onto a GPU.
LOAD_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
CAPTION_OUTCOMES = ("ok", "bad_input", "error")
CAPTION_SOURCES = ("http", "upload", "events")


@lru_cache(maxsize=1)
def get_metrics() -> SimpleNamespace:
    from prometheus_client import Counter, Gauge, Histogram

    m = SimpleNamespace(
        captions=Counter(
            "snap2caption_captions_total", "Caption requests by outcome (ok, bad_input, error).", ["outcome", "source"]
        ),
        caption_latency=Histogram(
            "snap2caption_caption_latency_seconds",
            "Request to result, including queueing in the batcher.",
            buckets=LATENCY_BUCKETS,
        ),
        batch_size=Histogram("snap2caption_model_batch_size", "Items per model call.", buckets=BATCH_BUCKETS),
        model_call=Histogram(
            "snap2caption_model_call_seconds", "Wall time of one batched model call.", buckets=LATENCY_BUCKETS
        ),
        generated_tokens=Counter("snap2caption_generated_tokens_total", "Tokens generated, all candidates."),
        model_info=Gauge(
            "snap2caption_model_info",
            "The model version served (value is always 1).",
            ["version"],
            multiprocess_mode="max",
        ),
        adapters_resident=Gauge(
            "snap2caption_creator_adapters_resident",
            "Creator adapters loaded into the model (core/creator_adapters.py).",
            multiprocess_mode="max",
        ),
        adapter_loads=Counter(
            "snap2caption_creator_adapter_loads_total",
            "Creator adapter loads into the model, by outcome (ok; failed: its creator got the champion).",
            ["outcome"],
        ),
        adapter_load=Histogram(
            "snap2caption_creator_adapter_load_seconds",
            "One creator adapter load: registry lookup and download when new, read, added to the model.",
            buckets=ADAPTER_LOAD_BUCKETS,
        ),
        adapter_rows=Histogram(
            "snap2caption_model_batch_adapter_rows",
            "Rows per model call answered by a creator adapter (the rest by the champion).",
            buckets=ADAPTER_ROWS_BUCKETS,
        ),
        feedback=Counter("snap2caption_feedback_total", "Feedback recorded, by rating.", ["rating"]),
        archive_errors=Counter(
            "snap2caption_archive_errors_total",
            "Served captions whose image/result could not be archived for feedback.",
        ),
        injected_faults=Counter(
            "snap2caption_injected_faults_total",
            "Errors injected by SNAP2CAPTION_FAULT_ERROR_RATE (tests and drills only).",
        ),
        model_load=Histogram(
            "snap2caption_model_load_seconds",
            "Model load at worker start-up; one observation per cold start.",
            buckets=LOAD_BUCKETS,
        ),
    )
    # Export every outcome/source at 0 from the start: increase() cannot count the first
    # increments of a series that appears mid-window, so canary analysis and the error-rate
    # alerts would miss a new revision's first errors.
    for outcome in CAPTION_OUTCOMES:
        for source in CAPTION_SOURCES:
            m.captions.labels(outcome, source)
    for outcome in ("ok", "failed"):
        m.adapter_loads.labels(outcome)
    return m


def record_adapter_load(seconds: float, ok: bool) -> None:
    m = get_metrics()
    m.adapter_loads.labels("ok" if ok else "failed").inc()
    m.adapter_load.observe(seconds)


def record_resident_adapters(count: int) -> None:
    get_metrics().adapters_resident.set(count)
