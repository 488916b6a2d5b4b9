"""The demo model measured on held-out scenes drawn by independent code (training/heldout_scenes.py).

For each scene the model captions it once, greedily, in one tone and audience. We check that the
main object's colour and shape lead the caption and the alt text, that every background the
answer names is the true one (or none is named), and that different pictures get different
captions. Per-colour and per-shape tables show where a miss comes from.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field

from snap2caption_service.core import alt_text
from snap2caption_service.core.answer_agreement import objects_agree
from training.evaluate_demo import first_color_and_shape, first_pair
from training.heldout_scenes import BACKGROUND_PALETTE, COLOR_NAMES, SHAPE_NAMES, HeldOutScene
from training.synthetic import BACKGROUND_NAMES

# fields_agree: issue 15 §3, caption and alt text name the same main object; alt_text_lint_pass: issue 16.
THRESHOLDS = {
    "both_correct": 0.95,
    "background_ok": 1.0,
    "fields_agree": 1.0,
    "objects_agree": 1.0,
    "alt_text_lint_pass": 1.0,
}
DISTINCT_PICTURES = 20  # the first 20 pictures, in one tone, must get 20 different captions
# Misses listed per check: a rare miss of a 100% bar (one background among 300) is listed even
# when the first few misses are all colour-or-shape ones.
MISSES_PER_CHECK = 5

# Every colour word an answer could put before "background"; grey is read as gray.
_COLOR_WORDS = set(COLOR_NAMES) | set(BACKGROUND_NAMES) | set(BACKGROUND_PALETTE) | {"grey"}
_KIND_WORDS = {"photo": "photo", "photograph": "photo", "photographic": "photo", "textured": "textured"}
_PLAIN_WORDS = {"plain", "solid"}

# Up to two words right before "background" ("a plain gray background", "a photo background"), and
# a gradient's ends after it; a comma or full stop ends the run, so "star, white background" reads
# only "white".
_BACKGROUND = re.compile(r"((?:\b[a-z]+ +){0,2})backgrounds?\b(?: +from +([a-z]+) +to +([a-z]+)\b)?")


def _norm(word: str) -> str:
    return "gray" if word == "grey" else word


def background_claims(text: str) -> list[tuple[str, str]]:
    """What a text says about the background, as (kind, value) pairs: ("color", "gray"),
    ("photo", ""), ("textured", ""), ("plain", "") or ("gradient", "from-to")."""
    claims: list[tuple[str, str]] = []
    for m in _BACKGROUND.finditer(text.lower()):
        for word in m.group(1).split():
            if word == "gradient":
                ends = f"{_norm(m.group(2))}-{_norm(m.group(3))}" if m.group(2) else ""
                claims.append(("gradient", ends))
            elif word in _COLOR_WORDS:
                claims.append(("color", _norm(word)))
            elif word in _KIND_WORDS:
                claims.append((_KIND_WORDS[word], ""))
            elif word in _PLAIN_WORDS:
                claims.append(("plain", ""))
    return claims


def background_ok(texts: list[str], truth: str) -> bool:
    """True when nothing in the texts names a background other than the true one. A plain colour
    must match (gray and grey alike); a photo or a texture must be called that, never a plain
    colour or a gradient; a plain background is never a gradient unless both ends are its colour."""
    truth = _norm(truth)
    for text in texts:
        for kind, value in background_claims(text):
            if truth in ("photo", "textured"):
                ok = kind == truth
            elif kind == "gradient":
                ok = value == f"{truth}-{truth}"
            else:
                ok = kind == "plain" or (kind == "color" and value == truth)
            if not ok:
                return False
    return True


@dataclass
class Miss:
    """One scene the model got wrong, for reading the report."""

    index: int
    truth: str
    caption: str
    alt_text: str
    failed: str = ""  # the checks it fails: "main object", "background", "every object"


@dataclass
class HeldOutReport:
    set_name: str
    scenes: int
    caption_correct: float
    alt_text_correct: float
    both_correct: float
    background_ok: float
    distinct_captions: int  # among the first DISTINCT_PICTURES pictures
    distinct_of: int
    per_color: dict[str, tuple[int, float]]  # main colour -> (scenes, both right)
    per_shape: dict[str, tuple[int, float]]
    per_background: dict[str, tuple[int, float]]  # true background -> (scenes, named right or not named)
    tone: str
    seconds: float
    model_version: str
    misses: list[Miss] = field(default_factory=list)  # the first few of each check, for a human to look at
    # Caption and alt text name the same colour and shape first (right or wrong), and how many
    # answers the service had to correct to get there (core/answer_agreement.py).
    fields_agree: float = 0.0
    corrected: float = 0.0
    # Caption and hashtags name no object the alt text does not, second objects included
    # (answer_agreement.objects_agree): issue 15 §3's "always name the same objects".
    objects_agree: float = 0.0
    # Honesty, not a pass mark: how many answers the service would flag (low confidence, or
    # corrected), and how many are wrong about colour or shape and yet not flagged (confidently wrong).
    flagged: float = 0.0
    confidently_wrong: float = 0.0
    alt_text_lint_pass: float = 0.0  # share of alt texts the accessibility lint passes (core/alt_text.py)

    def passed(self) -> bool:
        return (
            self.both_correct >= THRESHOLDS["both_correct"]
            and self.background_ok >= THRESHOLDS["background_ok"]
            and self.fields_agree >= THRESHOLDS["fields_agree"]
            and self.objects_agree >= THRESHOLDS["objects_agree"]
            and self.distinct_captions >= DISTINCT_PICTURES
            and self.alt_text_lint_pass >= THRESHOLDS["alt_text_lint_pass"]
        )

    def table(self) -> str:
        rows = [
            ("scenes", str(self.scenes), ""),
            ("main colour+shape in caption", f"{self.caption_correct:.1%}", ""),
            ("main colour+shape in alt text", f"{self.alt_text_correct:.1%}", ""),
            ("both (quality bar)", f"{self.both_correct:.1%}", f">= {THRESHOLDS['both_correct']:.0%}"),
            (
                "background right or not named",
                f"{self.background_ok:.1%}",
                f">= {THRESHOLDS['background_ok']:.0%}",
            ),
            (
                "caption and alt text agree",
                f"{self.fields_agree:.1%}",
                f">= {THRESHOLDS['fields_agree']:.0%}",
            ),
            ("... after correcting", f"{self.corrected:.1%}", ""),
            (
                "every object: caption, tags, alt",
                f"{self.objects_agree:.1%}",
                f">= {THRESHOLDS['objects_agree']:.0%}",
            ),
            (
                f"distinct captions ({self.tone})",
                f"{self.distinct_captions}/{self.distinct_of}",
                f">= {DISTINCT_PICTURES}",
            ),
            (
                "alt text passes the lint",
                f"{self.alt_text_lint_pass:.1%}",
                f">= {THRESHOLDS['alt_text_lint_pass']:.0%}",
            ),
            ("flagged low confidence", f"{self.flagged:.1%}", ""),
            ("wrong and not flagged", f"{self.confidently_wrong:.1%}", ""),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"held-out set {self.set_name}: model {self.model_version}, {self.seconds:.0f}s"]
        lines += [f"{name:<{width}}  {value:>7}  {bar}" for name, value, bar in rows]
        for title, by in (
            ("main colour", self.per_color),
            ("main shape", self.per_shape),
            ("background", self.per_background),
        ):
            ok_name = "bg ok" if title == "background" else "both"
            lines.append(f"  {title:<12} {'n':>4}  {ok_name:>6}")
            lines += [f"  {key:<12} {n:>4}  {rate:>6.1%}" for key, (n, rate) in by.items()]
        for miss in self.misses:
            lines.append(f"  miss #{miss.index} ({miss.truth}; {miss.failed}): {miss.caption!r} | {miss.alt_text!r}")
        lines.append("PASS" if self.passed() else "FAIL")
        return "\n".join(lines)


def _rates(keys: list[str], oks: list[bool], order: tuple[str, ...]) -> dict[str, tuple[int, float]]:
    n, right = Counter(keys), Counter(k for k, ok in zip(keys, oks) if ok)
    return {k: (n[k], right[k] / n[k]) for k in order if n[k]}


def evaluate_set(
    captioner,
    scenes: list[HeldOutScene],
    tone: str = "casual",
    audience: str = "personal",
    batch_size: int = 50,
    min_confidence: float = 0.35,
) -> HeldOutReport:
    from snap2caption_service.core.captioner import CaptionJob

    t0 = time.perf_counter()
    answers = []
    for start in range(0, len(scenes), batch_size):
        jobs = [CaptionJob(s.image, tone, audience, 10, 1) for s in scenes[start : start + batch_size]]
        answers += [cands[0] for cands in captioner.caption_batch(jobs)]

    labels = captioner.scene_heads.labels if getattr(captioner, "scene_heads", None) is not None else {}
    palette, things = frozenset(labels.get("color", ())), frozenset(labels.get("shape", ()))
    cap_ok, alt_ok, bg_ok, every, misses = [], [], [], [], []
    listed = Counter()
    for i, (scene, a) in enumerate(zip(scenes, answers)):
        main = (scene.color, scene.shape)
        cap_ok.append(first_color_and_shape(a.caption) == main)
        alt_ok.append(first_pair(a.alt_text) == main)
        bg_ok.append(background_ok([a.caption, a.alt_text], scene.background))
        every.append(objects_agree(a.caption, a.hashtags, a.alt_text, palette, things))
        failed = [
            check
            for check, ok in (
                ("main object", cap_ok[-1] and alt_ok[-1]),
                ("background", bg_ok[-1]),
                ("every object", every[-1]),
            )
            if not ok
        ]
        if any(listed[check] < MISSES_PER_CHECK for check in failed):
            listed.update(failed)
            truth = f"{scene.color} {scene.shape} on {scene.background}"
            misses.append(Miss(i, truth, a.caption, a.alt_text, ", ".join(failed)))
    both = [c and a for c, a in zip(cap_ok, alt_ok)]
    agree = [first_color_and_shape(a.caption) == first_pair(a.alt_text) for a in answers]
    # As the service flags (serving/pipeline.py build_result): unsure, or corrected.
    flagged = [(a.confidence is not None and a.confidence < min_confidence) or bool(a.corrections) for a in answers]
    first = [a.caption.strip().lower() for a in answers[:DISTINCT_PICTURES]]
    n = float(len(scenes))
    backgrounds = tuple(dict.fromkeys(sorted(s.background for s in scenes)))
    return HeldOutReport(
        set_name="+".join(dict.fromkeys(s.set_name for s in scenes)),
        scenes=len(scenes),
        caption_correct=sum(cap_ok) / n,
        alt_text_correct=sum(alt_ok) / n,
        both_correct=sum(both) / n,
        background_ok=sum(bg_ok) / n,
        distinct_captions=len(set(first)),
        distinct_of=len(first),
        per_color=_rates([s.color for s in scenes], both, COLOR_NAMES),
        per_shape=_rates([s.shape for s in scenes], both, SHAPE_NAMES),
        per_background=_rates([s.background for s in scenes], bg_ok, backgrounds),
        tone=tone,
        seconds=time.perf_counter() - t0,
        model_version=captioner.version,
        misses=misses,
        fields_agree=sum(agree) / n,
        corrected=sum(bool(a.corrections) for a in answers) / n,
        objects_agree=sum(every) / n,
        flagged=sum(flagged) / n,
        confidently_wrong=sum(not ok and not f for ok, f in zip(both, flagged)) / n,
        alt_text_lint_pass=alt_text.pass_rate(a.alt_text for a in answers),
    )
