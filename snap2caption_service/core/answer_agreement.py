"""One answer names one set of objects: caption, hashtags and alt text must not contradict.

A captioning model writes the three fields one after the other, and a small or unsure model can
call the same thing by two colours ("Exhibit A: one very black circle" above the alt text "A large
blue circle ..."). A creator would post that, and a screen-reader user would hear a picture the
others do not see (issue 15 §3). Here an answer is checked for the contradictions that can be read without
knowing the picture, and made to agree:

- for any model, the same thing named in two colours ("black circle" / "blue circle");
- for a model that names its objects from a closed list (the demo model: its scene heads' shape
  labels) and names the main object first, two different main objects ("black circle" / "blue
  square").

The naming that wins is the one the vision tower's own reading gives, where the model ships scene
heads (core/scene_heads.py); otherwise the alt text's, the literal description written after the
caption, and the one a reader who cannot see the picture relies on. The losing field is rewritten
(with its article: "a black" -> "an orange"), and so are hashtags that carry the losing words.
What was changed is returned, so the answer can say so and the creator checks it.

Only colour words directly before a noun count ("red car", "blue circles"): a colour named
elsewhere ("feeling blue") is no claim about an object, and is left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Basic colour terms as captions use them, and the demo model's palette (a reading may add more).
COLOR_WORDS = frozenset(
    "red orange yellow green blue purple violet pink brown black white gray grey "
    "teal beige turquoise cyan magenta navy maroon gold silver".split()
)
_WORD = re.compile(r"[A-Za-z]+")
# Words between a colour and its noun that carry no claim of their own: "red and white bus" names
# the bus with both colours.
_SKIP = frozenset({"and", "or"})
# What follows a colour but names no thing ("totally purple: the star drop"): no claim to compare.
_NOT_A_THING = frozenset("a an the is are was of on in at to with as and or but it its this that for".split())


@dataclass(frozen=True)
class Disagreement:
    """One thing the caption and the alt text named differently, and what both name now."""

    caption_said: str  # "black circle"
    alt_text_said: str
    kept: str

    def sentence(self) -> str:
        if self.caption_said == self.alt_text_said:  # both agreed, and the tower read otherwise
            return (
                f'Caption and alt text said "{self.caption_said}", but the vision tower reads '
                f'"{self.kept}"; both now say "{self.kept}".'
            )
        return (
            f'The caption said "{self.caption_said}" and the alt text "{self.alt_text_said}"; '
            f'both now say "{self.kept}".'
        )


@dataclass(frozen=True)
class StrayTag:
    """A hashtag that named the main thing in a colour neither caption nor alt text gives it."""

    tag: str  # "#whitetriangle"
    now: str  # "#yellowtriangle"

    def sentence(self) -> str:
        return f"The hashtag {self.tag} named an object caption and alt text do not; it is now {self.now}."


# What a hashtag may add to a thing and still be a claim about it: #circle, #circles, #circleart
# (the demo model's tag for its main object's shape).
_THING_TAG_SUFFIXES = ("", "s", "art")


def _object_tag(tag: str, colors: frozenset[str], things: frozenset[str]) -> tuple[str | None, str] | None:
    """(colour or None, thing) where the hashtag names a thing: #bluecircle(s), #circleart."""
    body = tag.lstrip("#").lower()
    for color in sorted(colors, key=len, reverse=True):
        rest = _singular(body[len(color) :]) if body.startswith(color) else ""
        if rest in things:
            return color, rest
    for thing in sorted(things, key=len, reverse=True):
        if body.startswith(thing) and body[len(thing) :] in _THING_TAG_SUFFIXES:
            return None, thing
    return None


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _pairs(text: str, colors: frozenset[str]) -> list[tuple[str, str]]:
    """Every (colour, noun) the text names, in order, the noun singular."""
    words = [w.lower() for w in _WORD.findall(text)]
    out = []
    for i, word in enumerate(words):
        if word not in colors:
            continue
        j = i + 1
        while j < len(words) and (words[j] in colors or words[j] in _SKIP):
            j += 1
        if j < len(words) and words[j] not in _NOT_A_THING:
            out.append((word, _singular(words[j])))
    return out


def named_colors(text: str, colors: frozenset[str] = COLOR_WORDS) -> dict[str, list[str]]:
    """Each noun the text names with a colour directly before it, and those colours in the order
    the text names them."""
    out: dict[str, list[str]] = {}
    for color, thing in _pairs(text, colors):
        if color not in out.setdefault(thing, []):
            out[thing].append(color)
    return out


