"""The prompt the model sees and the parsing of what it answers.

Training (``training/``) and serving build prompts with the same function, so a fine-tuned
adapter always sees at inference exactly the text it was trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from snap2caption_service.core.hashtags import finalize_hashtags

IMAGE_TOKEN = "<image>"
# The answer's layout, one line each: what models are trained to write and parse_output reads.
LAYOUT_LABELS = ("Caption:", "Hashtags:", "Alt text:")

# LLaVA-1.5 conversation format; the image placeholder is expanded by the processor.
PROMPT_TEMPLATE = (
    "USER: " + IMAGE_TOKEN + "\n"
    "Write an Instagram caption for this photo in a {tone} tone for a {audience} audience, "
    "then hashtags and alt text.\nASSISTANT:"
)


def clean_tone(tone: str) -> str:
    """Tone is free text from a creator: keep it one line so it cannot restructure the prompt."""
    return " ".join(tone.replace(IMAGE_TOKEN, " ").split()).strip() or "casual"


def build_prompt(tone: str, audience: str) -> str:
    return PROMPT_TEMPLATE.format(tone=clean_tone(tone), audience=audience)


@dataclass(frozen=True)
class ParsedOutput:
    caption: str
    hashtags: list[str]
    alt_text: str


_SECTION = re.compile(r"^\s*(caption|hashtags|alt[ _-]?text)\s*:\s*", re.IGNORECASE | re.MULTILINE)


def _sections(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    marks = list(_SECTION.finditer(text))
    for i, m in enumerate(marks):
        key = m.group(1).lower().replace(" ", "").replace("_", "").replace("-", "")
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        found.setdefault(key, text[m.end() : end].strip())
    return found


def _strip_prompt_echo(text: str) -> str:
    # Some checkpoints repeat the conversation; everything up to the last ASSISTANT: is prompt.
    if "ASSISTANT:" in text:
        text = text.rsplit("ASSISTANT:", 1)[1]
    return text.replace(IMAGE_TOKEN, "").strip()


def parse_output(text: str, num_hashtags: int) -> ParsedOutput:
    """Split a generation into caption, hashtags and alt text.

    A model that ignores the format still yields a usable result: the first sentence-ish line
    becomes the caption, and hashtags are found anywhere in the text.
    """
    text = _strip_prompt_echo(text)
    sec = _sections(text)
    caption = sec.get("caption", "")
    alt = sec.get("alttext", "")
    raw_tags = sec.get("hashtags", "")
    if not caption:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not _SECTION.match(ln)), "")
        caption = re.sub(r"#\w+", "", first).strip()
    # Hashtags written inside the caption belong in the hashtag list, not twice.
    inline = re.findall(r"#\w+", caption)
    caption = " ".join(re.sub(r"#\w+", "", caption).split())
    if not raw_tags:
        raw_tags = " ".join(re.findall(r"#\w+", text))
    caption = caption.splitlines()[0].strip() if caption else caption
    alt = " ".join(alt.split())
    tags = finalize_hashtags(raw_tags.split() + inline, num_hashtags, fallback_text=f"{alt} {caption}")
    return ParsedOutput(caption=caption, hashtags=tags, alt_text=alt)


def format_target(caption: str, hashtags: list[str], alt_text: str) -> str:
    """The assistant's answer a model is trained on; ``parse_output`` reads it back."""
    lines = (caption, " ".join(hashtags), alt_text)
    return "\n".join(f"{label} {value}" for label, value in zip(LAYOUT_LABELS, lines, strict=True))


def split_target(target: str) -> tuple[str, tuple[str, ...], str]:
    """The exact inverse of ``format_target``, for training data we wrote ourselves."""
    caption, tags, alt = (
        line.removeprefix(f"{label} ") for label, line in zip(LAYOUT_LABELS, target.split("\n"), strict=True)
    )
    return caption, tuple(tags.split()), alt
