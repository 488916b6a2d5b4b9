"""The one definition of every request, result and event Snap2Caption exchanges.

HTTP (BentoML), Kafka (``stream/``) and the CLI all import these models; nothing else
defines a caption request or result.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from snap2caption_service.core.platforms import DEFAULT_PLATFORM, PLATFORM_NAMES, PLATFORMS

Audience = Literal["personal", "promotional", "academic"]
AUDIENCES: tuple[str, ...] = ("personal", "promotional", "academic")

MAX_TONE_CHARS = 32
# The API's own bounds; a platform's profile (core/platforms.json) may cap lower, and its
# recommended count is the default.
MIN_HASHTAGS, MAX_HASHTAGS = 1, 10
Platform = Literal[PLATFORM_NAMES]
MIN_CANDIDATES, MAX_CANDIDATES = 1, 5
# Instagram's own caption limit: an edit longer than this could never be posted.
MAX_CAPTION_CHARS = 2200
# Every free-text field is bounded, so that a record built from them is bounded too (below).
MAX_HASHTAG_CHARS = 100  # one hashtag
MAX_HASHTAGS_LIST = 30  # Instagram's own limit per post
MAX_REASON_CHARS = 500
MAX_ALT_TEXT_CHARS = 2200
MAX_CREATOR_ID_CHARS = 128
MAX_MODEL_VERSION_CHARS = 256
# A whole feedback record as one JSON line (the feedback log, the training topic). Every field
# at its limit, each character escaped to 6 bytes, stays far below this (tests/test_contracts.py),
# and this stays far below Kafka's default 1 MB message limit.
MAX_FEEDBACK_RECORD_BYTES = 256 * 1024

# Ids that become file names and object keys (the caption archive, snapshots) have exactly the
# shape the service issues, so no id can name a path outside its folder.
REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"  # serving/pipeline.py new_request_id: uuid4().hex
SHA256_PATTERN = r"^[0-9a-f]{64}$"  # images.image_sha256: the upload's hex digest


def is_request_id(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(REQUEST_ID_PATTERN, value) is not None


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(SHA256_PATTERN, value) is not None


Hashtag = Annotated[str, Field(max_length=MAX_HASHTAG_CHARS)]


class CaptionOptions(BaseModel):
    """What a creator chooses besides the photo."""

    model_config = ConfigDict(extra="forbid")

    tone: str = Field(
        "casual",
        max_length=MAX_TONE_CHARS,
        description="Free text such as funny, quirky, serious (at most 32 characters).",
    )
    audience: Audience = Field("personal", description="personal | promotional | academic")
    platform: Platform = Field(
        DEFAULT_PLATFORM,
        description="Where the post goes; its rules (hashtag cap, text limit) shape the answer. "
        + ", ".join(f"{p.name} (hashtags: {p.hashtag_cap or MAX_HASHTAGS} at most)" for p in PLATFORMS.values()),
    )
    num_hashtags: int | None = Field(
        None,
        ge=MIN_HASHTAGS,
        le=MAX_HASHTAGS,
        validate_default=True,
        description="Hashtags wanted; default: the platform's recommended count. More than the platform accepts "
        "is refused (400), never silently cut.",
    )
    num_candidates: int = Field(
        1,
        ge=MIN_CANDIDATES,
        le=MAX_CANDIDATES,
        description="1 = greedy only; more adds sampled candidates, best first.",
    )
    creator_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CREATOR_ID_CHARS,
        description="Who the caption is for. When given, only feedback naming the same creator_id is "
        "accepted for this caption.",
    )
    include_hashtags: list[Hashtag] = Field(
        default_factory=list,
        max_length=MAX_HASHTAGS,
        description="Hashtags the creator wants in the answer, first; they count toward num_hashtags and are "
        "the only way a generic tag (#reels, #explore, ...) appears.",
    )

    @field_validator("include_hashtags")
    @classmethod
    def _usable_and_within_the_count(cls, value: list[str], info: ValidationInfo) -> list[str]:
        # Imported here: core/hashtags.py imports this module for its limits.
        from snap2caption_service.core.hashtags import normalize_all, normalize_hashtag

        if any(normalize_hashtag(t) is None for t in value):
            raise ValueError("each hashtag needs at least one letter (a-z)")
        tags = normalize_all(value)
        wanted = info.data.get("num_hashtags")
        if wanted is not None and len(tags) > wanted:
            raise ValueError(f"{len(tags)} hashtags to include, but num_hashtags is {wanted}")
        return tags

    @field_validator("num_hashtags")
    @classmethod
    def _within_the_platforms_cap(cls, value: int | None, info: ValidationInfo) -> int:
        profile = PLATFORMS.get(info.data.get("platform", DEFAULT_PLATFORM))
        if profile is None:  # the platform itself failed validation: that is the error to report
            return value or 1
        if value is None:
            return profile.recommended_hashtags
        if profile.hashtag_cap is not None and value > profile.hashtag_cap:
            raise ValueError(f"{profile.label} accepts at most {profile.hashtag_cap} hashtags on a post")
        return value


# An image by address, over HTTP (CaptionRequest.image_url) and in events (ImageRef.url): the
# same rule, and the same fetcher behind both (core/fetch.py).
IMAGE_URL_PATTERN = r"^[hH][tT][tT][pP][sS]?://[^/\s]+(/\S*)?$"
MAX_IMAGE_URL_CHARS = 4096


class CaptionRequest(CaptionOptions):
    """POST /generate-caption body: the options plus the photo, either inline (``image``: base64
    or a data URL) or by address (``image_url``, fetched by the service); exactly one of them."""

    # image_url first: image's validator below sees it (pydantic validates in field order).
    image_url: str | None = Field(
        None,
        pattern=IMAGE_URL_PATTERN,
        max_length=MAX_IMAGE_URL_CHARS,
        description="An https:// address of the photo, fetched by the service under the same rules as an "
        "event's image URL: public addresses only (no loopback, private, link-local or cloud-metadata "
        "address, at every redirect), plain http:// only for allowlisted hosts, at most "
        "SNAP2CAPTION_FETCH_MAX_BYTES bytes within SNAP2CAPTION_FETCH_TIMEOUT_S seconds. Or send image.",
    )
    image: str | None = Field(
        None,
        validate_default=True,
        description="Base64 image bytes or a data: URL (JPEG, PNG, WebP, GIF, BMP, TIFF). Or send image_url.",
    )

    @field_validator("image")
    @classmethod
    def _exactly_one_image(cls, value: str | None, info: ValidationInfo) -> str | None:
        # On ``image``, not the whole model, so that a request without a photo is refused naming
        # the field (ErrorBody.fields), as when image alone was required.
        if "image_url" not in info.data:  # image_url itself failed validation: that is the error to report
            return value
        if value is None and info.data["image_url"] is None:
            raise ValueError("a photo is required: send image (base64 or a data: URL) or image_url")
        if value is not None and info.data["image_url"] is not None:
            raise ValueError("send exactly one of image and image_url, not both")
        return value


class Candidate(BaseModel):
    caption: str
    hashtags: list[str]
    alt_text: str
    score: float = Field(..., description="Mean token log-probability under the model (higher is better).")
    confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="How far to trust this answer, 0..1: the vision tower's own reading of the picture where the "
        "model ships scene heads (the demo model), else the answer's mean token probability.",
    )
    corrections: list[str] = Field(
        default_factory=list,
        description="Where the model named one thing in two colours (caption against alt text), the sentence "
        "saying which colour all fields now name (core/answer_agreement.py). Empty when the fields agreed.",
    )


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
    platform: str = Field(DEFAULT_PLATFORM, description="The platform whose rules the answer follows.")
    confidence: float | None = Field(
        None, ge=0, le=1, description="The best candidate's confidence, 0..1 (Candidate.confidence)."
    )
    low_confidence: bool = Field(
        False,
        description="True when confidence is below the service's SNAP2CAPTION_MIN_CONFIDENCE (the picture is "
        "probably not something the model knows), or when the model contradicted itself and the answer was "
        "made to agree (Candidate.corrections): either way, check it before it is posted.",
    )
    notice: str | None = Field(None, description="What to check, for the creator, when low_confidence is true.")


class ModelDescription(BaseModel):
    """GET /info: which model answers, and what a creator should expect of it."""

    model_version: str
    model_type: str = Field(..., description="The checkpoint's architecture: llava, llava_next, llava_onevision.")
    demo: bool = Field(..., description="True for the embedded demo model, which knows only coloured shapes.")
    knows: str = Field(..., description="One line on what the model can caption.")
    confidence_source: str = Field(..., description="What Candidate.confidence is computed from for this model.")
    min_confidence: float = Field(..., description="Answers below this confidence are flagged (low_confidence).")
    serve_a_checkpoint: str = Field(..., description="How to serve a real LLaVA checkpoint instead.")


# --- The model's answer ------------------------------------------------------------------
# What a captioning model writes, one line per field, each after its label:
#     Caption: <one line>\nHashtags: #a #b ...\nAlt text: <one line>
# Training writes its targets in this layout (prompting.format_target), the constrained decoder
# builds its grammar from these limits (core/answer_grammar.py), and prompting.parse_output reads
# it back into a ModelAnswer. Limits are in tokens, so that a whole answer always fits the
# generation budget, whatever the model (answer_grammar.answer_token_bound).
ANSWER_LABELS: tuple[str, str, str] = ("Caption:", "Hashtags:", "Alt text:")
ANSWER_CAPTION_MAX_TOKENS = 64
ANSWER_HASHTAG_MAX_TOKENS = 8
ANSWER_ALT_TEXT_MAX_TOKENS = 96
# One hashtag as platforms index it: lowercase letters and digits, at least one letter (an
# all-digit tag is not a hashtag on Instagram), within the Hashtag field's length.
MAX_HASHTAG_BODY_CHARS = MAX_HASHTAG_CHARS - 1
_HALF = (MAX_HASHTAG_BODY_CHARS - 1) // 2
HASHTAG_BODY_PATTERN = f"[a-z0-9]{{0,{_HALF}}}[a-z][a-z0-9]{{0,{_HALF}}}"


class ModelAnswer(BaseModel):
    """A model's answer, parsed: what Candidate adds a score to."""

    caption: str
    hashtags: list[str]
    alt_text: str