def _rename(text: str, old: tuple[str, str], new: tuple[str, str], count: int = 0) -> str:
    """``old colour old thing`` (any case, plural too) as the new pair, with a/an fitted to the
    new colour; every occurrence, or the first ``count``."""
    pattern = re.compile(
        rf"\b(?:(an?)\s+)?({re.escape(old[0])})((?:\s+(?:and|or|{'|'.join(map(re.escape, sorted(COLOR_WORDS)))}))*\s+)"
        rf"({re.escape(old[1])})(s?)\b",
        re.IGNORECASE,
    )

    def swap(m: re.Match) -> str:
        color = new[0].capitalize() if m.group(2)[0].isupper() else new[0]
        article = ""
        if m.group(1) is not None:
            article = "an " if new[0][0] in "aeiou" else "a "
            if m.group(1)[0].isupper():
                article = article.capitalize()
        return f"{article}{color}{m.group(3)}{new[1]}{m.group(5)}"

    return pattern.sub(swap, text, count=count)


def _main_object(caption: str, colors: frozenset[str], things: frozenset[str]) -> tuple[tuple[str, str] | None, bool]:
    """The caption's main object, and whether its words stand together: the first "colour thing"
    pair, else the first colour and the first thing apart ("totally purple: the star drop")."""
    pair = next((p for p in _pairs(caption, colors) if p[1] in things), None)
    if pair is not None:
        return pair, True
    words = [w.lower() for w in _WORD.findall(caption)]
    color = next((w for w in words if w in colors), None)
    thing = next((_singular(w) for w in words if _singular(w) in things), None)
    return ((color, thing) if color and thing else None), False


def _rename_apart(text: str, old: tuple[str, str], new: tuple[str, str]) -> str:
    """The first ``old`` colour word and the first ``old`` thing word, each renamed where it stands."""
    for before, after in zip(old, new):
        pattern = re.compile(rf"\b({re.escape(before)})(s?)\b", re.IGNORECASE)
        text = pattern.sub(lambda m, a=after: (a.capitalize() if m.group(1)[0].isupper() else a) + m.group(2), text, 1)
    return text


def _unique(tags: list[str]) -> list[str]:
    """Each tag once, whatever its case: a rename can make two tags one."""
    seen: set[str] = set()
    return [t for t in tags if not (t.lower() in seen or seen.add(t.lower()))]


def _retag(tags: list[str], old: tuple[str, str], new: tuple[str, str], still_named: set[str]) -> list[str]:
    """#blackcircle -> #bluesquare; a lone #black, or #circle(s) and #circleart, only when no
    other object in the answer is still called that."""
    out = []
    for tag in tags:
        body = tag.lstrip("#").lower()
        if body in (old[0] + old[1], old[0] + old[1] + "s"):
            tag = "#" + new[0] + new[1] + body[len(old[0] + old[1]) :]
        elif body == old[0] and old[0] not in still_named:
            tag = "#" + new[0]
        elif old[1] not in still_named and any(body == old[1] + end for end in _THING_TAG_SUFFIXES):
            tag = "#" + new[1] + body[len(old[1]) :]
        out.append(tag)
    return _unique(out)


def _name_as(caption, hashtags, alt_text, said, described, kept, colors, count, apart=False):
    """Caption and alt text with their naming (``said``, ``described``; None where a field names
    none) replaced by ``kept``, and the hashtags that carried a lost naming retagged. ``apart``: the
    caption names ``said`` in two places; ``count``: how many occurrences are renamed (0: all)."""
    if said and said != kept:
        caption = _rename_apart(caption, said, kept) if apart else _rename(caption, said, kept, count)
    if described and described != kept:
        alt_text = _rename(alt_text, described, kept, count)
    still = {w for pair in _pairs(caption + " . " + alt_text, colors) for w in pair}
    for lost in dict.fromkeys(p for p in (said, described) if p and p != kept):
        hashtags = _retag(hashtags, lost, kept, still)
    return caption, hashtags, alt_text


def _settle(caption, hashtags, alt_text, said, described, reading, colors, count, apart=False):
    """The caption's ``said`` and the alt text's ``described`` made one: the reading's, where it
    is one of them, else the alt text's."""
    kept = said if reading == said else described
    caption, hashtags, alt_text = _name_as(caption, hashtags, alt_text, said, described, kept, colors, count, apart)
    return caption, hashtags, alt_text, Disagreement(" ".join(said), " ".join(described), " ".join(kept))


def _overrule(caption, hashtags, alt_text, sure, colors, things):
    """The main object as the tower surely reads it, where caption and alt text (already agreeing)
    name it otherwise. ``sure``: (colour, thing), each None where the tower is not sure of it."""
    main_said, together = _main_object(caption, colors, things)
    main_described = next((p for p in _pairs(alt_text, colors) if p[1] in things), None)
    named = main_described or main_said
    if named is None:
        return caption, hashtags, alt_text, None
    read = (sure[0] or named[0], sure[1] or named[1])
    if read == named and main_said in (None, read):
        return caption, hashtags, alt_text, None
    caption, hashtags, alt_text = _name_as(
        caption, hashtags, alt_text, main_said, main_described, read, colors, 1, apart=not together
    )
    said = " ".join(main_said or named)
    return caption, hashtags, alt_text, Disagreement(said, " ".join(main_described or named), " ".join(read))


