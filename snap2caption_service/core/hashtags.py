"""Hashtag rules: '#' + lowercase letters and digits, unique, most relevant first."""

from __future__ import annotations

import re
import unicodedata

from snap2caption_service.core.contracts import MAX_HASHTAG_BODY_CHARS

# Words that carry no reach as a hashtag; filling from them would be padding in disguise.
STOPWORDS = frozenset(
    """
a an and are as at be been but by for from has have in into is it its of on or so that the
their this to was were what when where which while with without you your our my me we i
just very one some any all not no nothing more most than then there here about over under
today day days every like get got let new now out up off only also can will would could
left right top bottom center middle background plain gradient large small medium photo
image picture caption hashtags alt text shows showing
""".split()
)


def normalize_hashtag(raw: str) -> str | None:
    """'#Red-Circle!' -> '#redcircle'; None when nothing usable is left."""
    # NFKD then ASCII keeps 'café' as 'cafe' instead of dropping the word.
    text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    body = re.sub(r"[^a-z0-9]", "", text.lower())
    if not body or body.isdigit():
        return None
    return "#" + body[:MAX_HASHTAG_BODY_CHARS]


def keywords(text: str) -> list[str]:
    """Content words of a caption or alt text, in order of appearance."""
    words = re.findall(r"[A-Za-z][A-Za-z0-9']+", text)
    out = []
    for w in words:
        w = w.lower().replace("'", "")
        if len(w) >= 3 and w not in STOPWORDS:
            out.append(w)
    return out


def finalize_hashtags(candidates: list[str], n: int, fallback_text: str = "") -> list[str]:
    """The first n valid, unique hashtags; top up from keywords of fallback_text if short.

    Returns fewer than n rather than inventing generic filler tags.
    """
    tags: list[str] = []
    for raw in candidates:
        tag = normalize_hashtag(raw)
        if tag and tag not in tags:
            tags.append(tag)
        if len(tags) == n:
            return tags
    for word in keywords(fallback_text):
        tag = normalize_hashtag(word)
        if tag and tag not in tags:
            tags.append(tag)
        if len(tags) == n:
            break
    return tags
