"""The multipart input of ``POST /generate-caption/upload``: one photo plus the caption options.

BentoML binds the first part named ``image`` and drops any others, so a second photo would be
ignored without a word; this descriptor counts the parts first and refuses more than one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import bentoml
from pydantic import Field, ValidationError
from pydantic_core import PydanticCustomError

from snap2caption_service.core.contracts import (
    MAX_CANDIDATES,
    MAX_CREATOR_ID_CHARS,
    MAX_HASHTAG_CHARS,
    MAX_HASHTAGS,
    MAX_TONE_CHARS,
    MIN_CANDIDATES,
    MIN_HASHTAGS,
    Audience,
    CaptionOptions,
    Hashtag,
    Platform,
)
from snap2caption_service.core.platforms import DEFAULT_PLATFORM


class UploadRequest(bentoml.IODescriptor):
    image: Path
    tone: Annotated[str, Field(max_length=MAX_TONE_CHARS)] = "casual"
    audience: Audience = "personal"
    platform: Platform = DEFAULT_PLATFORM
    num_hashtags: Annotated[int | None, Field(ge=MIN_HASHTAGS, le=MAX_HASHTAGS)] = None  # the platform's default
    num_candidates: Annotated[int, Field(ge=MIN_CANDIDATES, le=MAX_CANDIDATES)] = 1
    creator_id: Annotated[str | None, Field(min_length=1, max_length=MAX_CREATOR_ID_CHARS)] = None
    # A form field is one string ("#sunset #beach", commas too); BentoML hands a JSON array over as a list.
    include_hashtags: list[Hashtag] | Annotated[str, Field(max_length=MAX_HASHTAGS * (MAX_HASHTAG_CHARS + 1))] = []

    @classmethod
    async def from_http_request(cls, request, serde) -> UploadRequest:
        # starlette parses the form once and caches it on the request: the parse below reuses it.
        photos = len((await request.form()).getlist("image"))
        if photos > 1:  # a field error like any other: 400 invalid_request naming the field
            error = PydanticCustomError("one_photo", "{n} files sent: send exactly one photo", {"n": photos})
            raise ValidationError.from_exception_data(cls.__name__, [{"type": error, "loc": ("image",), "input": None}])
        parsed = await super().from_http_request(request, serde)
        parsed.options()  # the rules across fields (a platform's cap, include_hashtags) as 400s here too
        return parsed

    def options(self) -> CaptionOptions:
        fields = self.model_dump(exclude={"image"})
        if isinstance(self.include_hashtags, str):
            fields["include_hashtags"] = self.include_hashtags.replace(",", " ").split()
        return CaptionOptions(**fields)
