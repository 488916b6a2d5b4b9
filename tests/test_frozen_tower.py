"""Stage 2 with the frozen tower's outputs stored trains the model it would have trained anyway."""

from __future__ import annotations

from dataclasses import replace

import pytest

from training import synthetic
from training.demo_model import HYBRID_ARCHITECTURE, DemoArchitecture, build_untrained
from training.frozen_tower import precompute_tower_outputs, tower_replayed, tower_stored_if_possible
from training.loop import EncodedDataset, TrainConfig, TrainExample, train

SMALL = dict(vision_hidden=32, vision_layers=2, text_hidden=64, text_layers=1, vocab_size=600)


def _examples(n: int = 12):
    return [
        TrainExample(synthetic.render_scene(e.scene), e.tone, e.audience, e.target)
        for e in synthetic.make_examples(n, 4)
    ]


def _frozen(arch, feature_layer=-1):
    model, processor = build_untrained(arch, seed=3)
    model.config.vision_feature_layer = feature_layer
    for p in model.model.vision_tower.parameters():
        p.requires_grad = False
    return model, processor


def _loss_and_grads(model, data, idx):
    import torch

    model.zero_grad(set_to_none=True)
    loss = model(**data.batch(idx)).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize(
    ("arch", "feature_layer"),
    [
        (DemoArchitecture(**SMALL), -1),
        (DemoArchitecture(**SMALL), -2),  # LLaVA-1.5's layer: not the last one
        (replace(HYBRID_ARCHITECTURE, vision_conv_widths=(64, 64, 128), **SMALL), -1),  # the demo's tower
    ],
    ids=["clip-last", "clip-second-to-last", "hybrid"],
)
def test_stored_tower_outputs_give_the_loss_and_gradients_of_the_tower_itself(arch, feature_layer):
    """Same loss and gradients, step after step: the stored outputs differ from the tower's own
    only by the rounding of a different batch size (a few units in the 7th digit), which Adam's
    updates of near-zero gradients make visible in the weights after a few steps, so the weights
    themselves are not compared."""
    import torch

    model, processor = _frozen(arch, feature_layer)
    data = EncodedDataset(processor, _examples(), progress=False)
    batches = [[0, 5, 7, 2], [1, 3, 11, 8]]
    cfg = TrainConfig(steps=3, batch_size=4, lr=3e-3, warmup_steps=1, seed=2, log_every=10**9)
    plain = [_loss_and_grads(model, data, idx) for idx in batches]
    plain_losses = train(model, data, cfg, progress=False).losses
    model, _ = _frozen(arch, feature_layer)  # the same untrained weights (seeded)
    with tower_replayed(model, precompute_tower_outputs(model, data, progress=False)):
        stored = [_loss_and_grads(model, data, idx) for idx in batches]
        stored_losses = train(model, data, cfg, progress=False).losses
    for (loss, grads), (stored_loss, stored_grads) in zip(plain, stored, strict=True):
        assert stored_loss == pytest.approx(loss, rel=1e-5)
        assert torch.allclose(stored_grads, grads, rtol=1e-3, atol=1e-6)
    assert stored_losses == pytest.approx(plain_losses, rel=1e-3)


def test_the_real_tower_is_back_after_the_block_even_when_training_fails():
    model, processor = _frozen(DemoArchitecture(**SMALL))
    real = model.model.vision_tower
    data = EncodedDataset(processor, _examples(4), progress=False)
    stored = precompute_tower_outputs(model, data, progress=False)
    assert tuple(data.images[0]["pixel_values"].shape) == (1, 65, 32)  # [layers, CLS + 64 tokens, hidden]
    with pytest.raises(RuntimeError, match="boom"), tower_replayed(model, stored):
        assert model.model.vision_tower is not real
        raise RuntimeError("boom")
    assert model.model.vision_tower is real


def test_a_tower_still_training_or_with_dropout_is_refused():
    model, processor = build_untrained(DemoArchitecture(**SMALL), seed=3)  # tower not frozen
    data = EncodedDataset(processor, _examples(4), progress=False)
    with pytest.raises(ValueError, match="frozen"), tower_replayed(model, None):
        pass

    model, processor = _frozen(DemoArchitecture(**SMALL))
    model.model.vision_tower.config.attention_dropout = 0.5
    for module in model.model.vision_tower.modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.5
    data = EncodedDataset(processor, _examples(4), progress=False)
    with pytest.raises(ValueError, match="depends on train mode"):
        precompute_tower_outputs(model, data, progress=False)


def test_a_tower_whose_outputs_cannot_be_stored_runs_at_every_step_instead():
    """The demo build's FocalNet tower has stochastic depth: in training mode each forward differs,
    so stored outputs would not be what stage 2 trained on before. The build then trains on the
    tower itself, with the examples as they were."""
    import torch

    model, processor = _frozen(DemoArchitecture(**SMALL))
    for module in model.model.vision_tower.modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.5
    data = EncodedDataset(processor, _examples(4), progress=False)
    before = data.images[0]["pixel_values"].clone()
    with tower_stored_if_possible(model, data, progress=False) as stored:
        assert stored is False
        train(model, data, TrainConfig(steps=1, batch_size=2, log_every=10**9), progress=False)
    assert torch.equal(data.images[0]["pixel_values"], before)

    model, processor = _frozen(DemoArchitecture(**SMALL))
    data = EncodedDataset(processor, _examples(4), progress=False)
    real = model.model.vision_tower
    with tower_stored_if_possible(model, data, progress=False) as stored:
        assert stored is True
        assert model.model.vision_tower is not real
    assert model.model.vision_tower is real
