"""The prompt the model sees, in its own chat format, and the parsing of what it answers.

Training (``training/``) and serving build prompts with the same ChatFormat, so a fine-tuned
adapter always sees at inference exactly the text it was trained on.
"""

from __future__ import annotations

import re

from snap2caption_service.core.alt_text import ALT_TEXT_MAX_CHARS
from snap2caption_service.core.alt_text import fix as fix_alt_text
from snap2caption_service.core.contracts import ANSWER_LABELS, ModelAnswer
from snap2caption_service.core.hashtags import finalize_hashtags
from snap2caption_service.core.platforms import DEFAULT_PLATFORM, PLATFORMS

IMAGE_TOKEN = "<image>"  # the image placeholder of LLaVA checkpoints (and the demo model)

# What the model is asked, inside its own conversation format (ChatFormat). The platform and
# the hashtag count are in the prompt because they change what a good answer is: a model that is
# only ever asked for "hashtags" learns one count, and cutting its list afterwards leaves the
# tags it would have chosen for that count unwritten. "Up to": fewer specific tags beat filler.
INSTRUCTION = (
    "Write {platform} caption for this photo in a {tone} tone for a {audience} audience, "
    "then up to {num_hashtags} hashtags and alt text, one line each."
)
DEFAULT_TONE = "casual"
DEFAULT_NUM_HASHTAGS = PLATFORMS[DEFAULT_PLATFORM].recommended_hashtags


def platform_words(platform: str) -> str:
    """How the prompt names a platform, with its article: "an Instagram", "a TikTok", "an X",
    and "a social media" for the generic profile."""
    profile = PLATFORMS.get(platform)
    name = "social media" if profile is None or platform == "generic" else profile.label
    return ("an " if name[0] in "AEIOX" else "a ") + name


def instruction(
    tone: str, audience: str, num_hashtags: int = DEFAULT_NUM_HASHTAGS, platform: str = DEFAULT_PLATFORM
) -> str:
    return INSTRUCTION.format(
        platform=platform_words(platform), tone=tone, audience=audience, num_hashtags=num_hashtags
    )


def conversation(text: str, answer: str | None = None) -> list[dict]:
    """One user turn (the photo, then the text), and the assistant's answer when training."""
    turns: list[dict] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


class MissingChatTemplate(ValueError):
    """A checkpoint whose processor has no chat template: its conversation format is unknown."""


_SENTINEL = "\x00"


