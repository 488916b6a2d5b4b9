"""The tiny random checkpoints of each LLaVA family load, prompt and generate like the Hub ones."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from checkpoint_support import checkpoint_dir, family_checkpoint  # noqa: F401  (the fixture, for this module)
from training.checkpoint_families import (
    FAMILIES,
    META_FILE,
    build_random,
    ensure_random_checkpoint,
    model_config,
    processor_for,
    recipe_key,
)

MODEL_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}

# The prompts the llava-hf checkpoints' chat templates render (see checkpoint_families.py).
PROMPT = {
    "llava": "USER: <image>\nhi ASSISTANT:",
    "llava_next": "[INST] <image>\nhi [/INST]",
    "llava_onevision": "<|im_start|>user <image>\nhi<|im_end|><|im_start|>assistant\n",
}
WITH_ANSWER = {
    "llava": "USER: <image>\nhi ASSISTANT: A red star. ",
    "llava_next": "[INST] <image>\nhi [/INST] A red star.</s> ",
    "llava_onevision": "<|im_start|>user <image>\nhi<|im_end|><|im_start|>assistant \nA red star.<|im_end|>",
}

# Published sizes: the Hub model pages of llava-1.5-7b-hf, llava-v1.6-mistral-7b-hf and
# llava-onevision-qwen2-7b-ov-hf (7.06B, 7.57B, 8.03B parameters).
PUBLISHED_PARAMS = {"llava": 7.06e9, "llava_next": 7.57e9, "llava_onevision": 8.03e9}


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def images():
    from PIL import Image

    # Tall, wide and square: the anyres families tile each differently.
    return [
        Image.new("RGB", (40, 90), (220, 30, 30)),
        Image.new("RGB", (120, 60), (30, 160, 50)),
        Image.new("RGB", (64, 64), (30, 70, 220)),
    ]


@dataclass
class Loaded:
    family: str
    folder: Path
    model: object
    info: dict
    processor: object


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request) -> Loaded:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = checkpoint_dir(request.param)
    model, info = AutoModelForImageTextToText.from_pretrained(folder, use_safetensors=True, output_loading_info=True)
    return Loaded(request.param, folder, model.eval(), info, AutoProcessor.from_pretrained(folder))


def test_saved_like_a_hub_checkpoint(family_checkpoint):
    config = json.loads((family_checkpoint / "config.json").read_text())
    family = config["model_type"]
    assert family in FAMILIES
    assert family_checkpoint.name == f"{family}-{recipe_key(family)}"
    names = {p.name for p in family_checkpoint.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "processor_config.json", META_FILE} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)


def test_loads_with_every_weight(loaded):
    assert type(loaded.model).__name__ == MODEL_CLASSES[loaded.family]
    assert loaded.model.config.model_type == loaded.family
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not loaded.info.get(kind), (kind, loaded.info[kind])


def test_chat_template_renders_the_documented_format(loaded):
    render = loaded.processor.apply_chat_template
    assert render(user_turn("hi"), add_generation_prompt=True, tokenize=False) == PROMPT[loaded.family]
    answer = [{"role": "assistant", "content": [{"type": "text", "text": "A red star."}]}]
    assert render(user_turn("hi") + answer, tokenize=False) == WITH_ANSWER[loaded.family]


def test_special_tokens_match_the_config(loaded):
    proc, cfg, gen = loaded.processor, loaded.model.config, loaded.model.generation_config
    tok = proc.tokenizer
    assert tok.padding_side == "left"
    assert proc.image_token_id == tok.convert_tokens_to_ids("<image>") == cfg.image_token_index
    assert len(tok) == cfg.text_config.vocab_size
    assert (gen.eos_token_id, gen.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    ids = tok("hi")["input_ids"]
    if loaded.family == "llava_onevision":  # Qwen2: ChatML end-of-turn is eos, no bos prepended
        assert tok.eos_token == "<|im_end|>" and tok.bos_token is None
        assert cfg.video_token_index == tok.convert_tokens_to_ids("<video>")
        assert tok.bos_token_id not in ids
    else:  # Llama / Mistral: <s> prepended
        assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")
        assert ids[0] == tok.bos_token_id == gen.bos_token_id


def test_batched_generation_with_mixed_aspect_ratios(loaded):
    import torch

    proc = loaded.processor
    prompts = [
        proc.apply_chat_template(user_turn(t), add_generation_prompt=True, tokenize=False)
        for t in ("hi", "a longer question about this photo", "x")
    ]
    inputs = proc(text=prompts, images=images(), padding=True, return_tensors="pt")
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()  # left padded: every prompt ends at the last column
    image_tokens = (inputs["input_ids"] == loaded.model.config.image_token_index).sum(1).tolist()
    if loaded.family == "llava":
        assert image_tokens == [16, 16, 16]  # one 32 px crop in 8 px patches, CLS dropped
    else:
        assert len(set(image_tokens)) == 3  # anyres: each aspect ratio its own tile grid
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 3
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 5


@pytest.mark.parametrize("family", FAMILIES)
def test_vocab_larger_than_the_tokenizer(family):
    import torch

    model, proc = build_random(family, vocab_size=152064)  # Qwen2's vocabulary size
    assert model.get_input_embeddings().weight.shape[0] == 152064
    assert model.get_output_embeddings().weight.shape[0] == 152064
    text = proc.apply_chat_template(user_turn("hi"), add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=images()[:1], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_7b_shape_matches_the_published_size(family):
    import torch
    from transformers import AutoModelForImageTextToText

    cfg = model_config(family, "7b")
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = AutoModelForImageTextToText.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())
    assert type(model).__name__ == MODEL_CLASSES[family]
    assert abs(params / PUBLISHED_PARAMS[family] - 1) < 0.03, params


@pytest.mark.parametrize(("family", "tokens"), [("llava", 576), ("llava_onevision", 729 + 27 + 27 * 27)])
def test_7b_processor_counts_image_tokens_like_the_hub(family, tokens):
    from PIL import Image

    proc = processor_for(family, "7b")
    side = model_config(family, "7b").vision_config.image_size  # 336 (CLIP) or 384 (SigLIP)
    text = proc.apply_chat_template(user_turn("hi"), add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=[Image.new("RGB", (side, side))], return_tensors="pt")
    # llava: 24x24 patches; OneVision: the 27x27 base tile + its 1x1 grid tile with a newline per row.
    assert (inputs["input_ids"] == proc.image_token_id).sum().item() == tokens


def test_cache_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SNAP2CAPTION_CACHE", str(tmp_path / "cache"))
    first = ensure_random_checkpoint("llava")
    assert first.parent == tmp_path / "cache" / "checkpoints"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_random_checkpoint("llava") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert ensure_random_checkpoint("llava", cache_root=tmp_path / "other").parent == tmp_path / "other"
    assert not [p for p in first.parent.iterdir() if ".partial-" in p.name]
    assert len({recipe_key(f) for f in FAMILIES}) == len(FAMILIES)
