"""Scoring a captioner on an eval set: caption metrics, hashtag P/R/F1, and the demo guard.

Retraining scores the candidate and the current champion with the same function on the same
records in the same run, so the gate compares like with like.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.caption_metrics import PredictionRow, evaluate, write_predictions_table
from training.config import EvalSettings
from training.datasets import CaptionRecord, load_image, read_captions

log = logging.getLogger(__name__)


def served_options(record: CaptionRecord):
    """The options a feedback record was captioned with, when it names its platform (its hashtags
    are then what the ranker chose for a creator, not what the model wrote); None for a dataset's
    record, whose hashtags are a reference list for the model's own."""
    from snap2caption_service.core.contracts import MAX_HASHTAGS, MAX_TONE_CHARS, CaptionOptions
    from snap2caption_service.core.platforms import PLATFORMS

    platform = record.extra.get("platform")
    if platform not in PLATFORMS:
        return None
    wanted = record.extra.get("num_hashtags")
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:  # a manifest is written by anyone
        wanted = len(record.hashtags) or PLATFORMS[platform].recommended_hashtags
    wanted = min(wanted, PLATFORMS[platform].hashtag_cap or MAX_HASHTAGS, MAX_HASHTAGS)
    return CaptionOptions(
        tone=record.tone[:MAX_TONE_CHARS], audience=record.audience, platform=platform, num_hashtags=wanted
    )


def predict(captioner, records: list[CaptionRecord], batch_size: int = 32) -> list[PredictionRow]:
    """Each record's greedy answer. A record from feedback is answered as serving answers it (the
    hashtag pool ranked down for its platform: core/hashtags.py as_served), so that a champion
    scored against what it served itself scores full marks."""
    from snap2caption_service.core.captioner import CaptionJob
    from snap2caption_service.core.hashtags import as_served, hashtag_pool

    rows = []
    for start in range(0, len(records), batch_size):
        part = records[start : start + batch_size]
        options = [served_options(r) for r in part]
        jobs = [
            CaptionJob(load_image(r.image), r.tone, r.audience, max(5, min(10, len(r.hashtags) or 8)), 1)
            if o is None
            else CaptionJob(load_image(r.image), o.tone, o.audience, hashtag_pool(o), 1, o.platform)
            for r, o in zip(part, options)
        ]
        for r, o, cands in zip(part, options, captioner.caption_batch(jobs)):
            best = cands[0] if o is None else as_served(cands[0], o)
            rows.append(
                PredictionRow(
                    image_id=r.image_id or r.image,
                    prediction=best.caption,
                    reference=r.caption,
                    predicted_hashtags=tuple(best.hashtags),
                    reference_hashtags=tuple(r.hashtags),
                    predicted_alt_text=best.alt_text,
                    reference_alt_text=r.alt_text,
                )
            )
    return rows


def idf_documents(settings: EvalSettings) -> list[list[str]]:
    """The background corpus for CIDEr-D's document frequencies: one document per caption."""
    return [[c] for src in settings.idf_corpus for c in read_captions(src.model_dump())]


def score(
    captioner, records: list[CaptionRecord], settings: EvalSettings, predictions_csv: Path | None = None
) -> tuple[dict[str, float], list[PredictionRow]]:
    """All eval metrics of one captioner; the predictions table is written if a path is given."""
    if not records and not settings.guard_scenes:
        raise ValueError("nothing to evaluate on: no eval records and no guard scenes")
    metrics: dict[str, float] = {}
    rows: list[PredictionRow] = []
    if records:
        rows = predict(captioner, records, settings.batch_size)
        documents = idf_documents(settings)
        metrics.update(evaluate(rows, documents))
        metrics["eval_records"] = float(len(rows))
        if predictions_csv is not None:
            write_predictions_table(rows, predictions_csv, documents)
    if settings.guard_scenes:
        from training.evaluate_demo import color_shape_accuracy

        metrics.update(color_shape_accuracy(captioner, settings.guard_scenes, settings.guard_seed, settings.batch_size))
    return metrics, rows
