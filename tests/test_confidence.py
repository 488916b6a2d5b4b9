"""Issue 15 §3: every answer carries a confidence, an answer the model doubts is flagged rather
than served as fine, and GET /info says which model answers and what it knows."""

from __future__ import annotations

import base64
import io
import json
import math
import random

import pytest
from PIL import Image

from snap2caption_service.core.contracts import Candidate, CaptionOptions, ModelDescription
from snap2caption_service.core.scene_heads import HEADS_FILE, LABELS_FILE, SceneHeads, SceneReading
from snap2caption_service.serving.pipeline import LOW_CONFIDENCE_NOTICE, ModelOutput, build_result


def _output(confidence: float | None) -> ModelOutput:
    cand = Candidate(caption="A red circle.", hashtags=["#redcircle"], alt_text="A red circle.", score=-0.5)
    cand.confidence = confidence
    return ModelOutput(candidates=[cand], model_version="m")


@pytest.mark.parametrize(
    ("confidence", "threshold", "flagged"),
    [(0.9, 0.35, False), (0.2, 0.35, True), (0.35, 0.35, False), (None, 0.35, False), (0.2, 0.0, False)],
)
def test_an_answer_below_the_threshold_is_flagged_not_hidden(confidence, threshold, flagged):
    result = build_result(_output(confidence), "a" * 32, 1.0, "", CaptionOptions(), min_confidence=threshold)
    assert result.caption == "A red circle."  # still answered: the creator decides
    assert result.confidence == confidence
    assert result.low_confidence is flagged
    assert result.notice == (LOW_CONFIDENCE_NOTICE if flagged else None)


def test_scene_reading_is_as_sure_as_its_least_sure_part():
    reading = SceneReading("red", "circle", p_color=0.9, p_shape=0.8, p_object=0.1)
    assert reading.confidence == 0.1  # no known object: whatever colour and shape it would be


def test_a_folder_without_heads_has_none(tmp_path):
    assert SceneHeads.load(tmp_path) is None
    (tmp_path / LABELS_FILE).write_text("{}")
    assert SceneHeads.load(tmp_path) is None  # labels alone are not heads


@pytest.mark.parametrize("vision_kind", ["clip", "focalnet", "hybrid"])
def test_demo_build_ships_heads_the_captioner_reads(tmp_path, vision_kind):
    """A (very short) demo build saves its vision heads; the captioner loads them and every answer
    gets the heads' confidence, the same for each candidate of one picture. Every tower kind the
    demo architecture offers builds, saves, loads and captions."""
    from snap2caption_service.core.captioner import Captioner, CaptionJob
    from training import synthetic
    from training.build_demo import DemoRecipe, build_demo_model
    from training.demo_model import HYBRID_ARCHITECTURE, DemoArchitecture

    recipe = DemoRecipe(
        vision_scenes=64,
        vision_steps=2,
        train_examples=16,
        steps=1,
        batch_size=8,
        vision_batch_size=16,
        compile_decoder=False,
    )
    arch = HYBRID_ARCHITECTURE if vision_kind == "hybrid" else DemoArchitecture(vision_kind=vision_kind)
    meta = build_demo_model(tmp_path, recipe, arch, progress=False)
    assert meta["cpu"] and meta["steps"] == 1  # a build time is reported with the CPU it ran on
    assert (tmp_path / HEADS_FILE).is_file()
    labels = json.loads((tmp_path / LABELS_FILE).read_text())
    assert labels["color"] == list(synthetic.COLORS) and labels["shape"] == list(synthetic.SHAPES)
    assert labels["focused"] == ["color", "shape", "objects"]  # the confidence reads where the main object is

    cap = Captioner.load(str(tmp_path))
    assert cap.scene_heads is not None
    # Where the main object lies, one logit per token: colour and shape read the tokens by it.
    assert cap.scene_heads.weights["main.weight"].shape == (1, arch.vision_hidden)
    scene = synthetic.sample_scene(random.Random(3))
    [cands] = cap.caption_batch([CaptionJob(synthetic.render_scene(scene), num_hashtags=3, num_candidates=2)])
    assert len({c.confidence for c in cands}) == 1 and 0.0 <= cands[0].confidence <= 1.0
    described = cap.describe()
    assert "coloured shapes" in described["knows"] and "scene heads" in described["confidence_source"]


