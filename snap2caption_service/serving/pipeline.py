"""Request handling shared by every entry point (HTTP JSON, HTTP upload, Kafka, CLI).

Before the model: bytes -> checked, upright RGB image, shrunk and hashed.
After the model: candidates -> the one ``CaptionResult`` contract, each candidate's hashtags
ranked down to the creator's count (core/hashtags.py rank_hashtags) from a pool the model was
asked for (core/hashtags.py ``hashtag_pool``), with what creators keep and remove (core/tag_stats.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel

from snap2caption_service.core import images
from snap2caption_service.core.contracts import Candidate, CaptionOptions, CaptionResult
from snap2caption_service.core.hashtags import as_served, hashtag_pool
from snap2caption_service.core.platforms import DEFAULT_PLATFORM
from snap2caption_service.core.settings import Settings
from snap2caption_service.core.tag_stats import TagStatsReader


class ModelItem(BaseModel):
    """One item of the model worker's batch: a normalized image plus the creator's options.

    The image crosses processes as a small PNG (already shrunk), never as the raw upload.
    """

    image_png_b64: str
    tone: str
    audience: str
    num_hashtags: int  # the pool (hashtag_pool), not the creator's count
    num_candidates: int
    platform: str = DEFAULT_PLATFORM  # named in the prompt: what a good answer is depends on it
    # The creator adapter that answers (its name in the model worker, which acquired it for this
    # item: core/creator_adapters.py); None: the champion.
    adapter: str | None = None


class ModelOutput(BaseModel):
    candidates: list[Candidate]
    model_version: str


@dataclass(frozen=True)
class PreparedImage:
    image: object  # PIL.Image RGB, at most model_image_side on its long side
    sha256: str


@cache
def decode_budget(capacity: int) -> images.PixelBudget:
    """The process-wide decode budget (one per capacity; the service has one setting)."""
    return images.PixelBudget(capacity)


def prepare_image(data: bytes, settings: Settings) -> PreparedImage:
    """Raises images.ImageError (a 4xx / dead-letter reason) for anything unusable, and
    images.DecodeBusy (503) when the decode budget stays spent for ``decode_wait_s``.

    The budget is held from decode until the full-size bitmap is shrunk and dropped, so
    concurrent large images wait for each other instead of multiplying memory.
    """
    pixels = images.header_pixels(data) if len(data) <= settings.max_image_bytes else 0
    if pixels > settings.max_image_pixels:
        pixels = 0  # refused from its header by load_image, never decoded
    with decode_budget(settings.decode_budget_pixels).hold(pixels, settings.decode_wait_s):
        img = images.load_image(data, settings.max_image_bytes, settings.max_image_pixels)
        small = images.downscale(img, settings.model_image_side)
        del img  # the full-size bitmap goes before the budget does
    return PreparedImage(small, images.image_sha256(data))


def model_item(prepared: PreparedImage, options: CaptionOptions, adapter: str | None = None) -> ModelItem:
    return ModelItem(
        image_png_b64=images.encode_png_base64(prepared.image),
        tone=options.tone,
        audience=options.audience,
        num_hashtags=hashtag_pool(options),
        num_candidates=options.num_candidates,
        platform=options.platform,
        adapter=adapter,
    )


LOW_CONFIDENCE_NOTICE = "The model is not sure what this picture shows: check the caption before you post it."


def new_request_id() -> str:
    """32 lowercase hex digits: the only shape /feedback and the caption archive accept
    (contracts.REQUEST_ID_PATTERN), so a request id can never name a path."""
    return uuid.uuid4().hex


def build_result(
    output: ModelOutput,
    request_id: str,
    latency_ms: float,
    image_sha256: str,
    options: CaptionOptions,
    tag_stats: TagStatsReader | None = None,
    min_confidence: float = 0.0,
) -> CaptionResult:
    """The answer for ``options.platform``: every candidate's hashtags ranked down to the creator's
    count, and its caption fitted to the platform's text limit (with those hashtags where they
    count toward it)."""
    candidates = [as_served(c, options, tag_stats) for c in output.candidates]
    best = candidates[0]
    unsure = best.confidence is not None and best.confidence < min_confidence
    notice = " ".join(([LOW_CONFIDENCE_NOTICE] if unsure else []) + best.corrections)
    return CaptionResult(
        confidence=best.confidence,
        low_confidence=unsure or bool(best.corrections),
        notice=notice or None,
        caption=best.caption,
        hashtags=best.hashtags,
        alt_text=best.alt_text,
        candidates=candidates,
        model_version=output.model_version,
        request_id=request_id,
        latency_ms=round(latency_ms, 1),
        image_sha256=image_sha256,
        platform=options.platform,
    )
