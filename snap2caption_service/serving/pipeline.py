"""Request handling shared by every entry point (HTTP JSON, HTTP upload, Kafka, CLI).

Before the model: bytes -> checked, upright RGB image, shrunk and hashed.
After the model: candidates -> the one ``CaptionResult`` contract.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel

from snap2caption_service.core import images
from snap2caption_service.core.contracts import Candidate, CaptionOptions, CaptionResult
from snap2caption_service.core.platforms import PLATFORMS, fit_caption
from snap2caption_service.core.settings import Settings


class ModelItem(BaseModel):
    """One item of the model worker's batch: a normalized image plus the creator's options.

    The image crosses processes as a small PNG (already shrunk), never as the raw upload.
    """

    image_png_b64: str
    tone: str
    audience: str
    num_hashtags: int
    num_candidates: int


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


def model_item(prepared: PreparedImage, options: CaptionOptions) -> ModelItem:
    return ModelItem(
        image_png_b64=images.encode_png_base64(prepared.image),
        tone=options.tone,
        audience=options.audience,
        num_hashtags=options.num_hashtags,
        num_candidates=options.num_candidates,
    )


def new_request_id() -> str:
    """32 lowercase hex digits: the only shape /feedback and the caption archive accept
    (contracts.REQUEST_ID_PATTERN), so a request id can never name a path."""
    return uuid.uuid4().hex


def build_result(
    output: ModelOutput, request_id: str, latency_ms: float, image_sha256: str, platform: str
) -> CaptionResult:
    """The answer for ``platform``: every candidate's caption fitted to the platform's text limit
    (with its hashtags where they count toward it)."""
    profile = PLATFORMS[platform]
    candidates = [
        c.model_copy(update={"caption": fit_caption(c.caption, c.hashtags, profile)}) for c in output.candidates
    ]
    best = candidates[0]
    return CaptionResult(
        caption=best.caption,
        hashtags=best.hashtags,
        alt_text=best.alt_text,
        candidates=candidates,
        model_version=output.model_version,
        request_id=request_id,
        latency_ms=round(latency_ms, 1),
        image_sha256=image_sha256,
        platform=platform,
    )
