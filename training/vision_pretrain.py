"""Stage 1 of the demo model: teach the CLIP-style vision tower to see colours, shapes and places.

Real LLaVA starts from a pretrained CLIP; we have none, and a vision transformer trained
from scratch only through caption tokens learns shapes very slowly (the shape word is a few
tokens of ~80). So, like CLIP's pretraining but supervised by the scene description, the
tower first learns to predict each scene's objects from its patch tokens. Stage 2 (the
caption model) then reads those patch tokens. Both stages run through ``training.loop.train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

from snap2caption_service.core.captioner import vision_tower
from snap2caption_service.core.scene_heads import (
    HEADS_FILE,
    LABELS_FILE,
    TokenSelection,
    focused_patches,
    image_tokens,
    pooled_patches,
)
from training import synthetic

COLORS = list(synthetic.COLORS)
SHAPES = list(synthetic.SHAPES)
BACKGROUNDS = list(synthetic.BACKGROUND_KINDS)


def vision_tower_of(model):
    """The CLIP tower inside a LlavaForConditionalGeneration: the one the served model reads with."""
    return vision_tower(model)


IGNORE = -100  # a scene without objects has no main colour, shape or position to learn

# The heads that read the tokens weighted by the main head (scene_heads.focused_patches); the
# others read their plain mean. The objects head is among them because it gives the answer's
# confidence: reading the plain mean, it found an object in a fifth of the held-out vector scenes
# once colour and shape read the focus, and training colour and shape on the plain mean as well
# to keep it finding them cost photo-set reading (docs/notes/demo-model.md, sessions 27 and 28).
FOCUSED_HEADS = ("color", "shape", "objects")


def scene_labels(scene: synthetic.Scene) -> dict:
    objects = [0.0] * (len(COLORS) * len(SHAPES))
    for obj in scene.objects:
        objects[COLORS.index(obj.color) * len(SHAPES) + SHAPES.index(obj.shape)] = 1.0
    main = scene.objects[0] if scene.objects else None
    return {
        "color": COLORS.index(main.color) if main else IGNORE,
        "shape": SHAPES.index(main.shape) if main else IGNORE,
        "position": main.row * 3 + main.col if main else IGNORE,
        "background": BACKGROUNDS.index(scene.background_kind),
        "objects": objects,
    }


def head_labels() -> dict:
    """The names of each head's classes, saved with the heads (core/scene_heads.py reads them)."""
    return {
        "color": COLORS,
        "shape": SHAPES,
        "background": BACKGROUNDS,
        "objects": [f"{c} {s}" for c in COLORS for s in SHAPES],
        "focused": list(FOCUSED_HEADS),
    }


class SceneLabelDataset:
    """Pixel values and scene labels, encoded once (same image processor as the caption model).
    ``grid``: the tower's tokens per side, for the main object's cover of each token's cell."""

    def __init__(self, image_processor, scenes: Sequence[synthetic.Scene], progress: bool = True, grid: int = 8):
        import numpy as np
        import torch
        from tqdm import tqdm

        pixels, covers, labels = [], [], [scene_labels(s) for s in scenes]
        for start in tqdm(range(0, len(scenes), 512), desc="encode scenes", disable=not progress):
            drawn = [synthetic.render_scene_and_main(s, grid=grid) for s in scenes[start : start + 512]]
            pixels.append(image_processor(images=[img for img, _ in drawn], return_tensors="pt")["pixel_values"])
            covers += [cover for _, cover in drawn]
        self.pixel_values = torch.cat(pixels)
        self.targets = {k: torch.tensor([lab[k] for lab in labels]) for k in labels[0]}
        self.targets["main"] = torch.from_numpy(np.stack(covers))

    def __len__(self) -> int:
        return len(self.pixel_values)

    def batch(self, idx: Sequence[int]) -> dict:
        idx = list(idx)
        return {"pixel_values": self.pixel_values[idx], **{k: v[idx] for k, v in self.targets.items()}}


def make_pretrainer(vision_tower, hidden: int, selection: TokenSelection):
    """The tower plus small heads over the mean of the tokens LLaVA projects (``selection``: the
    LLaVA config's, TokenSelection.of)."""
    from torch import nn

    class VisionPretrainer(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = vision_tower
            self.selection = selection
            self.heads = nn.ModuleDict(
                {
                    "color": nn.Linear(hidden, len(COLORS)),
                    "shape": nn.Linear(hidden, len(SHAPES)),
                    "position": nn.Linear(hidden, 9),
                    "background": nn.Linear(hidden, len(BACKGROUNDS)),
                    "objects": nn.Linear(hidden, len(COLORS) * len(SHAPES)),
                    # Per token: how much of its cell the main object covers. FOCUSED_HEADS
                    # read the tokens weighted by it (scene_heads.focused_patches).
                    "main": nn.Linear(hidden, 1),
                }
            )

        def forward(self, pixel_values, color, shape, position, background, objects, main):
            tokens = image_tokens(self.tower, pixel_values, self.selection)
            pooled = pooled_patches(self.tower, None, self.selection, patch_tokens=tokens)
            main_logits = self.heads["main"](tokens).squeeze(-1)
            focus = focused_patches(tokens, main_logits)
            logits = {k: head(focus if k in FOCUSED_HEADS else pooled) for k, head in self.heads.items() if k != "main"}
            has_object = color != IGNORE

            def ce(name, target):
                # Summed over the scenes that have the label, so a batch of only empty scenes
                # adds nothing (a mean over none would be NaN).
                loss = nn.functional.cross_entropy(logits[name], target, ignore_index=IGNORE, reduction="sum")
                return loss / has_object.sum().clamp(min=1)

            loss = (
                ce("color", color)
                + 2 * ce("shape", shape)
                + ce("position", position)
                + 0.5 * nn.functional.cross_entropy(logits["background"], background)
                + nn.functional.binary_cross_entropy_with_logits(logits["objects"], objects.float())
                + nn.functional.binary_cross_entropy_with_logits(main_logits, main.to(main_logits.dtype))
            )
            acc = {
                k: (logits[k].argmax(-1) == t)[has_object].float().mean().item()
                for k, t in (("color", color), ("shape", shape), ("position", position))
            }
            acc["background"] = (logits["background"].argmax(-1) == background).float().mean().item()
            # An empty scene must read as empty, and a scene with objects as not: some known
            # object above even odds or not.
            found = logits["objects"].sigmoid().amax(-1) >= 0.5
            empty = ~has_object
            if empty.any():
                acc["empty_flagged"] = (~found[empty]).float().mean().item()
            if has_object.any():
                acc["object_found"] = found[has_object].float().mean().item()
            return SimpleNamespace(loss=loss, accuracy=acc)

    return VisionPretrainer()


def held_out_accuracy(pretrainer, data: SceneLabelDataset, n: int = 512) -> dict:
    import torch

    pretrainer.eval()
    with torch.inference_mode():
        out = pretrainer(**data.batch(range(min(n, len(data)))))
    pretrainer.train()
    return out.accuracy


def head_weights(pretrainer) -> dict:
    """The heads' weights by "head.weight" / "head.bias", as scene_heads.SceneHeads reads them."""
    return {
        f"{name}.{k}": v.detach().float().contiguous()
        for name, head in pretrainer.heads.items()
        for k, v in head.state_dict().items()
    }


def save_heads(pretrainer, out_dir) -> None:
    """The heads next to the model's weights: the served model's confidence (core/scene_heads.py)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(head_weights(pretrainer), str(out / HEADS_FILE))
    (out / LABELS_FILE).write_text(json.dumps(head_labels(), indent=1))
