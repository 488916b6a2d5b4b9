"""Request handling shared by every entry point (HTTP JSON, HTTP upload, Kafka, CLI).

Before the model: bytes -> checked, upright RGB image, shrunk and hashed.
After the model: candidates -> the one ``CaptionResult`` contract.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydantic import BaseModel

from snap2caption_service.core import images
from snap2caption_service.core.contracts import Candidate, CaptionOptions, CaptionResult
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


def prepare_image(data: bytes, settings: Settings) -> PreparedImage:
    """Raises images.ImageError (a 4xx / dead-letter reason) for anything unusable."""
    img = images.load_image(data, settings.max_image_bytes, settings.max_image_pixels)
    return PreparedImage(images.downscale(img, settings.model_image_side), images.image_sha256(data))


def model_item(prepared: PreparedImage, options: CaptionOptions) -> ModelItem:
    return ModelItem(
        image_png_b64=images.encode_png_base64(prepared.image),
        tone=options.tone,
        audience=options.audience,
        num_hashtags=options.num_hashtags,
        num_candidates=options.num_candidates,
    )


def new_request_id() -> str:
    return uuid.uuid4().hex


def build_result(output: ModelOutput, request_id: str, latency_ms: float, image_sha256: str) -> CaptionResult:
    best = output.candidates[0]
    return CaptionResult(
        caption=best.caption,
        hashtags=best.hashtags,
        alt_text=best.alt_text,
        candidates=output.candidates,
        model_version=output.model_version,
        request_id=request_id,
        latency_ms=round(latency_ms, 1),
        image_sha256=image_sha256,
    )
