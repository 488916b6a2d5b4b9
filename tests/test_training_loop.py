"""The shared training loop on a few synthetic examples: it learns, and it resumes."""

from dataclasses import replace

import pytest

from training import synthetic
from training.demo_model import HYBRID_ARCHITECTURE, DemoArchitecture, build_untrained
from training.loop import IGNORE_INDEX, EncodedDataset, TrainConfig, TrainExample, kl_to_base, lr_at, train

SMALL = DemoArchitecture(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1, vocab_size=600)


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_untrained(SMALL)
    examples = [
        TrainExample(synthetic.render_scene(e.scene), e.tone, e.audience, e.target)
        for e in synthetic.make_examples(16, 3)
    ]
    return model, processor, EncodedDataset(processor, examples, progress=False)


def test_labels_cover_only_the_answer(tiny):
    _, processor, data = tiny
    ids, labels = data.input_ids[0], data.labels[0]
    answer = [t for t in labels if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(answer, skip_special_tokens=True).strip().startswith("Caption:")
    prompt_part = ids[: len(ids) - len(answer)]
    assert all(l == IGNORE_INDEX for l in labels[: len(prompt_part)])
    assert answer[-1] == processor.tokenizer.eos_token_id


def test_hashtags_the_creator_left_alone_are_read_but_not_learned(tiny):
    # A caption-only edit carries the ranker's hashtags, not the model's or the creator's:
    # everything else of the answer is learned, the hashtag values are not.
    _, processor, _ = tiny
    ex = synthetic.make_examples(1, 5)[0]
    image = synthetic.render_scene(ex.scene)
    both = EncodedDataset(
        processor,
        [
            TrainExample(image, ex.tone, ex.audience, ex.target),
            TrainExample(image, ex.tone, ex.audience, ex.target, learn_hashtags=False),
        ],
        progress=False,
    )
    assert both.input_ids[0] == both.input_ids[1]  # the model reads the same answer
    tok = processor.tokenizer
    learned = [t for t in both.labels[1] if t != IGNORE_INDEX]
    text = tok.decode(learned, skip_special_tokens=True)
    tags_line = ex.target.split("\n")[1]
    assert "Caption:" in text and "Alt text:" in text and "Hashtags:" in text
    assert not any(tag in text for tag in tags_line.split()[1:]), text


@pytest.fixture(scope="module")
def edited(tiny):
    """One example twice: unedited, and a creator's edit of its caption (a prefix and a sign-off)."""
    _, processor, _ = tiny
    ex = synthetic.make_examples(1, 8)[0]
    shown = ex.target.split("\n")[0].removeprefix("Caption: ")
    target = ex.target.replace(shown, f"Keep it simple: {shown} Every day, friends.", 1)
    image = synthetic.render_scene(ex.scene)
    examples = [
        TrainExample(image, ex.tone, ex.audience, ex.target),
        TrainExample(image, ex.tone, ex.audience, target, shown_caption=shown),
    ]
    return EncodedDataset(processor, examples, progress=False)


def test_kept_tokens_are_anchored_where_the_shown_answer_predicts_them(tiny, edited):
    _, processor, _ = tiny
    tok = processor.tokenizer
    # Without an edit, every answer token is predicted at the same place of the same answer.
    plain = edited.anchors_of(0)
    assert edited.shown_of(0) == edited.input_ids[0]
    assert [p for p, a in enumerate(plain) if a >= 0] == [
        p - 1 for p, label in enumerate(edited.labels[0]) if label != IGNORE_INDEX
    ]
    assert all(a == p for p, a in enumerate(plain) if a >= 0)
    # With one, each anchored position predicts the token its anchor predicts in the shown answer...
    ids, shown, anchors = edited.input_ids[1], edited.shown_of(1), edited.anchors_of(1)
    assert shown == edited.input_ids[0]
    anchored = [p for p, a in enumerate(anchors) if a >= 0]
    assert all(ids[p + 1] == shown[anchors[p] + 1] for p in anchored)
    # ... the edit's own tokens are not anchored, and what follows it (hashtags, alt text) is.
    free = tok.decode(
        [ids[p + 1] for p, a in enumerate(anchors[:-1]) if a < 0 and edited.labels[1][p + 1] != IGNORE_INDEX]
    )
    assert "Keep it simple" in free.replace("  ", " ") and "friends" in free and "Alt" not in free, free
    kept = tok.decode([ids[p + 1] for p in anchored])
    assert "Alt text:" in kept and "Hashtags:" in kept


class _Base:
    """A model whose "base" (adapter switched off) answers fixed logits."""

    def __init__(self, base_logits):
        self.base_logits = base_logits

    def disable_adapter(self):
        import contextlib

        return contextlib.nullcontext()

    def __call__(self, **_):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.base_logits)


