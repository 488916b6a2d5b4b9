"""The demo model's quality bar, measured on held-out synthetic scenes.

For each scene (seed different from training) the served model captions it greedily, and
we check that the main object's colour and shape are named in the caption and in the alt
text, that the hashtags carry both, and that another tone changes the caption's wording.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass

from snap2caption_service.core import alt_text
from snap2caption_service.core.hashtags import is_generic
from training import synthetic

THRESHOLDS = {
    "caption_and_alt_correct": 0.95,
    "hashtags_have_color_and_shape": 0.95,
    "tone_changes_wording": 0.90,
    # Issue 16: no generic filler tag, and every alt text passes the accessibility lint.
    "no_generic_hashtags": 1.0,
    "alt_text_lint_pass": 1.0,
}

_PAIR = re.compile(
    r"\b(" + "|".join(synthetic.COLORS) + r")\s+(" + "|".join(synthetic.SHAPES) + r")s?\b", re.IGNORECASE
)


_COLOR = re.compile(r"\b(" + "|".join(synthetic.COLORS) + r")\b", re.IGNORECASE)
_SHAPE = re.compile(r"\b(" + "|".join(synthetic.SHAPES) + r")s?\b", re.IGNORECASE)


def first_pair(text: str) -> tuple[str, str] | None:
    """The first 'colour shape' phrase in a text: in alt text, the main (first-listed) object."""
    m = _PAIR.search(text)
    return (m.group(1).lower(), m.group(2).lower()) if m else None


def first_color_and_shape(text: str) -> tuple[str, str] | None:
    """The first colour word and the first shape word of a caption, adjacent or not: a caption
    may say "totally purple: the star drop is here", which names both correctly."""
    c, s = _COLOR.search(text), _SHAPE.search(text)
    return (c.group(1).lower(), s.group(1).lower()) if c and s else None


@dataclass
class QualityReport:
    scenes: int
    caption_correct: float
    alt_text_correct: float
    caption_and_alt_correct: float
    hashtags_have_color_and_shape: float
    tone_changes_wording: float
    no_generic_hashtags: float
    alt_text_lint_pass: float
    seconds: float
    model_version: str

    def passed(self) -> bool:
        return all(getattr(self, k) >= v for k, v in THRESHOLDS.items())

    def table(self) -> str:
        rows = [
            ("scenes", str(self.scenes), ""),
            ("main colour+shape in caption", f"{self.caption_correct:.1%}", ""),
            ("main colour+shape in alt text", f"{self.alt_text_correct:.1%}", ""),
            (
                "both (quality bar)",
                f"{self.caption_and_alt_correct:.1%}",
                f">= {THRESHOLDS['caption_and_alt_correct']:.0%}",
            ),
            (
                "hashtags carry colour and shape",
                f"{self.hashtags_have_color_and_shape:.1%}",
                f">= {THRESHOLDS['hashtags_have_color_and_shape']:.0%}",
            ),
            (
                "other tone changes caption",
                f"{self.tone_changes_wording:.1%}",
                f">= {THRESHOLDS['tone_changes_wording']:.0%}",
            ),
            ("no generic hashtag", f"{self.no_generic_hashtags:.1%}", f">= {THRESHOLDS['no_generic_hashtags']:.0%}"),
            (
                "alt text passes the lint",
                f"{self.alt_text_lint_pass:.1%}",
                f">= {THRESHOLDS['alt_text_lint_pass']:.0%}",
            ),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"model {self.model_version}, {self.seconds:.0f}s"]
        lines += [f"{name:<{width}}  {value:>7}  {bar}" for name, value, bar in rows]
        lines.append("PASS" if self.passed() else "FAIL")
        return "\n".join(lines)


def evaluate(captioner, num_scenes: int = 300, seed: int = 9001, batch_size: int = 50) -> QualityReport:
    from snap2caption_service.core.captioner import CaptionJob

    t0 = time.perf_counter()
    examples = synthetic.make_examples(num_scenes, seed)
    images = [synthetic.render_scene(e.scene) for e in examples]
    other_tone = {t: synthetic.TONES[(i + 1) % len(synthetic.TONES)] for i, t in enumerate(synthetic.TONES)}

    def run(tones):
        out = []
        for start in range(0, num_scenes, batch_size):
            jobs = [
                CaptionJob(images[i], tones[i], examples[i].audience, 10, 1)
                for i in range(start, min(num_scenes, start + batch_size))
            ]
            out += [c[0] for c in captioner.caption_batch(jobs)]
        return out

    first = run([e.tone for e in examples])
    second = run([other_tone[e.tone] for e in examples])
    cap_ok = alt_ok = both = tags_ok = changed = specific = 0
    for ex, a, b in zip(examples, first, second):
        main = (ex.scene.main.color, ex.scene.main.shape)
        c_ok, a_ok = first_color_and_shape(a.caption) == main, first_pair(a.alt_text) == main
        cap_ok += c_ok
        alt_ok += a_ok
        both += c_ok and a_ok
        tags_ok += f"#{main[0]}" in a.hashtags and f"#{main[1]}" in a.hashtags
        changed += a.caption.strip().lower() != b.caption.strip().lower()
        specific += not any(is_generic(t) for t in a.hashtags)
    n = float(num_scenes)
    return QualityReport(
        num_scenes,
        cap_ok / n,
        alt_ok / n,
        both / n,
        tags_ok / n,
        changed / n,
        specific / n,
        alt_text.pass_rate(a.alt_text for a in first),
        time.perf_counter() - t0,
        captioner.version,
    )


def color_shape_accuracy(captioner, num_scenes: int = 200, seed: int = 9001, batch_size: int = 50) -> dict:
    """The guard metrics a fine-tune of the demo model must not regress: each scene captioned once,
    in its own tone (cheaper than ``evaluate``, which captions twice to test tone changes)."""
    from snap2caption_service.core.captioner import CaptionJob

    examples = synthetic.make_examples(num_scenes, seed)
    ok = tags_ok = 0
    for start in range(0, num_scenes, batch_size):
        part = examples[start : start + batch_size]
        jobs = [CaptionJob(synthetic.render_scene(e.scene), e.tone, e.audience, 10, 1) for e in part]
        for ex, cands in zip(part, captioner.caption_batch(jobs)):
            best, main = cands[0], (ex.scene.main.color, ex.scene.main.shape)
            ok += first_color_and_shape(best.caption) == main and first_pair(best.alt_text) == main
            tags_ok += f"#{main[0]}" in best.hashtags and f"#{main[1]}" in best.hashtags
    return {"color_shape_accuracy": ok / num_scenes, "hashtags_color_shape": tags_ok / num_scenes}


def first_impression(captioner, min_confidence: float) -> list[dict]:
    """Each real photograph (training/heldout_scenes.real_photos) captioned once: its confidence
    and whether the service would flag the answer (contracts.CaptionResult.low_confidence)."""
    from snap2caption_service.core.captioner import CaptionJob
    from training.heldout_scenes import real_photos

    photos = real_photos()
    answers = captioner.caption_batch([CaptionJob(img, num_hashtags=5) for img in photos.values()])
    out = []
    for name, cands in zip(photos, answers):
        confidence = cands[0].confidence
        out.append(
            {
                "photo": name,
                "confidence": confidence,
                "flagged": confidence is not None and confidence < min_confidence,
                "caption": cands[0].caption,
            }
        )
    return out


def main(
    num_scenes: int = 300,
    seed: int = 9001,
    batch_size: int = 50,
    json_out: str | None = None,
    heldout_scenes: int = 300,
) -> int:
    """The in-distribution quality bar, then each held-out set drawn by independent code
    (training/heldout_scenes.py), each with its own table; 0 only when every one passes."""
    from snap2caption_service.core.model_loading import load_captioner
    from snap2caption_service.core.settings import get_settings
    from training.build_demo import ensure_demo_model
    from training.evaluate_heldout import evaluate_set
    from training.heldout_scenes import HELDOUT_SETS, heldout_set

    captioner = load_captioner(get_settings(), ensure_demo_model)
    report = evaluate(captioner, num_scenes, seed, batch_size)
    print("== in distribution: scenes drawn by the training generator (training/synthetic.py), unseen seed")
    print(report.table())
    passed = report.passed()
    figures: dict = {**asdict(report), "thresholds": THRESHOLDS, "passed": report.passed(), "heldout": {}}
    for name in HELDOUT_SETS if heldout_scenes else ():
        held = evaluate_set(
            captioner,
            heldout_set(name, heldout_scenes),
            batch_size=batch_size,
            min_confidence=get_settings().min_confidence,
        )
        print(f"\n== held out: {name!r}, drawn by independent code (training/heldout_scenes.py)")
        print(held.table())
        passed = passed and held.passed()
        figures["heldout"][name] = {**asdict(held), "passed": held.passed()}
    if heldout_scenes:
        flagged = first_impression(captioner, get_settings().min_confidence)
        print("\n== real photographs (scikit-learn's samples): not coloured shapes, so each must be flagged")
        for row in flagged:
            print(
                f"{row['photo']:<8} confidence {row['confidence']:.2f}  {'flagged' if row['flagged'] else 'NOT FLAGGED'}"
            )
        passed = passed and all(row["flagged"] for row in flagged)
        figures["real_photos"] = flagged
    if json_out:
        with open(json_out, "w") as f:
            json.dump({**figures, "all_passed": passed}, f, indent=2, default=str)
    return 0 if passed else 1
