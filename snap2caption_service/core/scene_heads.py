"""The vision tower's own reading of a picture, for checkpoints that ship one: the demo model.

The demo model's tower is pretrained with small classifier heads over its pooled patch tokens
(training/vision_pretrain.py): which colour and shape the main object has, and which
colour-shape objects are present at all. A main head over each token says where the main object
lies, and the colour, shape and objects heads read the tokens weighted by it (focused_patches). Those
heads ship next to the weights, and their probabilities are the answer's confidence: a picture
with no object the model knows (a real photograph, for a model of coloured shapes) scores low
there, whatever its caption says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from snap2caption_service.core.alt_text import background_clause, without_background

HEADS_FILE = "scene_heads.safetensors"
LABELS_FILE = "scene_heads.json"


# The views of a picture the heads read and average, as (quarter turns, mirrored). Every label
# they read (colours, shapes, which objects, the background) is the same in each, and the demo
# trains on any rotation. Chosen on 2,000 of the generator's own scenes, not the held-out sets
# (benchmarks/heads_views.py, demo-41a7bf38d499): docs/notes/demo-model.md, session 23. Quarter
# turns need a square picture (the demo's 128x128); on another, only the half turn is used.
VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "picture": ((0, False),),
    "mirror": ((0, False), (0, True)),
    "turns": ((0, False), (1, False), (2, False), (3, False)),
    "turns_and_mirror": tuple((turns, mirrored) for turns in range(4) for mirrored in (False, True)),
}
DEFAULT_VIEWS = "turns"


def _view(pixel_values, turns: int, mirrored: bool):
    out = pixel_values.flip(-1) if mirrored else pixel_values
    return out.rot90(turns, (-2, -1)) if turns else out


def _unview(grid, turns: int, mirrored: bool):
    """What _view did, undone: a reading of a view's 3x3 grid of places, in the picture's frame."""
    out = grid.rot90(-turns, (-2, -1)) if turns else grid
    return out.flip(-1) if mirrored else out


# The heads can also read a closer crop of the picture, around the cell of its 3x3 grid where the
# position head places the main object, and average its colour and shape with the whole
# picture's. ZOOM is the crop's side as a share of the picture's. Chosen among 0.6-0.9 on the
# generator's own scenes and the validation scenes (benchmarks/heads_views.py): on a tower whose
# heads read the plain mean of its tokens (demo-41a7bf38d499) the crop raised them from
# 98.2% / 83.3% to 99.2% / 86.8% (session 26). The demo model since trainer 9 has a main head,
# and its colour and shape read the tokens where the main object is (focused_patches), which does
# what the crop did: the shipped demo-d1a9623dd9f4 reads 88.8% of the validation scenes with the
# crop and 90.5% without it (session 27). So read() does not crop unless asked; the benchmark
# still compares.
ZOOM = 0.7


def _zoomed(pixel_values, cells, share: float):
    """Each picture's crop of ``share`` of its side around the centre of its grid cell (row-major,
    0-8), moved to lie inside the picture, resized back to the picture's size."""
    import torch
    import torch.nn.functional as F

    h, w = pixel_values.shape[-2:]
    ch, cw = max(1, round(share * h)), max(1, round(share * w))
    crops = []
    for picture, cell in zip(pixel_values, cells.tolist()):
        row, col = divmod(cell, 3)
        top = min(max(round((row + 0.5) * h / 3 - ch / 2), 0), h - ch)
        left = min(max(round((col + 0.5) * w / 3 - cw / 2), 0), w - cw)
        crops.append(picture[:, top : top + ch, left : left + cw])
    return F.interpolate(torch.stack(crops), size=(h, w), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class TokenSelection:
    """Which of the tower's hidden states LLaVA projects: ``vision_feature_layer`` (one layer, or
    several concatenated) and ``vision_feature_select_strategy`` ("default" drops the first token,
    a CLS token; "full" keeps all). The heads read the same tokens, so they judge what the caption
    is made from, whatever layer a checkpoint's config names."""

    layer: int | tuple[int, ...] = -1
    strategy: str = "default"

    @classmethod
    def of(cls, llava_config) -> TokenSelection:
        layer = llava_config.vision_feature_layer
        return cls(layer if isinstance(layer, int) else tuple(layer), llava_config.vision_feature_select_strategy)


def image_tokens(vision_tower, pixel_values, selection: TokenSelection):
    """The tokens LLaVA hands its projector, selected as LlavaModel.get_image_features selects them."""
    import torch

    hidden = vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    layers = [selection.layer] if isinstance(selection.layer, int) else list(selection.layer)
    picked = [hidden[i][:, 1:] if selection.strategy == "default" else hidden[i] for i in layers]
    return picked[0] if len(picked) == 1 else torch.cat(picked, dim=-1)


def pooled_patches(vision_tower, pixel_values, selection: TokenSelection, patch_tokens=None):
    """The tower's picture summary the heads read: the mean of the tokens LLaVA projects.
    Training and serving both call this, so the heads always see what they were trained on;
    training passes the patch tokens it already has."""
    if patch_tokens is None:
        patch_tokens = image_tokens(vision_tower, pixel_values, selection)
    return patch_tokens.mean(dim=1)


def focused_patches(patch_tokens, main_logits):
    """The tokens' mean weighted towards the main object: by the softmax over the tokens of the
    main head's logits (how much of each token's cell the main object covers). What the colour
    and shape heads read when a model has a main head, so a busy background around a small
    object weighs less than in the plain mean."""
    return (main_logits.softmax(-1).unsqueeze(-1) * patch_tokens).sum(dim=1)


@dataclass(frozen=True)
class SceneReading:
    color: str
    shape: str
    p_color: float
    p_shape: float
    p_object: float  # the highest probability that some known colour-shape object is present
    background: str = ""  # a colour name, "photo" or "textured"
    p_background: float = 0.0

    @property
    def confidence(self) -> float:
        """As sure as its least sure part: an object of some kind, its colour, its shape."""
        return min(self.p_object, self.p_color, self.p_shape)

    def sure_parts(self, at_least: float) -> tuple[str | None, str | None]:
        """The main object's colour and shape where the heads are at least this sure of each (and
        that a known object is there at all), else None: what an answer may not contradict."""
        if self.p_object < at_least:
            return None, None
        return (
            self.color if self.p_color >= at_least else None,
            self.shape if self.p_shape >= at_least else None,
        )


_READ_HEADS = ("color", "shape", "objects", "background", "position")


class SceneHeads:
    """The heads' weights and label names, loaded from a model folder."""

    def __init__(self, weights: dict, labels: dict):
        self.weights = weights
        self.labels = labels

    @classmethod
    def load(cls, model_dir: str | Path) -> SceneHeads | None:
        """The heads of a local model folder, or None when it has none (every Hub checkpoint)."""
        folder = Path(model_dir)
        if not (folder / HEADS_FILE).is_file() or not (folder / LABELS_FILE).is_file():
            return None
        from safetensors.torch import load_file

        return cls(load_file(str(folder / HEADS_FILE)), json.loads((folder / LABELS_FILE).read_text()))

    @property
    def focused(self) -> frozenset[str]:
        """The heads that read the tokens weighted by the main head (focused_patches); the others
        read their plain mean. The labels file names them ("focused"); a model saved before it did
        read colour and shape that way whenever it had a main head."""
        if "main.weight" not in self.weights:
            return frozenset()
        return frozenset(self.labels.get("focused", ("color", "shape")))

    def _logits(self, pooled, head: str):
        w, b = self.weights[f"{head}.weight"], self.weights[f"{head}.bias"]
        return pooled.float() @ w.T.float() + b.float()

    def _cells(self, pooled, chosen, n: int):
        """The cell of each picture's 3x3 grid where the position head places the main object,
        from every view's reading turned back to the picture's frame."""
        import torch

        grids = self._logits(pooled, "position").softmax(-1).view(len(chosen), n, 3, 3)
        back = torch.stack([_unview(grids[k], turns, mirrored) for k, (turns, mirrored) in enumerate(chosen)])
        return back.mean(0).flatten(1).argmax(-1)

    def read(
        self,
        vision_tower,
        pixel_values,
        selection: TokenSelection,
        views: str = DEFAULT_VIEWS,
        zoom: float | None = None,
    ) -> list[SceneReading]:
        """The heads' reading of each picture, from the ``views`` of it (``VIEWS``) together: each
        probability is the mean of the views' readings. ``selection`` is the LLaVA config's
        (TokenSelection.of). With ``zoom`` (ZOOM; and a position head), the main object's colour and
        shape also average the same views of a crop around it. Each view costs one tower forward
        per picture, two with the zoom, for the demo model only."""
        import torch

        n = len(pixel_values)
        square = pixel_values.shape[-1] == pixel_values.shape[-2]
        chosen = [(turns, mirrored) for turns, mirrored in VIEWS[views] if square or turns % 2 == 0]
        dtype = next(vision_tower.parameters()).dtype
        focused = self.focused

        def head_inputs(pictures) -> dict:
            """Each head's input over the views: the plain mean of the tokens, or for the focused
            heads their mean weighted towards the main object."""
            batch = torch.cat([_view(pictures, turns, mirrored) for turns, mirrored in chosen])
            tokens = image_tokens(vision_tower, batch.to(dtype), selection)
            pooled = pooled_patches(vision_tower, None, selection, patch_tokens=tokens)
            focus = focused_patches(tokens, self._logits(tokens, "main").squeeze(-1)) if focused else None
            return {h: focus if h in focused else pooled for h in _READ_HEADS}

        def mean(probs):
            return probs.view(len(chosen), n, *probs.shape[1:]).mean(0)

        def probs(inputs, head: str, norm):
            return mean(norm(self._logits(inputs[head], head)))

        softmax = partial(torch.softmax, dim=-1)
        with torch.inference_mode():
            inputs = head_inputs(pixel_values)
            p_color, p_shape = probs(inputs, "color", softmax), probs(inputs, "shape", softmax)
            p_object = probs(inputs, "objects", torch.sigmoid).amax(-1)
            p_background = probs(inputs, "background", softmax)
            if zoom and "position.weight" in self.weights:
                closer = head_inputs(_zoomed(pixel_values, self._cells(inputs["position"], chosen, n), zoom))
                p_color = (p_color + probs(closer, "color", softmax)) / 2
                p_shape = (p_shape + probs(closer, "shape", softmax)) / 2
        out = []
        for c, s, o, b in zip(p_color, p_shape, p_object, p_background):
            ci, si, bi = int(c.argmax()), int(s.argmax()), int(b.argmax())
            out.append(
                SceneReading(
                    self.labels["color"][ci],
                    self.labels["shape"][si],
                    float(c[ci]),
                    float(s[si]),
                    float(o),
                    self.labels["background"][bi],
                    float(b[bi]),
                )
            )
        return out


# Below this the heads' own reading of the background is a guess, and an answer should not state a guess.
SURE_OF_BACKGROUND = 0.9
# At or above this the heads' reading of the main object's colour (or shape) overrules the
# decoder's words for it (answer_agreement.reconcile's ``sure``). 0: the heads' reading always
# names the main object. Chosen on 2,000 of the generator's own scenes, not the held-out sets
# (benchmarks/heads_overrule.py, demo-32664b726542), when the heads read the picture and its
# mirror image: 97.4% at 0 against 96.2% at 0.5 and 95.9% with no overrule. With the quarter
# turns (demo-41a7bf38d499, 300 own scenes) 0 and 0.3 tie at 97.0%, against 96.0% at 0.5, so it
# stands. Read from the picture alone, the heads gave 96.5% at 0 and 96.1% at 0.5, and 0.5 was
# the choice then (on 1,000 scenes over three builds).
SURE_OF_OBJECT = 0.0


def drop_unsure_background(alt_text: str, reading: SceneReading) -> str:
    """The alt text without its background clause when the tower is not sure what the background
    is, read another one than the text names, or the text says more than the tower reads (a
    gradient's two ends; the heads read one name): better unnamed than named wrong (issue 15)."""
    clause = background_clause(alt_text)
    if clause is None:
        return alt_text
    sure = reading.p_background >= SURE_OF_BACKGROUND and reading.background in clause.words
    if sure and "gradient" not in clause.words:
        return alt_text
    return without_background(alt_text, clause)
