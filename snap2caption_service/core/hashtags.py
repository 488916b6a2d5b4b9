"""Hashtag rules: '#' + lowercase letters and digits, unique, most relevant first.

``rank_hashtags`` chooses what a creator is shown from the model's candidates (the model is asked
for a few more than wanted: serving/pipeline.py). Its rules, in order:

1. Tags the creator asked for by name (``include``) come first, in their order. They are the only
   way a generic tag (``GENERIC_HASHTAGS``, the data file beside this module) appears.
2. Generic tags are dropped: a listed one, or a multi-word tag whose words are all generic or
   filler words (#viralreels, #explorepage, #photooftheday).
3. The rest are scored: relevance (the tag, or the words it joins, are keywords of the caption or
   alt text: 1 point, a share of it when only some of its words are), specificity (a tag of two or
   more words that are all relevant, #redcircle, ranks above the single words #red and #circle:
   half a point, since a narrower tag reaches the people who search for exactly that), and what
   creators keep, remove and add on similar images (``learned``, -1..1, core/tag_stats.py). A tag
   creators clearly add for similar images (``LEARNED_VERDICT``) joins the candidates even when the
   model did not write it; one they clearly remove is dropped. Ties keep the model's order.
4. When fewer than n are left, keywords of what the alt text describes fill up (``top_up``: not
   its background, nor the caption's voice); never filler.
"""

from __future__ import annotations

import importlib.resources
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from snap2caption_service.core.alt_text import without_background
from snap2caption_service.core.contracts import (
    MAX_HASHTAG_BODY_CHARS,
    MAX_HASHTAGS,
    Candidate,
    CaptionOptions,
    ModelAnswer,
)
from snap2caption_service.core.platforms import PLATFORMS, fit_caption

if TYPE_CHECKING:
    from snap2caption_service.core.tag_stats import TagStatsReader

# Words that carry no reach as a hashtag; filling from them would be padding in disguise.
STOPWORDS = frozenset(
    """
a an and are as at be been but by for from has have in into is it its of on or so that the
their this to was were what when where which while with without you your our my me we i
just very one some any all not no nothing more most than then there here about over under
today day days every like get got let new now out up off only also can will would could
left right top bottom center middle background plain gradient large small medium big little photo
image picture caption hashtags alt text shows showing shape shapes thing things object objects
""".split()
)

GENERIC_FILE = Path(__file__).with_name("generic_hashtags.txt")
RELEVANT, SPECIFIC, LEARNED = 1.0, 0.5, 1.0  # the score's weights (module docstring, rule 3)
# A learned score this far from 0 is a clear verdict of creators on similar images: a tag they add
# joins the candidates even when the model did not write it, and a tag they remove is dropped (fewer
# tags beat one creators keep deleting). Nearer 0 it only moves a tag within the ranking: one or two
# creators' edits are a hint, not a verdict (core/tag_stats.py smooths them to well below this).
LEARNED_VERDICT = 0.3
# How many more hashtags than wanted the model writes, for the ranker to choose from: enough to
# replace the generic and creator-removed ones a pool usually holds, few enough that the answer's
# token bound (core/answer_grammar.py: 8 tokens a tag) and the grammar stay small.
POOL_EXTRA = 3
MAX_CONTEXT_WORDS = 12


def normalize_hashtag(raw: str) -> str | None:
    """'#Red-Circle!' -> '#redcircle'; None when nothing usable is left."""
    # NFKD then ASCII keeps 'café' as 'cafe' instead of dropping the word.
    text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    body = re.sub(r"[^a-z0-9]", "", text.lower())
    if not body or body.isdigit():
        return None
    return "#" + body[:MAX_HASHTAG_BODY_CHARS]


def normalize_all(raw: Iterable[str]) -> list[str]:
    """Each usable tag once, normalized, in order."""
    return list(dict.fromkeys(t for t in map(normalize_hashtag, raw) if t))


def keywords(text: str) -> list[str]:
    """Content words of a caption or alt text, in order of appearance."""
    words = re.findall(r"[A-Za-z][A-Za-z0-9']+", text)
    out = []
    for w in words:
        w = re.sub(r"'s$", "", w.lower()).replace("'", "")  # "Today's" is the stopword "today"
        if len(w) >= 3 and w not in STOPWORDS:
            out.append(w)
    return out