def test_without_heads_confidence_is_the_mean_token_probability(tiny_model_dir):
    from snap2caption_service.core.captioner import Captioner, CaptionJob

    cap = Captioner.load(str(tiny_model_dir))
    assert cap.scene_heads is None
    [cands] = cap.caption_batch([CaptionJob(Image.new("RGB", (32, 32), "red"), num_hashtags=2)])
    assert cands[0].confidence == pytest.approx(math.exp(cands[0].score), abs=1e-3)
    described = cap.describe()
    assert described["demo"] is False and "token probability" in described["confidence_source"]


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.service
def test_info_and_confidence_over_http(service):
    with service.client() as c:
        info = c.get("/info")
        answer = c.post("/generate-caption", json={"image": _png_b64()})
    assert info.status_code == 200, info.text
    body = ModelDescription.model_validate(info.json())
    assert body.model_type == "llava" and body.demo is False and body.min_confidence == 0.35
    assert "SNAP2CAPTION_MODEL" in body.serve_a_checkpoint
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert 0.0 <= result["confidence"] <= 1.0
    assert result["low_confidence"] is (result["confidence"] < body.min_confidence)
    assert (result["notice"] is not None) is result["low_confidence"]


def test_an_unsure_or_contradicted_background_is_left_out_of_the_alt_text():
    from snap2caption_service.core.scene_heads import SceneReading, drop_unsure_background

    def reading(background, p):
        return SceneReading("red", "circle", 0.99, 0.99, 0.99, background, p)

    alt = "A large red circle in the center, on a plain gray background."
    assert drop_unsure_background(alt, reading("gray", 0.97)) == alt  # sure, and the same
    assert drop_unsure_background(alt, reading("gray", 0.6)) == "A large red circle in the center."
    assert drop_unsure_background(alt, reading("photo", 0.99)) == "A large red circle in the center."
    photo = "A small blue star at the top and a red square, on a photo background."
    assert drop_unsure_background(photo, reading("photo", 0.95)) == photo
    grad = "A medium white star on the left, on a gradient background from brown to teal."
    assert drop_unsure_background(grad, reading("textured", 0.95)) == "A medium white star on the left."
    # The heads read one name: a gradient's second end is more than the tower saw.
    assert drop_unsure_background(grad, reading("brown", 0.99)) == "A medium white star on the left."
    assert drop_unsure_background("A red circle.", reading("gray", 0.1)) == "A red circle."


def test_demo_cache_key_covers_the_tower_kind_and_keeps_old_keys():
    """Another tower kind is another model (its own cache folder); the default kind, added as a
    field after models were built, leaves the built models' keys as they were."""
    import hashlib
    import json
    from dataclasses import asdict, replace

    from training import build_demo, synthetic
    from training.build_demo import DemoRecipe, recipe_key
    from training.demo_model import ARCHITECTURE_VERSION, HYBRID_ARCHITECTURE, DemoArchitecture

    recipe = DemoRecipe()
    assert recipe_key(recipe, DemoArchitecture(vision_kind="focalnet")) != recipe_key(recipe, DemoArchitecture())
    assert recipe_key(recipe, HYBRID_ARCHITECTURE) != recipe_key(
        recipe, replace(HYBRID_ARCHITECTURE, vision_conv_depths=(1, 1, 1))
    )
    before = asdict(DemoArchitecture())
    for added_later in ("vision_kind", "vision_conv_depths", "vision_conv_widths"):
        del before[added_later]
    blob = {
        "generator": synthetic.GENERATOR_VERSION,
        "architecture": ARCHITECTURE_VERSION,
        "trainer": build_demo.TRAINER_VERSION,
        "recipe": asdict(recipe),
        "arch": before,
    }
    old = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]
    assert recipe_key(recipe, DemoArchitecture()) == old


def test_the_demo_recipe_names_its_scene_mix_and_the_key_covers_it(tmp_path):
    """The mix a demo model is trained on decides its weights, so it is part of the cache key, and
    the default build is the hybrid tower on the world mix (issue 15)."""
    from dataclasses import replace

    from training.build_demo import DemoRecipe, build_demo_model, demo_model_dir, recipe_key
    from training.demo_model import HYBRID_ARCHITECTURE

    recipe = DemoRecipe()
    assert recipe.mix == "world"
    assert recipe_key(recipe, HYBRID_ARCHITECTURE) != recipe_key(replace(recipe, mix="flat"), HYBRID_ARCHITECTURE)
    assert demo_model_dir(tmp_path) == demo_model_dir(tmp_path, recipe, HYBRID_ARCHITECTURE)
    with pytest.raises(ValueError, match="unknown scene mix 'wrold'; known: flat, world"):
        build_demo_model(tmp_path / "out", replace(recipe, mix="wrold"), HYBRID_ARCHITECTURE, progress=False)
    assert not (tmp_path / "out").exists()


