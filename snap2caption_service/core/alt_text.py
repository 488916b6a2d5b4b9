"""Alt text that follows accessibility guidance: one lint rule per guideline, and the fixes that
can be made without inventing content.

Sources (W3C Web Accessibility Initiative, Images Tutorial; read 2026-12-02):

- Tips and Tricks, https://www.w3.org/WAI/tutorials/images/tips/ (source: w3c/wai-tutorials
  content/images/tips.md): put the most important information at the beginning; the most
  concise description of the image's purpose, a short phrase or sentence; no need for words
  like "image", "icon" or "picture", screen readers already announce an image; punctuation
  makes the text easier to understand.
- An alt Decision Tree, https://www.w3.org/WAI/tutorials/images/decision-tree/ (last updated
  2017-04-12): a photograph that contributes meaning gets a brief description conveying it.
- Informative Images, https://www.w3.org/WAI/tutorials/images/informative/ (last updated
  2019-06-17): a short phrase or sentence; its example, "Dog with a bell attached to its
  collar.", is the shape our answers take.

WAI gives the principles; the numbers and the social-media rules are ours. The 125-character
target is a common rule of thumb for "concise", not a WAI number; the hard cap (``ALT_TEXT_MAX_CHARS``, setting ``alt_text_max_chars``) is what
``fix`` enforces. Hashtags, @mentions and emoji are read aloud as "hashtag ...", handles and
emoji names: noise in a description, so they are superfluous information too.

"Most important first" is a judgement only the model can make (it sees the photo); the lint
checks what text alone can show: the alt text does not open with filler ("There is", "This
is", "It shows") that pushes the content back.

Used three ways: ``fix`` on every answer (prompting.parse_output), ``pass_rate`` as an
evaluation metric (training/caption_metrics.py, ``alt_text_lint_pass``), and that metric as a
guarded metric of the promotion gate (training/configs/*.yaml), so a retrain cannot make alt
text worse beyond the rule's tolerance.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

ALT_TEXT_TARGET_CHARS = 125
ALT_TEXT_MAX_CHARS = 250

# Every input is a photo, so naming the medium never tells the listener anything.
_MEDIA = r"(?:image|picture|photo|photograph|pic|snapshot|graphic|illustration|screenshot)"
_REDUNDANT_OPENER = re.compile(
    rf"^(?:(?:(?:a|an|the|this|my)\s+)?{_MEDIA}\s+(?:of|showing|shows|that\s+shows|which\s+shows|depicting|featuring)\b"
    rf"|in\s+(?:this|the)\s+{_MEDIA}\b|{_MEDIA}\s*:)[\s,:]*",
    re.IGNORECASE,
)
_FILLER_OPENER = re.compile(
    r"^(?:there\s+(?:is|are)|there['’]s|here\s+(?:is|are|we\s+see|you\s+can\s+see)|here['’]s|this\s+is|these\s+are"
    r"|it\s+is|it['’]s|it\s+shows|this\s+shows|we\s+(?:can\s+)?see|you\s+can\s+see|i\s+see|we\s+have)\b[\s,:]*",
    re.IGNORECASE,
)
# What the rest must open with for dropped filler to leave a description ("There is a dog
# on the sand." -> "A dog on the sand."); "This is where we met." keeps its filler.
_DETERMINERS = frozenset(
    "a an the some several many few two three four five six seven eight nine ten eleven twelve "
    "one his her their its my our your".split()
)
_HASHTAG = re.compile(r"(?<![\w#&/])#(\w*[^\W\d_]\w*)")
_MENTION = re.compile(r"(?<![\w@.])@(\w*[^\W\d_]\w*)")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_ABBREVIATIONS = frozenset("mr mrs ms dr st mt jr sr vs no approx".split())
_SENTENCE_END = re.compile(r"(?<!\S)(\S+?)[.!?]+[\"”’)]*\s+(?=[\"“‘(]*[A-Z0-9])")
# Words a cut should not leave dangling before the full stop ("A dog on the.").
_DANGLING = frozenset("a an the and or but of on in at to for with by from".split())
_TRAILING_PUNCT = " ,;:!?.…-–—"
_CLOSERS = "\"'”’)]"


# ", on a plain gray background" / " on a gradient background from white to teal" / " on a photo
# background": where an alt text says what the picture's background is (the demo model's wording).
_BACKGROUND_CLAUSE = re.compile(
    r",?\s+on\s+an?\s+(?P<what>[^,.]*?)\s*\bbackground(?:\s+from\s+\w+\s+to\s+\w+)?", re.IGNORECASE
)


@dataclass(frozen=True)
class BackgroundClause:
    """Where an alt text names its background, and the words it uses ("plain gray": ``what``)."""

    start: int
    end: int
    what: tuple[str, ...]  # the words before "background", lower case
    words: frozenset[str]  # every word of the clause, a gradient's two ends included


def background_clause(alt_text: str) -> BackgroundClause | None:
    """The alt text's background clause, or None when it names none. The one reader of it: the
    checks that drop a background the picture contradicts, and the hashtag top-up that skips it."""
    match = _BACKGROUND_CLAUSE.search(alt_text)
    if match is None:
        return None
    what = tuple(w.lower() for w in re.findall(r"[A-Za-z]+", match.group("what")))
    return BackgroundClause(match.start(), match.end(), what, frozenset(re.findall(r"[a-z]+", match.group(0).lower())))


def without_background(alt_text: str, clause: BackgroundClause | None = None) -> str:
    """The alt text with its background clause cut out (``clause``: one already found)."""
    clause = clause or background_clause(alt_text)
    if clause is None:
        return alt_text
    return (alt_text[: clause.start] + alt_text[clause.end :]).strip()


@dataclass(frozen=True)
class Violation:
    rule: str
    reason: str


@dataclass(frozen=True)
class Rule:
    """One guideline: ``check`` says whether a text follows it; ``fix``, where one is safe,
    rewrites the text so that it does (or returns it unchanged when it cannot)."""

    id: str
    reason: str
    check: Callable[[str, int], bool]
    fix: Callable[[str, int], str] | None = None


# --- helpers ------------------------------------------------------------------------------


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _is_emoji(ch: str) -> bool:
    cp = ord(ch)
    # Symbols beyond Latin-1 (Latin-1's own, © ® °, are ordinary text), and the emoji blocks
    # whole: emoji newer than this Python's Unicode tables are unassigned there, not "So".
    return (unicodedata.category(ch) == "So" and cp > 0xFF) or 0x1F000 <= cp <= 0x1FAFF


def _is_presentation(ch: str) -> bool:
    """Characters that only shape an emoji: variation selectors 15/16, the keycap, skin tones,
    the tag characters of flag sequences."""
    cp = ord(ch)
    return cp in (0xFE0E, 0xFE0F, 0x20E3) or 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F


def _strip_emoji(text: str) -> str:
    out: list[str] = []
    after_emoji = False
    for ch in text:
        # A zero-width joiner joins emoji into one, but also shapes Indic and Persian text:
        # only one that follows an emoji goes.
        if _is_emoji(ch) or _is_presentation(ch) or (after_emoji and ch == "\u200d"):
            after_emoji = after_emoji or _is_emoji(ch)
            continue
        after_emoji = False
        out.append(ch)
    return "".join(out)


def _tidy(text: str) -> str:
    """What removals leave behind: doubled spaces, a space before punctuation, an empty
    bracket, a comma run, punctuation where the text starts."""
    while True:
        # Until nothing changes: removing "( )" can leave another one around it.
        tidied = " ".join(text.split())
        tidied = re.sub(r"\(\s*\)|\[\s*\]", "", tidied)
        tidied = re.sub(r"\s+([,.;:!?])", r"\1", tidied)
        tidied = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", tidied)
        tidied = " ".join(re.sub(r"^[\s,;:.!?\-–—]+", "", tidied).split())
        if tidied == text:
            return text
        text = tidied


def _drop_tags(text: str, pattern: re.Pattern) -> str:
    """Tags before or after the description go; one inside a sentence keeps its word ("A
    #sunset over the sea" -> "A sunset over the sea"), which the sentence needs."""
    words = text.split()

    def is_tag(word: str) -> bool:
        return bool(pattern.fullmatch(word.strip(",;:.!?")))

    while words and is_tag(words[0]):
        words.pop(0)
    while words and is_tag(words[-1]):
        words.pop()
    return pattern.sub(r"\1", " ".join(words))


def _first_word(text: str) -> str:
    return text.split(maxsplit=1)[0] if text.split() else ""


def _cap(text: str, max_chars: int) -> str:
    """At most ``max_chars``: cut at a word boundary, no dangling "the", a full stop."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    if text[max_chars - 1] != " " and " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    words = cut.rstrip(_TRAILING_PUNCT).split(" ")
    while len(words) > 1 and words[-1].lower() in _DANGLING:
        words.pop()
    cut = " ".join(words).rstrip(_TRAILING_PUNCT)
    return (cut or text[: max_chars - 1]) + "."


# --- one rule per guideline ---------------------------------------------------------------


def _single_line(text: str, _: int) -> bool:
    return "\n" not in text and "\r" not in text and text == " ".join(text.split())


def _no_redundant_opener(text: str, _: int) -> bool:
    return not _REDUNDANT_OPENER.match(text)


def _strip_opener(text: str, _: int) -> str:
    return _REDUNDANT_OPENER.sub("", text, count=1)


def _important_first(text: str, _: int) -> bool:
    return not _FILLER_OPENER.match(text)


def _drop_filler(text: str, _: int) -> str:
    rest = _FILLER_OPENER.sub("", text, count=1)
    first = _first_word(rest).lower().strip('"“‘(')
    if len(rest.split()) >= 2 and (first in _DETERMINERS or first[:1].isdigit()):
        return rest
    return text


def _no_shouting(text: str, _: int) -> bool:
    """Three capitalised-throughout words in a row; an acronym or two ("A USB cable") is fine."""
    run = 0
    for word in text.split():
        letters = [c for c in word if c.isalpha()]
        run = run + 1 if len(letters) >= 2 and all(c.isupper() for c in letters) else 0
        if run >= 3:
            return False
    return True


def _first_letter(text: str) -> int:
    return next((i for i, ch in enumerate(text) if ch.isalnum()), -1)


def _sentence_case(text: str, _: int) -> bool:
    i = _first_letter(text)
    # Caseless scripts pass; so does a brand written with an inner capital ("iPhone").
    return i < 0 or not text[i].islower() or any(c.isupper() for c in _first_word(text[i:]))


def _capitalise(text: str, _: int) -> str:
    i = _first_letter(text)
    return text[:i] + text[i].upper() + text[i + 1 :]


def _full_stop(text: str, _: int) -> bool:
    return bool(re.search(rf"(?<!\.)\.[{re.escape(_CLOSERS)}]*$", text))


def _add_full_stop(text: str, _: int) -> str:
    body = text.rstrip(_TRAILING_PUNCT)
    closers = len(body) - len(body.rstrip(_CLOSERS))
    if closers and body[: len(body) - closers].endswith(".") and _full_stop(body, 0):
        return body
    return body + "." if body else body


def _one_sentence(text: str, _: int) -> bool:
    for m in _SENTENCE_END.finditer(text):
        word = m.group(1).lower().strip('"“‘(')
        # Initials ("J. Smith"), dotted abbreviations ("U.S. Army") and titles end no sentence.
        if len(word) > 1 and "." not in word and word not in _ABBREVIATIONS:
            return False
    return True


RULES: tuple[Rule, ...] = (
    # Fixes run in this order, so removals come before the rules that look at what is left.
    Rule("non-empty", "An image that carries meaning needs a description.", lambda t, _: _has_words(t)),
    Rule(
        "single-line",
        "One line, single spaces: a line break is read as a pause or not at all.",
        _single_line,
        lambda t, _: " ".join(t.split()),
    ),
    Rule(
        "no-emoji",
        "Emoji are read out by their names, which describe nothing in the photo.",
        lambda t, _: _strip_emoji(t) == t,
        lambda t, _: _strip_emoji(t),
    ),
    Rule(
        "no-urls",
        "A web address read aloud is noise, and alt text links nowhere.",
        lambda t, _: not _URL.search(t),
        lambda t, _: _URL.sub("", t),
    ),
    Rule(
        "no-hashtags",
        "Hashtags belong to the post, not to the description of the photo.",
        lambda t, _: not _HASHTAG.search(t),
        lambda t, _: _drop_tags(t, _HASHTAG),
    ),
    Rule(
        "no-mentions",
        "@handles name accounts; they describe nothing in the photo.",
        lambda t, _: not _MENTION.search(t),
        lambda t, _: _drop_tags(t, _MENTION),
    ),
    Rule(
        "no-redundant-opener",
        'No "image of", "photo of": screen readers already announce an image.',
        _no_redundant_opener,
        _strip_opener,
    ),
    Rule(
        "important-first",
        'The most important content first, not filler such as "There is" or "It shows".',
        _important_first,
        _drop_filler,
    ),
    Rule("no-shouting", "No ALL-CAPS: screen readers may spell it out, and it reads as shouting.", _no_shouting),
    Rule("sentence-case", "A plain sentence starts with a capital letter.", _sentence_case, _capitalise),
    Rule("full-stop", "A plain sentence ends with a full stop, so the reader pauses.", _full_stop, _add_full_stop),
    Rule("one-sentence", "One short phrase or sentence; more belongs in a long description.", _one_sentence),
    Rule(
        "length-target",
        f"Concise: at most {ALT_TEXT_TARGET_CHARS} characters.",
        lambda t, _: len(t) <= ALT_TEXT_TARGET_CHARS,
    ),
    Rule(
        "hard-cap",
        "Within the configured hard cap (alt_text_max_chars).",
        lambda t, cap: len(t) <= cap,
        lambda t, cap: _cap(t, cap),
    ),
)
# What fix() still applies when removing would leave nothing to read.
_KEEPING_RULES = tuple(r for r in RULES if r.id in ("single-line", "hard-cap"))
# Each pass only removes text (or adds the one full stop), so a few passes reach a text that
# no fix changes; fix() stops there, which is what makes it idempotent.
_MAX_PASSES = 8


def _apply(text: str, rules: tuple[Rule, ...], max_chars: int) -> str:
    current = text
    for _ in range(_MAX_PASSES):
        previous = current
        for rule in rules:
            if rule.fix is not None and not rule.check(current, max_chars):
                current = _tidy(rule.fix(current, max_chars))
        if current == previous:
            break
    return current


def lint(text: str, max_chars: int = ALT_TEXT_MAX_CHARS) -> list[Violation]:
    """Every guideline the text breaks, in RULES order; an empty text breaks only non-empty."""
    if not _has_words(text):
        return [Violation(RULES[0].id, RULES[0].reason)]
    return [Violation(r.id, r.reason) for r in RULES if not r.check(text, max_chars)]


def passes(text: str, max_chars: int = ALT_TEXT_MAX_CHARS) -> bool:
    return not lint(text, max_chars)


def fix(text: str, max_chars: int = ALT_TEXT_MAX_CHARS) -> str:
    """The text with every safe fix applied: openers and filler dropped (and the first letter
    re-capitalised), hashtags, mentions, URLs and emoji removed, whitespace collapsed, a final
    full stop, the hard cap. Nothing is added but that full stop; what cannot be fixed (too
    long for the target, shouting, two sentences) stays for ``lint`` to report.

    A text that would be left with nothing to read (only hashtags, only emoji) is kept as it
    was, within the cap: an alt text that says something beats one that says nothing.
    Idempotent: ``fix(fix(t)) == fix(t)``; never longer than ``max_chars``.
    """
    if max_chars < 2:
        raise ValueError(f"max_chars must be at least 2 (a character and the full stop), got {max_chars}")
    current = _tidy(text)
    for _ in range(_MAX_PASSES):
        fixed = _apply(current, RULES, max_chars)
        if _has_words(fixed):
            return fixed
        # Only tags, emoji or an opener: keep the text, within the cap, and try again (a cut
        # can turn an opener into an ordinary word).
        kept = _apply(current, _KEEPING_RULES, max_chars)
        if kept == current:
            return current
        current = kept
    return current


def pass_rate(texts: Iterable[str], max_chars: int = ALT_TEXT_MAX_CHARS) -> float:
    """The share of texts that break no rule, in [0, 1]."""
    if isinstance(texts, str):
        raise TypeError("pass_rate takes a list of alt texts, not one string")
    results = [passes(t, max_chars) for t in texts]
    if not results:
        raise ValueError("cannot compute a lint pass rate of an empty list of alt texts")
    return sum(results) / len(results)
