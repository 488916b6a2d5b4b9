"""A frozen vision tower run once per picture instead of once per training step.

Stage 2 of the demo build trains the projector and decoder with the tower frozen (as LLaVA's
own stage 1 does), over the same pictures for several epochs. The tower's output for a picture
is then the same at every step, so it is computed once up front, and for the run the model's
tower is swapped for one that hands back those stored outputs. LLaVA's own code still selects
the layer and drops the CLS token (``get_image_features``), so the model trains on exactly what
it would have computed.

Exact only for a tower whose output does not depend on train/eval mode or on the rest of the
batch: no dropout, stochastic depth or BatchNorm in training mode. ``why_not_storable`` checks
on the first pictures; ``tower_stored_if_possible`` then runs the tower at every step instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from snap2caption_service.core.captioner import vision_tower
from snap2caption_service.core.scene_heads import TokenSelection

log = logging.getLogger(__name__)

_CHUNK = 16  # pictures per tower forward: 2.7 ms a picture at 16, 7.7 ms at 256 (the activations outgrow the caches)


def _layer_indices(selection: TokenSelection, n_hidden: int) -> list[int]:
    layers = [selection.layer] if isinstance(selection.layer, int) else list(selection.layer)
    return [i % n_hidden for i in layers]


@dataclass(frozen=True)
class StoredTowerOutputs:
    """Where the stored layers sit among the tower's hidden states (precompute_tower_outputs)."""

    n_hidden: int  # how many hidden states the tower returns (embeddings + each layer)
    layers: list[int]  # which of them each example's stored tensor holds, in order


def why_not_storable(model, data) -> str | None:
    """Why this model's tower outputs cannot stand in for the tower over ``data`` (an
    EncodedDataset), or None when they can."""
    import torch

    tower = vision_tower(model)
    if any(p.requires_grad for p in tower.parameters()):
        return "the tower is still training (not frozen)"
    if not data.images or any(set(img) != {"pixel_values"} for img in data.images):
        # LLaVA-NeXT / OneVision tiles (image_sizes) are split after the tower: not handled here.
        return "the examples are not plain LLaVA pictures (pixel_values only)"
    pixels = torch.stack([img["pixel_values"] for img in data.images[:4]]).to(next(tower.parameters()).device)
    was_training = tower.training
    with torch.no_grad():
        tower.train()
        a = tower(pixel_values=pixels, output_hidden_states=True).last_hidden_state
        b = tower(pixel_values=pixels[:1], output_hidden_states=True).last_hidden_state
        tower.eval()
        c = tower(pixel_values=pixels, output_hidden_states=True).last_hidden_state
    tower.train(was_training)
    if not (torch.allclose(a, c, atol=1e-5) and torch.allclose(a[:1], b, atol=1e-5)):
        # Dropout, stochastic depth (FocalNet's drop_path) or BatchNorm statistics.
        return "the tower's output depends on train mode or on the rest of the batch"
    return None


def precompute_tower_outputs(model, data, progress: bool = True) -> StoredTowerOutputs:
    """Replace each example's ``pixel_values`` in ``data`` (an EncodedDataset) by the tower's hidden
    states at the layers LLaVA reads, stacked: [layers, tokens, hidden] per example. ``data`` then
    only serves a model whose tower replays them (tower_replayed)."""
    import torch
    from tqdm import tqdm

    reason = why_not_storable(model, data)
    if reason:
        raise ValueError(f"the tower's outputs cannot be stored: {reason}")
    tower = vision_tower(model)
    selection = TokenSelection.of(model.config)
    was_training = tower.training
    tower.eval()
    layers: list[int] = []
    n_hidden = 0
    bar = tqdm(total=len(data.images), desc="tower outputs", unit="pic", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(data.images), _CHUNK):
            part = data.images[start : start + _CHUNK]
            pixels = torch.stack([img["pixel_values"] for img in part]).to(next(tower.parameters()).device)
            hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
            if start == 0:
                n_hidden = len(hidden)
                layers = _layer_indices(selection, n_hidden)
            stacked = torch.stack([hidden[i] for i in layers], dim=1)
            for img, row in zip(part, stacked, strict=True):
                img["pixel_values"] = row.clone()  # its own storage, not a view of the whole chunk
            bar.update(len(part))
    bar.close()
    tower.train(was_training)
    return StoredTowerOutputs(n_hidden, layers)


@contextmanager
def tower_stored_if_possible(model, data, progress: bool = True) -> Iterator[bool]:
    """Inside the block the model trains on stored tower outputs where they stand in exactly for
    the tower (True), else on the tower itself, as before (False, and the log says why)."""
    reason = why_not_storable(model, data)
    if reason:
        log.info("the frozen tower runs at every training step: %s", reason)
        yield False
        return
    with tower_replayed(model, precompute_tower_outputs(model, data, progress)):
        yield True


def _replay_module(stored: StoredTowerOutputs, real_tower):
    from torch import nn
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    class ReplayTower(nn.Module):
        """Takes the stored outputs where LLaVA passes pixel_values, hands them back as hidden states."""

        def __init__(self):
            super().__init__()
            self.config = real_tower.config
            self.patch_size = getattr(real_tower, "patch_size", None)

        def forward(self, pixel_values, **_):
            hidden = [None] * stored.n_hidden
            for j, i in enumerate(stored.layers):
                hidden[i] = pixel_values[:, j]
            return BaseModelOutputWithPooling(last_hidden_state=hidden[-1], hidden_states=tuple(hidden))

    return ReplayTower()


@contextmanager
def tower_replayed(model, stored: StoredTowerOutputs) -> Iterator[None]:
    """Inside the block the model's tower replays stored outputs; after it, the real tower is back."""
    inner = getattr(model, "model", model)
    real = inner.vision_tower
    if any(p.requires_grad for p in real.parameters()):
        raise ValueError("the tower must be frozen (requires_grad False) for its outputs to be replayed")
    inner.vision_tower = _replay_module(stored, real)
    try:
        yield
    finally:
        inner.vision_tower = real