class _AsymmetricTower:
    """A stand-in vision tower whose tokens depend on where things are in the picture, so a
    picture and its mirror image give different tokens."""

    def __init__(self):
        import torch

        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3 * 8 * 8, 5 * 6)

    def parameters(self):
        return self.proj.parameters()

    def __call__(self, pixel_values, output_hidden_states=True):
        from types import SimpleNamespace

        return SimpleNamespace(hidden_states=(self.proj(pixel_values.flatten(1)).view(len(pixel_values), 5, 6),))


def _random_heads(main: bool = False, focused: list[str] | None = None):
    """Scene heads of random weights over the stand-in tower's 6-wide tokens, a position head
    included, and with ``main`` a main-object head over each token (read by the ``focused`` heads)."""
    import torch

    labels = {"color": ["red", "blue", "green"], "shape": ["circle", "star"], "background": ["white", "photo"]}
    labels |= {"focused": focused} if focused else {}
    sizes = {"color": 3, "shape": 2, "objects": 6, "background": 2, "position": 9} | ({"main": 1} if main else {})
    weights = {}
    for head, n in sizes.items():
        weights[f"{head}.weight"], weights[f"{head}.bias"] = torch.randn(n, 6) * 3, torch.randn(n)
    return SceneHeads(weights, labels)


def test_the_heads_read_a_picture_turned_or_mirrored_alike():
    """Colour, shape, objects and background are the same in a picture turned by quarter turns
    or mirrored, so the heads read the views scene_heads.VIEWS names and average them
    (benchmarks/heads_views.py): a picture and its turned copies get one reading with the served
    views, and so do a picture and its mirror image with "mirror"; from the picture alone they
    would not. A picture that is not square is read from its half turn only. The zoom (a crop
    around where the position head places the main object) keeps this: the place is read in the
    picture's frame, so a turned picture's crop is the turned crop."""
    import torch

    from snap2caption_service.core.scene_heads import DEFAULT_VIEWS, TokenSelection

    assert DEFAULT_VIEWS == "turns"
    torch.manual_seed(1)
    tower, selection = _AsymmetricTower(), TokenSelection()
    pixels = torch.randn(4, 3, 8, 8)
    for heads in (_random_heads(), _random_heads(main=True), _random_heads(True, ["color", "shape", "objects"])):
        for zoom in (None, 0.75):
            _check_turned_alike(heads, tower, selection, pixels, zoom)


def _check_turned_alike(heads, tower, selection, pixels, zoom):
    import torch

    def probs(readings):
        return [p for r in readings for p in (r.p_color, r.p_shape, r.p_object, r.p_background)]

    def same(a, b):
        return [(r.color, r.shape, r.background) for r in a] == [(r.color, r.shape, r.background) for r in b] and (
            probs(a) == pytest.approx(probs(b), abs=1e-6)
        )

    for other, views in [
        (pixels.rot90(1, (-2, -1)), "turns"),
        (pixels.rot90(3, (-2, -1)), "turns"),
        (pixels.flip(-1), "mirror"),
    ]:
        alone, alone_other = (
            heads.read(tower, pixels, selection, "picture", zoom),
            heads.read(tower, other, selection, "picture", zoom),
        )
        assert probs(alone) != pytest.approx(probs(alone_other), abs=1e-3)
        assert same(heads.read(tower, pixels, selection, views, zoom), heads.read(tower, other, selection, views, zoom))
    wide = torch.randn(2, 3, 6, 8)
    square, tower.proj = tower.proj, torch.nn.Linear(3 * 6 * 8, 30)
    assert same(
        heads.read(tower, wide, selection, zoom=zoom), heads.read(tower, wide.rot90(2, (-2, -1)), selection, zoom=zoom)
    )
    tower.proj = square


