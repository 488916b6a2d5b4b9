"""The one definition of every request, result and event Snap2Caption exchanges.

HTTP (BentoML), Kafka (``stream/``) and the CLI all import these models; nothing else
defines a caption request or result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
        1,
        ge=MIN_CANDIDATES,
        le=MAX_CANDIDATES,
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


class ServedCaption(BaseModel):
    """What a creator was shown for one request, kept so that feedback can become training data.

    Written to the caption archive at caption time; copied into the feedback record at
    feedback time, so each event on the training topic is self-contained.
    """

    request_id: str
    image_sha256: str = Field(..., description="Content hash of the upload; the archive keys the image by it.")
    tone: str
    audience: str
    num_hashtags: int = DEFAULT_HASHTAGS
    caption: str
    hashtags: list[str]
    alt_text: str
    model_version: str
    served_at: str = ""


class FeedbackRecord(FeedbackRequest):
    """A feedback event as stored and as later produced to the training topic."""

    feedback_id: str
    received_at: str
    served: ServedCaption | None = Field(
        None, description="The captioned request this rates (image hash, options, shown result)."
    )


class FeedbackAccepted(BaseModel):
    feedback_id: str
    status: Literal["recorded"] = "recorded"


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable machine code and a sentence a person can act on."""

    error: str
    detail: str
    stage: str | None = Field(None, description="Event handling only (/events): where it failed.")


# --- Events (Kafka and Knative push mode) ------------------------------------------------
# The event *data* is modelled here, beside the HTTP contracts it reuses; the CloudEvents
# envelope (ce_* headers) lives in snap2caption_service/core/cloudevents.py.

EVENT_TYPE_UPLOADED = "com.snap2caption.media.uploaded"
EVENT_TYPE_CAPTIONED = "com.snap2caption.media.captioned"
EVENT_TYPE_FEEDBACK = "com.snap2caption.caption.feedback"

MAX_ID_CHARS = 256
# Bucket naming rules (3-63 chars of lowercase letters, digits, dots, hyphens) and a key.
_S3_URI = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+$"


class ImageRef(BaseModel):
    """Where the uploaded image is: exactly one of an S3 object, a web URL or the bytes inline.

    ``url`` must be https; plain http is accepted here but refused by the fetcher unless its
    host is on the consumer's allowlist (local tests). Inline images are for small pictures:
    they travel inside the Kafka record, so the topic's max.message.bytes caps them.
    """

    model_config = ConfigDict(extra="forbid")

    s3_uri: str | None = Field(None, pattern=_S3_URI, max_length=1100, description="s3://bucket/key")
    url: str | None = Field(
        None,
        pattern=r"^[hH][tT][tT][pP][sS]?://[^/\s]+(/\S*)?$",
        max_length=4096,
        description="https:// URL (http:// only for allowlisted hosts)",
    )
    inline_base64: str | None = Field(None, min_length=1, description="Base64 image bytes or a data: URL.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        given = [name for name in ("s3_uri", "url", "inline_base64") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"image needs exactly one of s3_uri, url, inline_base64; got {given or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return "s3" if self.s3_uri is not None else "url" if self.url is not None else "inline"


class UploadEvent(CaptionOptions):
    """Data of a ``media.uploaded`` event: the photo's location plus the caption options.

    The options (tone, audience, num_hashtags, num_candidates) are CaptionOptions' own
    fields, with the same limits and defaults as over HTTP. Unknown top-level fields are
    ignored so producers can add fields without turning every event into poison.
    """

    model_config = ConfigDict(extra="ignore")

    media_id: str = Field(..., min_length=1, max_length=MAX_ID_CHARS, description="Record key and idempotency key.")
    creator_id: str = Field(..., min_length=1, max_length=128)
    image: ImageRef
    uploaded_at: datetime | None = None

    def options(self) -> CaptionOptions:
        return CaptionOptions(**self.model_dump(include=set(CaptionOptions.model_fields)))


class CaptionedEvent(CaptionResult):
    """Data of a ``media.captioned`` event: the HTTP CaptionResult plus where it came from."""

    media_id: str
    creator_id: str
    source_event_id: str = Field(..., description="ce_id of the media.uploaded event this answers.")
    timings: dict[str, float] = Field(
        default_factory=dict, description="Milliseconds per stage: fetch_ms, caption_ms, total_ms."
    )

    @classmethod
    def from_result(
        cls, result: CaptionResult, upload: UploadEvent, source_event_id: str, timings: dict[str, float]
    ) -> CaptionedEvent:
        return cls(
            **result.model_dump(),
            media_id=upload.media_id,
            creator_id=upload.creator_id,
            source_event_id=source_event_id,
            timings={k: round(v, 1) for k, v in timings.items()},
        )
