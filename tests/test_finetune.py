"""training/finetune.py: the eval split and the LoRA wiring (no services)."""

from __future__ import annotations

import re

from training.datasets import CaptionRecord
from training.finetune import holdout_split, lora_target_pattern


def test_holdout_split_is_by_image_and_deterministic():
    recs = [
        CaptionRecord(image=f"/x/{i % 50}.png", caption=f"c{i}", hashtags=(), image_id=f"img{i % 50}")
        for i in range(200)
    ]  # 4 captions per image
    train, held = holdout_split(recs, 0.2, seed=1)
    assert len(train) + len(held) == 200 and 20 <= len(held) <= 60
    assert not {r.image_id for r in train} & {r.image_id for r in held}
    assert holdout_split(recs, 0.2, seed=1) == (train, held)
    assert holdout_split(recs, 0.0) == (recs, [])


def test_lora_targets_the_language_model_only(tiny_model_dir):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    pattern = re.compile(lora_target_pattern(["q_proj", "v_proj"]))
    hits = [n for n, _ in model.named_modules() if pattern.match(n)]
    assert hits and all("language_model" in n for n in hits)
    assert any("vision_tower" in n and n.endswith("q_proj") for n, _ in model.named_modules())