def _load_generic(path: Path) -> frozenset[str]:
    tags = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        # '# ' opens a comment; '#tag' (no space) is an entry.
        if line and not line.startswith("# ") and line != "#":
            tag = normalize_hashtag(line)
            if tag:
                tags.add(tag)
    return frozenset(tags)


GENERIC_HASHTAGS: frozenset[str] = _load_generic(GENERIC_FILE)
# A multi-word tag made only of these says as little as a listed one.
_GENERIC_WORDS = frozenset(t[1:] for t in GENERIC_HASHTAGS) | STOPWORDS


def finalize_hashtags(candidates: list[str], n: int, caption: str = "", alt_text: str = "") -> list[str]:
    """The first n valid, unique hashtags, topped up (``top_up``) if short.

    Returns fewer than n rather than inventing generic filler tags. (parse_output's rule; the
    creator's n is chosen from these by rank_hashtags.)
    """
    # One word ("vibes" in "Weekend vibes with...") can be a listed generic tag; a keyword never
    # joins words, so the list is the whole check (no segmenter in the model worker).
    return top_up(normalize_all(candidates)[:n], n, caption, alt_text, lambda tag: tag not in GENERIC_HASHTAGS)


def described_text(caption: str, alt_text: str) -> str:
    """What a short answer's hashtags are topped up from: the objects its alt text describes, not
    its background ("on a plain black background" is no #black for a blue star) nor the caption, a
    creator's voice ("not speaking today"); the caption only when there is no alt text. The
    ranking favours tags the text says, so a top-up of all its words once served #black #speaking
    above the model's own #starart (the README screenshot, session 17)."""
    return without_background(alt_text) or caption


def top_up(tags: list[str], n: int, caption: str, alt_text: str, allowed: Callable[[str], bool]) -> list[str]:
    """``tags``, then keywords of ``described_text`` as tags (each one ``allowed``) until there are n.
    An answer left with no tag at all takes words of all it said: a result needs one."""

    def fill(out: list[str], text: str) -> list[str]:
        for word in keywords(text):
            if len(out) >= n:
                break
            tag = normalize_hashtag(word)
            if tag and tag not in out and allowed(tag):
                out.append(tag)
        return out

    if tags and len(tags) >= n:
        return list(tags)  # full already: no need to read the text
    return fill(list(tags), described_text(caption, alt_text)) or fill([], f"{alt_text} {caption}")


# --- Word segmentation: which words a multi-word tag joins ------------------------------------
_segmenter = None
_segmenter_lock = threading.Lock()


def _symspell():
    """symspellpy's bundled English frequency dictionary (83k words), loaded once, on first use
    (about half a second), plus the generic tags' own words (fyp, instagood), which it lacks."""
    global _segmenter
    with _segmenter_lock:
        if _segmenter is None:
            from symspellpy import SymSpell

            sym = SymSpell(max_dictionary_edit_distance=0, prefix_length=7)
            path = importlib.resources.files("symspellpy") / "frequency_dictionary_en_82_765.txt"
            with importlib.resources.as_file(path) as file:
                if not sym.load_dictionary(str(file), term_index=0, count_index=1):
                    raise RuntimeError(f"symspellpy's dictionary {path} could not be read")
            common = max(sym.words.values())
            for tag in GENERIC_HASHTAGS:
                sym.create_dictionary_entry(tag[1:], common)
            _segmenter = sym
    return _segmenter


def warm_up_segmenter() -> None:
    """Load the segmentation dictionary now (a server's start), not in the first request."""
    _symspell()


@lru_cache(maxsize=8192)
def tag_words(tag: str) -> tuple[str, ...]:
    """The words a tag joins: '#redcircle' -> ('red', 'circle'); a tag that is one word, or that
    does not split into dictionary words only ('#xqzt', '#abc123'), is its own one word."""
    body = tag.lstrip("#")
    sym = _symspell()
    if body in sym.words or not body.isalpha():
        return (body,)
    words = tuple(sym.word_segmentation(body, max_edit_distance=0).segmented_string.split())
    if len(words) > 1 and all(w in sym.words for w in words):
        return words
    return (body,)