def test_kl_to_base_counts_only_kept_tokens_the_base_writes(edited):
    import torch

    batch = edited.batch([1])
    shown, anchors = edited.shown_batch([1])
    labels = batch["labels"]
    vocab = 50
    torch.manual_seed(0)
    # The base predicts exactly the shown answer's next token everywhere (a confident one).
    base = torch.full((1, shown["input_ids"].shape[1], vocab), -5.0)
    nxt = shown["input_ids"][0, 1:].clamp(max=vocab - 1)
    base[0, torch.arange(len(nxt)), nxt] = 5.0
    model = _Base(base)
    student = torch.randn(1, labels.shape[1], vocab)
    first = kl_to_base(model, model, shown, labels.clamp(max=vocab - 1), student, anchors)
    assert first > 0
    # The adapter may do what it likes where the creator edited, and in the prompt...
    free = [p for p in range(labels.shape[1] - 1) if anchors[0, p] < 0]
    changed = student.clone()
    changed[0, free] = torch.randn(len(free), vocab) * 10
    assert kl_to_base(model, model, shown, labels.clamp(max=vocab - 1), changed, anchors) == pytest.approx(first.item())
    # ... not where it kept the shown answer; and matching the base there costs nothing.
    kept = [p for p in range(labels.shape[1] - 1) if anchors[0, p] >= 0]
    same = student.clone()
    same[0, kept] = base[0, anchors[0, kept]]
    assert kl_to_base(model, model, shown, labels.clamp(max=vocab - 1), same, anchors) == pytest.approx(0.0, abs=1e-5)


def test_loss_goes_down(tiny):
    model, _, data = tiny
    result = train(
        model,
        data,
        TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=3, log_every=10, precision="fp32"),
        progress=False,
    )
    assert result.losses[-1] < result.losses[0] * 0.6, result.losses


def test_checkpoint_resume(tiny, tmp_path):
    model, _, data = tiny
    cfg = TrainConfig(steps=4, batch_size=4, checkpoint_dir=str(tmp_path), precision="fp32", warmup_steps=1)
    first = train(model, data, cfg, progress=False)
    assert first.steps == 4 and (tmp_path / "last.pt").exists()
    cfg.steps = 6
    second = train(model, data, cfg, progress=False)
    assert second.steps == 6 and len(second.losses) == 2  # resumed at step 4, ran 2 more


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=0.01)
    assert lr_at(50, cfg) < lr_at(20, cfg)


@pytest.mark.parametrize("vision_kind", ["clip", "focalnet", "hybrid"])
def test_scene_heads_read_the_tokens_llava_projects(vision_kind, tmp_path):
    """The scene heads pool exactly the image tokens LLaVA's projector reads (CLIP and the hybrid
    without their CLS token, FocalNet all of its tokens), so the confidence is about what the
    caption is made from; and the model saves and loads as any LLaVA checkpoint does."""
    import torch

    from snap2caption_service.core.captioner import vision_tower
    from snap2caption_service.core.scene_heads import TokenSelection, image_tokens

    small = dict(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1, vocab_size=600)
    if vision_kind == "hybrid":
        arch = replace(HYBRID_ARCHITECTURE, vision_conv_widths=(64, 64, 128), **small)
    else:
        arch = DemoArchitecture(vision_kind=vision_kind, **small)
    model, processor = build_untrained(arch)
    model.eval()
    pixels = processor.image_processor(
        images=[synthetic.render_scene(synthetic.make_examples(1, 2)[0].scene)], return_tensors="pt"
    )["pixel_values"]
    with torch.inference_mode():
        projected = model.model.get_image_features(pixel_values=pixels).pooler_output[0]
        tokens = image_tokens(vision_tower(model), pixels, TokenSelection.of(model.config))[0]
        assert tokens.shape == (64, 32)
        assert torch.allclose(model.model.multi_modal_projector(tokens), projected, atol=1e-5)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], add_generation_prompt=True
    )
    render = synthetic.render_scene(synthetic.make_examples(1, 2)[0].scene)
    image_token = model.config.image_token_index
    assert int((processor(images=[render], text=[prompt], return_tensors="pt")["input_ids"] == image_token).sum()) == 64

    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    reloaded = LlavaProcessor.from_pretrained(tmp_path)
    assert int((reloaded(images=[render], text=[prompt], return_tensors="pt")["input_ids"] == image_token).sum()) == 64
    with torch.inference_mode():
        assert torch.allclose(
            loaded.model.get_image_features(pixel_values=pixels).pooler_output[0], projected, atol=1e-5
        )


