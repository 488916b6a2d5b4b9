"""The captioning core on the tiny untrained model: loading, LoRA merge, candidates."""

import pytest
from PIL import Image

from snap2caption_service.core.captioner import Captioner, CaptionJob, GenerationSettings


@pytest.fixture(scope="module")
def captioner(tiny_model_dir):
    return Captioner.load(str(tiny_model_dir), generation=GenerationSettings(max_new_tokens=12))


def _img(color):
    return Image.new("RGB", (80, 60), color)


def test_candidates_best_first_and_counted(captioner):
    jobs = [CaptionJob(_img((200, 0, 0)), num_candidates=1), CaptionJob(_img((0, 0, 200)), num_candidates=4)]
    out = captioner.caption_batch(jobs)
    assert [len(c) for c in out] == [1, 4]
    scores = [c.score for c in out[1]]
    assert scores == sorted(scores, reverse=True)
    assert all(s <= 0 for s in scores)  # mean log-probabilities


def test_sampling_is_seeded(tiny_model_dir):
    a = Captioner.load(str(tiny_model_dir), generation=GenerationSettings(max_new_tokens=12, seed=7))
    job = CaptionJob(_img((10, 200, 10)), num_candidates=3)
    assert [c.caption for c in a.caption_batch([job])[0]] == [c.caption for c in a.caption_batch([job])[0]]


def test_lora_adapter_is_merged_at_load(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    base = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)

    plain = Captioner.load(str(tiny_model_dir))
    merged = Captioner.load(str(tiny_model_dir), str(adapter_dir))
    assert "+adapter@" in merged.version and merged.version != plain.version
    assert not any("lora" in n for n, _ in merged.model.named_parameters())  # merged, not wrapped
    name = next(n for n, _ in plain.model.named_parameters() if n.endswith("q_proj.weight"))
    diff = (dict(plain.model.named_parameters())[name] - dict(merged.model.named_parameters())[name]).abs().max()
    assert diff > 0


def test_running_scores_equal_the_models_own_log_probabilities(tiny_model_dir):
    """The log-probabilities accumulated during generation are the ones the model gives the
    answer when it reads it whole (teacher forcing), with the grammar mask after them."""
    import torch
    from transformers import LogitsProcessorList

    from snap2caption_service.core.captioner import _ChosenTokenLogProbs

    captioner = Captioner.load(str(tiny_model_dir), device="cpu")
    tok = captioner.processor.tokenizer
    images = [_img((200, 40, 40)), _img((40, 40, 200))]
    prompts = [captioner.chat.prompt("casual", "personal")] * 2
    inputs = captioner.processor(text=prompts, images=images, return_tensors="pt", padding=True)
    scorer = _ChosenTokenLogProbs()
    processors = LogitsProcessorList([scorer, captioner.constraint.mask([5, 6])])
    with torch.inference_mode():
        out = captioner.model.generate(
            **inputs, max_new_tokens=40, do_sample=False, logits_processor=processors, pad_token_id=tok.pad_token_id
        )
        new = out[:, inputs["input_ids"].shape[1] :]
        running = scorer.finish(new[:, -1])
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(new)], dim=1)
        logits = captioner.model(input_ids=out, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
    n = new.shape[1]
    forced = torch.log_softmax(logits[:, -n - 1 : -1].float(), dim=-1).gather(2, new.unsqueeze(-1)).squeeze(-1)
    assert running.shape == forced.shape == (2, n)
    assert torch.allclose(running, forced, atol=1e-3), (running - forced).abs().max()
