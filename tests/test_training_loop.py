"""The shared training loop on a few synthetic examples: it learns, and it resumes."""

import pytest

from training import synthetic
from training.demo_model import DemoArchitecture, build_untrained
from training.loop import IGNORE_INDEX, EncodedDataset, TrainConfig, TrainExample, lr_at, train

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
