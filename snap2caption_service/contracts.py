"""The one definition of every request, result and event Snap2Caption exchanges.

HTTP (BentoML), Kafka (``stream/``) and the CLI all import these models; nothing else
defines a caption request or result.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Audience = Literal["personal", "promotional", "academic"]
AUDIENCES: tuple[str, ...] = ("personal", "promotional", "academic")

MAX_TONE_CHARS = 32
MIN_HASHTAGS, MAX_HASHTAGS, DEFAULT_HASHTAGS = 5, 10, 8
MIN_CANDIDATES, MAX_CANDIDATES = 1, 5
# Instagram's own caption limit: an edit longer than this could never be posted.
MAX_CAPTION_CHARS = 2200


class CaptionOptions(BaseModel):
    """What a creator chooses besides the photo."""

    model_config = ConfigDict(extra="forbid")

    tone: str = Field(
        "casual",
        max_length=MAX_TONE_CHARS,
        description="Free text such as funny, quirky, serious (at most 32 characters).",
    )
    audience: Audience = Field("personal", description="personal | promotional | academic")
    num_hashtags: int = Field(DEFAULT_HASHTAGS, ge=MIN_HASHTAGS, le=MAX_HASHTAGS)
    num_candidates: int = Field(
        1, ge=MIN_CANDIDATES, le=MAX_CANDIDATES,
        description="1 = greedy only; more adds sampled candidates, best first.",
    )


class CaptionRequest(CaptionOptions):
    """POST /generate-caption body: the options plus the photo as base64 or a data URL."""

    image: str = Field(..., description="Base64 image bytes or a data: URL (JPEG, PNG, WebP, GIF, BMP, TIFF).")


class Candidate(BaseModel):
    caption: str
    hashtags: list[str]
    alt_text: str
    score: float = Field(..., description="Mean token log-probability under the model (higher is better).")


class CaptionResult(BaseModel):
    """What every caller gets back: HTTP response, Kafka captioned event data, CLI --json."""

    caption: str
    hashtags: list[str]
    alt_text: str
    candidates: list[Candidate]
    model_version: str
    request_id: str
    latency_ms: float
    image_sha256: str = Field("", description="Content hash of the decoded image; feedback finds the image by it.")


class FeedbackRequest(BaseModel):
    """POST /feedback body."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(..., min_length=1, max_length=128)
    rating: Literal["up", "down"]
    edited_caption: str | None = Field(None, max_length=MAX_CAPTION_CHARS)
    edited_hashtags: list[str] | None = Field(None, max_length=30)
    reason: str | None = Field(None, max_length=500)
    creator_id: str | None = Field(None, max_length=128)


class FeedbackRecord(FeedbackRequest):
    """A feedback event as stored and as later produced to the training topic."""

    feedback_id: str
    received_at: str


class FeedbackAccepted(BaseModel):
    feedback_id: str
    status: Literal["recorded"] = "recorded"


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable machine code and a sentence a person can act on."""

    error: str
    detail: str
