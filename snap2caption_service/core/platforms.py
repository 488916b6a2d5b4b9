"""Which platform an answer is for, and that platform's rules (core/platforms.json).

A caption is posted somewhere, and every platform has its own rules: Instagram takes at most 5
hashtags since December 2025, Threads one, X 280 characters of text hashtags included. The
profiles live in one data file so that a rule change is a one-line edit; contracts.py takes
the platform names and caps from here, and the result is fitted to the profile here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PROFILES_FILE = Path(__file__).with_name("platforms.json")
DEFAULT_PLATFORM = "instagram"
ELLIPSIS = "…"


@dataclass(frozen=True)
class PlatformProfile:
    name: str
    label: str
    hashtag_cap: int | None  # None: no published cap (the API's own maximum applies)
    recommended_hashtags: int
    caption_limit: int
    hashtags_in_caption: bool  # the hashtags are part of the post text, and of its limit
    alt_text: bool
    rule: str
    sources: tuple[dict, ...]


def _load() -> dict[str, PlatformProfile]:
    raw = json.loads(PROFILES_FILE.read_text())["profiles"]
    return {
        name: PlatformProfile(name=name, **{**fields, "sources": tuple(fields["sources"])})
        for name, fields in raw.items()
    }


PLATFORMS: dict[str, PlatformProfile] = _load()
PLATFORM_NAMES: tuple[str, ...] = tuple(PLATFORMS)


def post_text(caption: str, hashtags: list[str]) -> str:
    """The text a creator pastes: the caption, then the hashtags on their own line."""
    return f"{caption}\n\n{' '.join(hashtags)}" if hashtags else caption


def fit_caption(caption: str, hashtags: list[str], profile: PlatformProfile) -> str:
    """The caption, shortened at a word boundary (with an ellipsis) when the post would not fit
    the platform's text limit; the hashtags count toward it where they are part of the text."""
    room = profile.caption_limit
    if profile.hashtags_in_caption and hashtags:
        room -= len(post_text("", hashtags))
    if len(caption) <= room:
        return caption
    cut = caption[: max(room - len(ELLIPSIS), 0)]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,.;:-") + ELLIPSIS
