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

from training import synthetic

COLORS = list(synthetic.COLORS)
SHAPES = list(synthetic.SHAPES)
BACKGROUNDS = list(synthetic.BACKGROUNDS)


def vision_tower_of(model):
    """The CLIP tower inside a LlavaForConditionalGeneration (transformers 4.x and 5.x layouts)."""
    inner = getattr(model, "model", model)
    return getattr(inner, "vision_tower", None) or model.vision_tower


def scene_labels(scene: synthetic.Scene) -> dict:
    main = scene.main
    objects = [0.0] * (len(COLORS) * len(SHAPES))
    for obj in scene.objects:
        objects[COLORS.index(obj.color) * len(SHAPES) + SHAPES.index(obj.shape)] = 1.0
    return {
        "color": COLORS.index(main.color),
        "shape": SHAPES.index(main.shape),
        "position": main.row * 3 + main.col,
        "background": BACKGROUNDS.index(scene.background[0]),
        "objects": objects,
    }


class SceneLabelDataset:
    """Pixel values and scene labels, encoded once (same image processor as the caption model)."""

    def __init__(self, image_processor, scenes: Sequence[synthetic.Scene], progress: bool = True):
        import torch
        from tqdm import tqdm

        pixels, labels = [], [scene_labels(s) for s in scenes]
        for start in tqdm(range(0, len(scenes), 512), desc="encode scenes", disable=not progress):
            imgs = [synthetic.render_scene(s) for s in scenes[start : start + 512]]
            pixels.append(image_processor(images=imgs, return_tensors="pt")["pixel_values"])
        self.pixel_values = torch.cat(pixels)
        self.targets = {k: torch.tensor([lab[k] for lab in labels]) for k in labels[0]}

    def __len__(self) -> int:
        return len(self.pixel_values)

    def batch(self, idx: Sequence[int]) -> dict:
        idx = list(idx)
        return {"pixel_values": self.pixel_values[idx], **{k: v[idx] for k, v in self.targets.items()}}


def make_pretrainer(vision_tower, hidden: int):
    """The tower plus small heads over its mean patch token (CLS is dropped by LLaVA anyway)."""
    from torch import nn

    class VisionPretrainer(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = vision_tower
            self.heads = nn.ModuleDict(
                {
                    "color": nn.Linear(hidden, len(COLORS)),
                    "shape": nn.Linear(hidden, len(SHAPES)),
                    "position": nn.Linear(hidden, 9),
                    "background": nn.Linear(hidden, len(BACKGROUNDS)),
                    "objects": nn.Linear(hidden, len(COLORS) * len(SHAPES)),
                }
            )

        def forward(self, pixel_values, color, shape, position, background, objects):
            patches = self.tower(pixel_values=pixel_values).last_hidden_state[:, 1:]
            pooled = patches.mean(dim=1)
            ce = nn.functional.cross_entropy
            logits = {k: head(pooled) for k, head in self.heads.items()}
            loss = (
                ce(logits["color"], color)
                + 2 * ce(logits["shape"], shape)
                + ce(logits["position"], position)
                + 0.5 * ce(logits["background"], background)
                + nn.functional.binary_cross_entropy_with_logits(logits["objects"], objects.float())
            )
            acc = {
                k: (logits[k].argmax(-1) == t).float().mean().item()
                for k, t in (("color", color), ("shape", shape), ("position", position))
            }
            return SimpleNamespace(loss=loss, accuracy=acc)

    return VisionPretrainer()


def held_out_accuracy(pretrainer, data: SceneLabelDataset, n: int = 512) -> dict:
    import torch

    pretrainer.eval()
    with torch.inference_mode():
        out = pretrainer(**data.batch(range(min(n, len(data)))))
    pretrainer.train()
    return out.accuracy