class FeedbackRequest(BaseModel):
    """POST /feedback body."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(
        ..., pattern=REQUEST_ID_PATTERN, description="The request_id of a caption this service returned."
    )
    rating: Literal["up", "down"]
    edited_caption: str | None = Field(None, max_length=MAX_CAPTION_CHARS)
    edited_hashtags: list[Hashtag] | None = Field(None, max_length=MAX_HASHTAGS_LIST)
    reason: str | None = Field(None, max_length=MAX_REASON_CHARS)
    creator_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CREATOR_ID_CHARS,
        description="Required, and must match, when the caption was requested with a creator_id.",
    )


class ServedCaption(BaseModel):
    """What a creator was shown for one request, kept so that feedback can become training data.

    Written to the caption archive at caption time; copied into the feedback record at
    feedback time, so each event on the training topic is self-contained. Every field is
    bounded: the record is read back from files and from Kafka.
    """

    request_id: str = Field(..., pattern=REQUEST_ID_PATTERN)
    image_sha256: str = Field(
        ..., pattern=SHA256_PATTERN, description="Content hash of the upload; the archive keys the image by it."
    )
    tone: str = Field(..., max_length=MAX_TONE_CHARS)
    audience: str = Field(..., max_length=32)
    num_hashtags: int = Field(PLATFORMS[DEFAULT_PLATFORM].recommended_hashtags, ge=0, le=MAX_HASHTAGS_LIST)
    platform: str = Field(DEFAULT_PLATFORM, max_length=32)
    caption: str = Field(..., max_length=MAX_CAPTION_CHARS)
    hashtags: list[Hashtag] = Field(..., max_length=MAX_HASHTAGS_LIST)
    alt_text: str = Field(..., max_length=MAX_ALT_TEXT_CHARS)
    model_version: str = Field(..., max_length=MAX_MODEL_VERSION_CHARS)
    served_at: str = Field("", max_length=64)
    creator_id: str | None = Field(
        None, max_length=MAX_CREATOR_ID_CHARS, description="The creator the caption was requested for, if any."
    )


class FeedbackRecord(FeedbackRequest):
    """A feedback event as stored and as later produced to the training topic."""

    feedback_id: str = Field(..., max_length=64)
    received_at: str = Field(..., max_length=64)
    served: ServedCaption | None = Field(
        None, description="The captioned request this rates (image hash, options, shown result)."
    )
    # The hashtag edit against what was shown (normalized; empty without edited_hashtags), which
    # stream/tag_stats_consumer.py counts so that the ranker learns what creators keep.
    hashtags_kept: list[Hashtag] = Field(default_factory=list, max_length=MAX_HASHTAGS_LIST)
    hashtags_removed: list[Hashtag] = Field(default_factory=list, max_length=MAX_HASHTAGS_LIST)
    hashtags_added: list[Hashtag] = Field(default_factory=list, max_length=MAX_HASHTAGS_LIST)


class FeedbackAccepted(BaseModel):
    feedback_id: str
    status: Literal["recorded"] = "recorded"


class FieldProblem(BaseModel):
    """One invalid field of a request: where it is and what is wrong, never its value."""

    loc: list[str | int] = Field(..., description='The field\'s path in the body, e.g. ["edited_hashtags", 2].')
    msg: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable machine code and a sentence a person can act on.

    No error answer carries the request's own content back: a field problem names the field
    and the rule it broke (``fields``), not what was sent.
    """

    error: str
    detail: str
    stage: str | None = Field(
        None, description="Where it failed, for an event (/events) or an image fetched by image_url (fetch)."
    )
    fields: list[FieldProblem] | None = Field(None, description="Invalid request fields (400 invalid_request).")


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
        pattern=IMAGE_URL_PATTERN,
        max_length=MAX_IMAGE_URL_CHARS,
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

    The options (tone, audience, platform, num_hashtags, num_candidates; creator_id, required here)
    are CaptionOptions' own fields, with the same limits and defaults as over HTTP. Unknown
    top-level fields are ignored so producers can add fields without turning every event
    into poison.
    """

    model_config = ConfigDict(extra="ignore")

    media_id: str = Field(..., min_length=1, max_length=MAX_ID_CHARS, description="Record key and idempotency key.")
    creator_id: str = Field(..., min_length=1, max_length=MAX_CREATOR_ID_CHARS)
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
