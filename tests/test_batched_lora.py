"""Mixed-adapter batches through core/batched_lora.py answer as peft's own per-adapter loop does."""

from __future__ import annotations

import torch


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(16, 32)
        self.down = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _model_with_adapters():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], init_lora_weights=False), "one"
    )
    # Another rank, and an adapter on one layer only: the other layer has no weights for it.
    model.add_adapter("two", LoraConfig(r=8, lora_alpha=4, target_modules=["up", "down"], init_lora_weights=False))
    model.add_adapter("three", LoraConfig(r=2, lora_alpha=2, target_modules=["down"], init_lora_weights=False))
    return model.eval()


def _run(model, x, names):
    with torch.inference_mode():
        return model(x, adapter_names=names)


def test_gathered_mixed_batch_equals_peft_loop():
    from snap2caption_service.core import batched_lora

    model = _model_with_adapters()
    x = torch.randn(7, 5, 16)
    names = ["one", "__base__", "two", "three", "one", "two", "__base__"]
    expected = _run(model, x, names)
    assert batched_lora.install(model) == 2
    got = _run(model, x, names)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # The champion's rows are the plain model's exactly, not merely close.
    with torch.inference_mode(), model.disable_adapter():
        plain = model(x)
    assert torch.equal(got[1], plain[1]) and torch.equal(got[6], plain[6])
    # The gathered path ran (its stacks are cached for the next token of the same batch).
    assert all(m._gathered_cache is not None for m in model.modules() if getattr(m, "_gathered_lora", False))


def test_stacks_follow_the_batch_and_are_forgotten_with_an_adapter():
    from snap2caption_service.core import batched_lora

    model = _model_with_adapters()
    x = torch.randn(3, 2, 16)
    reference = [_run(model, x, names) for names in (["one", "two", "three"], ["three", "three", "__base__"])]
    batched_lora.install(model)
    for names, expected in zip((["one", "two", "three"], ["three", "three", "__base__"]), reference):
        torch.testing.assert_close(_run(model, x, names), expected, rtol=1e-5, atol=1e-6)
    model.delete_adapter("two")
    batched_lora.forget(model)
    assert all(getattr(m, "_gathered_cache", None) is None for m in model.modules())
    torch.testing.assert_close(_run(model, x, ["one", "three", "one"]), _run(model, x, ["one", "three", "one"]))