def _main_tags(
    hashtags: list[str], alt_text: str, colors: frozenset[str], things: frozenset[str]
) -> tuple[list[str], list[StrayTag]]:
    """A tag joining a colour to a thing that the alt text does not name renamed to the main
    object: #whitetriangle above "a yellow triangle" becomes #yellowtriangle, and above "a red
    star" (the heads overruled the decoder's triangle) #redstar. Only where the alt text names
    one thing of the list: a model of closed-list things whose other objects go by colour alone
    (the demo's generator 9 onwards), so the tag can only mean the main object."""
    described = [p for p in _pairs(alt_text, colors) if p[1] in things]
    if len(described) != 1:
        return hashtags, []
    main = described[0]
    out, strays = [], []
    for tag in hashtags:
        claim = _object_tag(tag, colors, things)
        if claim is not None and claim[0] and claim != main:
            plural = tag.lstrip("#").lower()[len(claim[0]) + len(claim[1]) :]  # "" or "s"
            renamed = "#" + main[0] + main[1] + plural
            strays.append(StrayTag(tag, renamed))
            tag = renamed
        out.append(tag)
    return _unique(out), strays


def reconcile(
    caption: str,
    hashtags: list[str],
    alt_text: str,
    reading: tuple[str, str] | None = None,
    extra_colors: frozenset[str] = frozenset(),
    things: frozenset[str] = frozenset(),
    sure: tuple[str | None, str | None] = (None, None),
) -> tuple[str, list[str], str, list[Disagreement | StrayTag]]:
    """Caption, hashtags and alt text made to name the same objects, and what changed.

    ``reading`` is the picture's main object as the vision tower reads it, (colour, thing); it
    settles a disagreement when it is one of the two namings. ``things``: the closed list of
    objects the model names, main object first (the demo model's shapes); with it, the first
    object each field names must be the same one. ``sure``: the parts of the reading the tower is
    sure of (scene_heads.SceneReading.sure_parts), None for the others; with ``things``, a sure
    part is the main object's even where caption and alt text agree on another."""
    colors = COLOR_WORDS | extra_colors
    settled: list[Disagreement | StrayTag] = []
    if things:
        main_said, together = _main_object(caption, colors, things)
        main_described = next((p for p in _pairs(alt_text, colors) if p[1] in things), None)
        if main_said and main_described and main_said != main_described:
            caption, hashtags, alt_text, d = _settle(
                caption, hashtags, alt_text, main_said, main_described, reading, colors, count=1, apart=not together
            )
            settled.append(d)
        if any(sure):
            caption, hashtags, alt_text, d = _overrule(caption, hashtags, alt_text, sure, colors, things)
            if d is not None:
                settled.append(d)
        hashtags, strays = _main_tags(hashtags, alt_text, colors, things)
        settled += strays
    in_caption, in_alt = named_colors(caption, colors), named_colors(alt_text, colors)
    for thing in sorted(in_caption.keys() & in_alt.keys()):
        said, described = in_caption[thing], in_alt[thing]
        if set(said) & set(described):
            continue  # one colour in common: different objects, or one object in two colours
        # The first naming of each: "a yellow shape" against "a green shape and a blue shape" is
        # the caption's one other object against the alt text's first, the green one.
        caption, hashtags, alt_text, d = _settle(
            caption, hashtags, alt_text, (said[0], thing), (described[0], thing), reading, colors, count=0
        )
        settled.append(d)
    return caption, hashtags, alt_text, settled


def objects_agree(
    caption: str,
    hashtags: list[str],
    alt_text: str,
    extra_colors: frozenset[str] = frozenset(),
    things: frozenset[str] = frozenset(),
) -> bool:
    """Whether caption and hashtags name only objects the alt text names: each "colour thing" of
    the caption is one of the alt text's, and so is each hashtag that joins a colour to a thing
    (#greensquare), a thing the answer names or one of ``things`` (reconcile's closed list). The
    alt text is the full description, so it may name more. Issue 15 §3's "the same objects", as
    evaluate-demo reports it (``reconcile`` settles the main object only)."""
    colors = COLOR_WORDS | extra_colors
    described = set(_pairs(alt_text, colors))
    said = _pairs(caption, colors)
    if not set(said) <= described:
        return False
    named = {thing for _, thing in described}  # the caption's things among them (checked above)
    for tag in hashtags:
        claim = _object_tag(tag, colors, things | named)
        if claim is None:
            continue
        color, thing = claim
        if (color, thing) not in described if color else (thing in things and thing not in named):
            return False
    return True