class ChatFormat:
    """A checkpoint's own conversation format: its processor's chat template.

    Serving (core/captioner.py) and training (training/loop.py) both build prompts here, so a
    fine-tuned adapter sees at inference exactly what it was trained on, in the format its base
    model was instruction-tuned with (``USER: ... ASSISTANT:``, ``[INST] ... [/INST]``, ChatML).
    """

    def __init__(self, processor):
        if not getattr(processor, "chat_template", None):
            raise MissingChatTemplate(
                "the checkpoint's processor has no chat template, so its conversation format is unknown; "
                "add one (processor.chat_template, saved as chat_template.jinja by save_pretrained)"
            )
        self.processor = processor
        self.markers = self._turn_markers()

    def _render(self, turns: list[dict], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(turns, add_generation_prompt=generation_prompt, tokenize=False)

    def _turn_markers(self) -> list[str]:
        """Every piece of template text that opens or closes a turn (``USER:``, ``[/INST]``,
        ``<|im_end|>``, the image placeholder) and every special token, longest first."""
        rendered = self._render(conversation(_SENTINEL, _SENTINEL), False) + self._render(conversation(_SENTINEL), True)
        pieces = {p for p in rendered.replace(_SENTINEL, " ").split() if not p.isalnum()}
        tokenizer = self.processor.tokenizer
        pieces |= {t for t in tokenizer.all_special_tokens if t}
        pieces |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.content.strip()}
        return sorted(pieces, key=len, reverse=True)

    def clean_tone(self, tone: str) -> str:
        """Tone is free creator text: it may not open or close a turn, add an image or a line.

        Markers are removed until none is left (removing one could join two halves of another),
        case-insensitively, with any spacing before a trailing colon (``user :``).
        """
        text = " ".join(tone.split())
        patterns = [
            re.compile(re.escape(m[:-1]) + r"\s*:" if m.endswith(":") and len(m) > 1 else re.escape(m), re.IGNORECASE)
            for m in self.markers
        ]
        while True:
            cleaned = text
            for pattern in patterns:
                cleaned = pattern.sub(" ", cleaned)
            cleaned = " ".join(cleaned.split())
            if cleaned == text:
                return cleaned or DEFAULT_TONE
            text = cleaned

    def prompt(
        self,
        tone: str,
        audience: str,
        num_hashtags: int = DEFAULT_NUM_HASHTAGS,
        platform: str = DEFAULT_PLATFORM,
    ) -> str:
        """The text the model is given, up to where its answer starts."""
        return self._render(conversation(instruction(self.clean_tone(tone), audience, num_hashtags, platform)), True)

    def example(
        self,
        tone: str,
        audience: str,
        target: str,
        num_hashtags: int | None = None,
        platform: str = DEFAULT_PLATFORM,
    ) -> tuple[str, str]:
        """(prompt, answer) for training: the prompt exactly as ``prompt`` builds it, and what
        follows it in the conversation whose answer is ``target``, with the template's own
        spacing and end-of-turn text (the labels a model learns). ``num_hashtags`` is the count
        the prompt asked for (default: as many as the target has)."""
        if num_hashtags is None:
            num_hashtags = max(1, len(split_target(target)[1])) if target.count("\n") == 2 else DEFAULT_NUM_HASHTAGS
        text = instruction(self.clean_tone(tone), audience, num_hashtags, platform)
        prompt = self._render(conversation(text), True)
        full = self._render(conversation(text, target), False)
        if full.startswith(prompt):
            return prompt, full[len(prompt) :].rstrip()
        # A template whose answered conversation does not extend its generation prompt (OneVision's
        # opens an assistant turn with "assistant \n" but prompts with "assistant\n"): the answer
        # follows the prompt directly after a line break, after one space otherwise (LLaVA-1.5).
        return prompt, (target if prompt[-1:].isspace() else " " + target)


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
    """Some checkpoints repeat the conversation before answering: whatever comes before the
    first label, up to its last ``ASSISTANT:``, is prompt. Only before it: an answer's own
    text (a caption saying "ASSISTANT:") is the answer's."""
    first = _SECTION.search(text)
    head, rest = (text[: first.start()], text[first.start() :]) if first else (text, "")
    if "ASSISTANT:" in head:
        head = head.rsplit("ASSISTANT:", 1)[1]
    return (head.replace(IMAGE_TOKEN, "") + rest).strip()


def parse_output(text: str, num_hashtags: int, alt_text_max_chars: int = ALT_TEXT_MAX_CHARS) -> ModelAnswer:
    """Split a generation into caption, hashtags and alt text.

    A model that ignores the format still yields a usable result: the first sentence-ish line
    becomes the caption, and hashtags are found anywhere in the text. The alt text gets every
    safe accessibility fix, within ``alt_text_max_chars`` (core/alt_text.py).
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
    # Short of tags, words of what the alt text describes fill up (hashtags.top_up).
    tags = finalize_hashtags(raw_tags.split() + inline, num_hashtags, caption, alt)
    # Fixed after the tags are topped up from it: a hashtag the model wrote there still counts.
    return ModelAnswer(caption=caption, hashtags=tags, alt_text=fix_alt_text(alt, alt_text_max_chars))


def format_target(caption: str, hashtags: list[str], alt_text: str) -> str:
    """The assistant's answer a model is trained on; ``parse_output`` reads it back."""
    lines = (caption, " ".join(hashtags), alt_text)
    return "\n".join(f"{label} {value}" for label, value in zip(ANSWER_LABELS, lines, strict=True))


def split_target(target: str) -> tuple[str, tuple[str, ...], str]:
    """The exact inverse of ``format_target``, for training data we wrote ourselves."""
    caption, tags, alt = (
        line.removeprefix(f"{label} ") for label, line in zip(ANSWER_LABELS, target.split("\n"), strict=True)
    )
    return caption, tuple(tags.split()), alt