def test_with_a_main_head_the_focused_heads_read_the_tokens_where_the_main_object_is():
    """A model whose main head says which tokens hold the main object has the heads its labels file
    names "focused" read from those tokens (scene_heads.focused_patches), and the others from all
    of them; a model saved before the file named them focused colour and shape; without a main
    head every token weighs alike."""
    import torch

    from snap2caption_service.core.scene_heads import TokenSelection, focused_patches

    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])
    assert torch.allclose(focused_patches(tokens, torch.tensor([[30.0, -30.0, -30.0]])), torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(focused_patches(tokens, torch.zeros(1, 3)), tokens.mean(1))

    torch.manual_seed(3)
    tower, selection, pixels = _AsymmetricTower(), TokenSelection(), torch.randn(4, 3, 8, 8)
    older = _random_heads(main=True)
    plain = SceneHeads({k: v for k, v in older.weights.items() if not k.startswith("main.")}, older.labels)
    named = SceneHeads(older.weights, {**older.labels, "focused": ["color", "shape", "objects"]})
    assert (older.focused, plain.focused) == ({"color", "shape"}, frozenset())
    assert named.focused == {"color", "shape", "objects"}
    a, b, c = (heads.read(tower, pixels, selection, zoom=None) for heads in (older, plain, named))

    def read(readings, *parts):
        return [getattr(r, p) for r in readings for p in parts]

    assert read(a, "p_color", "p_shape") != pytest.approx(read(b, "p_color", "p_shape"), abs=1e-3)
    assert read(a, "p_object", "p_background") == pytest.approx(read(b, "p_object", "p_background"))
    assert read(c, "p_color", "p_shape", "p_background") == pytest.approx(read(a, "p_color", "p_shape", "p_background"))
    assert read(c, "p_object") != pytest.approx(read(a, "p_object"), abs=1e-3)


def test_each_view_of_the_grid_of_places_turns_back_to_the_picture():
    import torch

    from snap2caption_service.core.scene_heads import VIEWS, _unview, _view

    grid = torch.arange(9.0).view(1, 3, 3)
    for turns, mirrored in VIEWS["turns_and_mirror"]:
        assert torch.equal(_unview(_view(grid, turns, mirrored), turns, mirrored), grid)
    # A quarter turn is counter-clockwise: the picture's top-left cell is its view's bottom-left.
    assert _view(grid, 1, False)[0, 2, 0] == grid[0, 0, 0]


def test_the_zoom_crops_around_the_cell_inside_the_picture():
    """A crop of 3/4 of the side around a cell's centre, moved inside the picture and resized
    back: the top-left cell's crop starts at the corner, the centre's is centred."""
    import torch

    from snap2caption_service.core.scene_heads import _zoomed

    pictures = torch.arange(64.0).view(1, 1, 8, 8).repeat(3, 1, 1, 1)
    out = _zoomed(pictures, torch.tensor([0, 4, 8]), 0.75)
    assert out.shape == pictures.shape
    # Resizing a 6x6 crop to 8x8 keeps its values' range and mean: compare with the crop itself.
    for i, (top, left) in enumerate([(0, 0), (1, 1), (2, 2)]):  # cells 0, 4 and 8
        crop = pictures[i, 0, top : top + 6, left : left + 6]
        assert out[i, 0].min() >= crop.min() - 1e-5 and out[i, 0].max() <= crop.max() + 1e-5
        assert out[i, 0].mean() == pytest.approx(crop.mean(), abs=0.5)


def test_the_zoom_changes_colour_and_shape_only_and_needs_a_position_head():
    """The zoom averages a crop's colour and shape into the reading; the objects and background
    stay the whole picture's. Heads saved without a position head are read without it."""
    import torch

    from snap2caption_service.core.scene_heads import TokenSelection

    torch.manual_seed(2)
    heads, tower, selection = _random_heads(), _AsymmetricTower(), TokenSelection()
    pixels = torch.randn(4, 3, 8, 8)
    closer, whole = heads.read(tower, pixels, selection, zoom=0.75), heads.read(tower, pixels, selection, zoom=None)
    assert [p for r in closer for p in (r.p_color, r.p_shape)] != pytest.approx(
        [p for r in whole for p in (r.p_color, r.p_shape)], abs=1e-3
    )
    assert [(r.p_object, r.p_background, r.background) for r in closer] == [
        (r.p_object, r.p_background, r.background) for r in whole
    ]
    older = SceneHeads({k: v for k, v in heads.weights.items() if not k.startswith("position.")}, heads.labels)
    assert older.read(tower, pixels, selection, zoom=0.75) == older.read(tower, pixels, selection, zoom=None)