@pytest.mark.parametrize("feature_layer", [-2, [0, -1]])
def test_scene_heads_follow_the_configs_feature_layer(feature_layer):
    """LLaVA-1.5 projects the tower's second-to-last layer (vision_feature_layer -2), and some
    checkpoints concatenate several: the heads read whatever layer the config names, not always
    the last one."""
    import torch

    from snap2caption_service.core.captioner import vision_tower
    from snap2caption_service.core.scene_heads import TokenSelection, image_tokens

    arch = DemoArchitecture(vision_hidden=32, vision_layers=2, text_hidden=64, text_layers=1, vocab_size=600)
    model, processor = build_untrained(arch)
    model.config.vision_feature_layer = feature_layer
    model.eval()
    pixels = processor.image_processor(
        images=[synthetic.render_scene(synthetic.make_examples(1, 2)[0].scene)], return_tensors="pt"
    )["pixel_values"]
    with torch.inference_mode():
        tokens = image_tokens(vision_tower(model), pixels, TokenSelection.of(model.config))[0]
        hidden = vision_tower(model)(pixel_values=pixels, output_hidden_states=True).hidden_states
    layers = [feature_layer] if isinstance(feature_layer, int) else feature_layer
    assert torch.equal(tokens, torch.cat([hidden[i][0, 1:] for i in layers], dim=-1))
    assert not torch.equal(tokens[:, :32], hidden[-1][0, 1:])  # not the last layer alone
    if isinstance(feature_layer, int):  # a concatenation needs a wider projector than this model has
        with torch.inference_mode():
            projected = model.model.get_image_features(
                pixel_values=pixels,
                vision_feature_layer=feature_layer,
                vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            ).pooler_output[0]
            assert torch.allclose(model.model.multi_modal_projector(tokens), projected, atol=1e-5)


def test_batches_grouped_by_length_hold_every_example_once_and_pad_less():
    import random
    import statistics

    from training.loop import grouped_by_length

    rng = random.Random(0)
    lengths = [rng.randint(100, 220) for _ in range(1000)]
    order = list(range(1000))
    rng.shuffle(order)
    grouped = grouped_by_length(order, lengths, 32, random.Random(1))
    assert sorted(grouped) == list(range(1000))

    def spread(o):
        return statistics.mean(
            max(lengths[i] for i in o[b : b + 32]) - min(lengths[i] for i in o[b : b + 32]) for b in range(0, 992, 32)
        )

    assert spread(grouped) < spread(order) / 4
    # 1000 = 31 batches of 32 and 8 left: the short batch comes last, so batches cut every 32
    # examples from the front are the grouped ones.
    assert all(len(set(grouped[b : b + 32])) == 32 for b in range(0, 992, 32))
    tail = set(grouped[-8:])
    assert all(not tail & set(grouped[b : b + 32]) for b in range(0, 992, 32))


def test_training_grouped_by_length_sees_every_example_each_epoch(tiny):
    """The loop's batches under group_by_length: each epoch every example once, also when the
    dataset is no multiple of the batch size (the last epoch's leftover is grouped in)."""
    _, _, data = tiny  # 16 examples

    seen: list[int] = []

    class Recording:
        input_ids = data.input_ids

        def __len__(self):
            return 10  # batches of 4: two full, then 2 left over into the next epoch

        def batch(self, idx):
            seen.extend(idx)
            return data.batch(idx)

    model, _ = build_untrained(SMALL)
    cfg = TrainConfig(steps=5, batch_size=4, lr=1e-4, warmup_steps=1, seed=1, group_by_length=True, log_every=10**9)
    train(model, Recording(), cfg, progress=False)
    assert len(seen) == 20
    assert sorted(seen) == sorted(list(range(10)) * 2)
