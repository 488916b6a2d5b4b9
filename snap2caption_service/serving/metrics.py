"""Our Prometheus metrics, beside BentoML's own on /metrics.

Created on first use, not at import: BentoML sets PROMETHEUS_MULTIPROC_DIR in each worker
after importing the service module, and metrics made before that would never be exported.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128)
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
    return m