def _stem(word: str) -> str:
    """Plural to singular, enough to match 'circles' with 'circle' (not a real stemmer)."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def is_generic(tag: str) -> bool:
    """A listed generic tag, or one that joins only generic and filler words."""
    if tag in GENERIC_HASHTAGS:
        return True
    words = tag_words(tag)
    return len(words) > 1 and all(w in _GENERIC_WORDS or _stem(w) in _GENERIC_WORDS for w in words)


def context_words(tags: Iterable[str], caption: str, alt_text: str) -> list[str]:
    """What an answer says the image shows: the words of its tags that its caption or alt text
    also names (the colour and shape, for the demo model's scenes), singular, in tag order.

    The key core/tag_stats.py counts creators' edits under, so that "similar images" are images
    whose answers name the same things."""
    said = {_stem(w) for w in keywords(f"{alt_text} {caption}")}
    out: list[str] = []
    for tag in normalize_all(tags):
        if is_generic(tag):  # "Weekend vibes" names no thing in the photo
            continue
        for word in tag_words(tag):
            stem = _stem(word)
            if stem in said and stem not in out:
                out.append(stem)
    return out[:MAX_CONTEXT_WORDS]


def _relevance(tag: str, said: set[str]) -> tuple[float, bool]:
    """(share of the tag's content words the text names, whether it is specific: 2+ words, all named)."""
    body = tag[1:]
    if _stem(body) in said:
        return 1.0, False
    words = [w for w in tag_words(tag) if w not in STOPWORDS] or [body]
    share = sum(_stem(w) in said for w in words) / len(words)
    return share, share == 1.0 and len(words) > 1


def rank_hashtags(
    candidates: Iterable[str],
    n: int,
    caption: str = "",
    alt_text: str = "",
    include: Iterable[str] = (),
    learned: Mapping[str, float] | None = None,
) -> list[str]:
    """At most n tags for this answer, best first (the module docstring's rules)."""
    chosen = normalize_all(include)[:n]
    learned = learned or {}
    pool = normalize_all(candidates)
    pool += [t for t, v in sorted(learned.items(), key=lambda kv: -kv[1]) if v >= LEARNED_VERDICT and t not in pool]
    said = {_stem(w) for w in keywords(f"{alt_text} {caption}")}
    scored = []
    for order, tag in enumerate(pool):
        if tag in chosen or is_generic(tag) or learned.get(tag, 0.0) <= -LEARNED_VERDICT:
            continue
        relevance, specific = _relevance(tag, said)
        score = RELEVANT * relevance + SPECIFIC * specific + LEARNED * learned.get(tag, 0.0)
        scored.append((-score, order, tag))
    chosen += [tag for _, _, tag in sorted(scored)][: n - len(chosen)]
    return top_up(
        chosen, n, caption, alt_text, lambda tag: not is_generic(tag) and learned.get(tag, 0.0) > -LEARNED_VERDICT
    )


def hashtag_pool(options: CaptionOptions) -> int:
    """Hashtags the model is asked for: the creator's count plus POOL_EXTRA, within the API's bound."""
    return min(options.num_hashtags + POOL_EXTRA, MAX_HASHTAGS)


def rank_answer(
    answer: ModelAnswer | Candidate, options: CaptionOptions, learned: TagStatsReader | None = None
) -> list[str]:
    """An answer's hashtags for the creator: ``options.num_hashtags`` of the model's pool, best
    first, with what creators did to the same tags on similar images (its context words)."""
    adjustments = None
    if learned is not None:
        context = context_words(answer.hashtags, answer.caption, answer.alt_text)
        adjustments = learned.adjustments(options.platform, options.creator_id, context)
    return rank_hashtags(
        answer.hashtags,
        options.num_hashtags,
        answer.caption,
        answer.alt_text,
        include=options.include_hashtags,
        learned=adjustments,
    )


def as_served(candidate: Candidate, options: CaptionOptions, learned: TagStatsReader | None = None) -> Candidate:
    """A model candidate as a creator is shown it on ``options.platform``: its hashtags ranked down
    to the creator's count, its caption fitted to the platform's text limit. Serving builds every
    answer with this, and retraining scores candidates with it, so both see the same answer."""
    tags = rank_answer(candidate, options, learned)
    return candidate.model_copy(
        update={"hashtags": tags, "caption": fit_caption(candidate.caption, tags, PLATFORMS[options.platform])}
    )


def hashtag_edit(shown: Iterable[str], edited: Iterable[str] | None) -> tuple[list[str], list[str], list[str]]:
    """(kept, removed, added): a creator's hashtag edit against what was shown, normalized; all
    empty when there is no edit (``edited`` None)."""
    if edited is None:
        return [], [], []
    before, after = normalize_all(shown), normalize_all(edited)
    return (
        [t for t in before if t in after],
        [t for t in before if t not in after],
        [t for t in after if t not in before],
    )
