"""Every supported LLaVA family, end to end: a tiny random-weight checkpoint of llava,
llava_next and llava_onevision (tests/checkpoint_support.py), a LoRA adapter trained a few
steps on it, both served by the real BentoML service; every answer parses."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from checkpoint_support import checkpoint_dir
from conftest import start_service, stop_service
from training.checkpoint_families import FAMILIES

pytestmark = [pytest.mark.service, pytest.mark.timeout(900)]

FAMILY_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}
# Photo shapes the anyres families tile differently (wide, tall, square, tiny).
SIZES = [(160, 60), (50, 140), (96, 96), (20, 33)]


def photo(size, color=(180, 40, 90), fmt="PNG") -> bytes:
    img = Image.new("RGB", size, color)
    img.paste((20, 160, 200), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_parses(answer: dict, num_hashtags: int) -> None:
    """What every answer must be, whatever the weights: a caption, distinct hashtags (at least one,
    at most the requested number: fewer specific tags rather than filler), an alt text."""
    assert answer["caption"].strip() and "\n" not in answer["caption"], answer
    assert answer["alt_text"].strip() and "\n" not in answer["alt_text"], answer
    tags = answer["hashtags"]
    assert 1 <= len(tags) <= num_hashtags and len(set(tags)) == len(tags), answer
    assert all(re.fullmatch(r"#[a-z0-9]*[a-z][a-z0-9]*", t) for t in tags), tags


def train_adapter(family: str, out: Path) -> Path:
    """A LoRA adapter trained a few steps on the family's checkpoint (training/finetune.py)."""
    from training.config import TrainingConfig
    from training.finetune import finetune

    cfg = TrainingConfig(
        name=f"{family}-lora-test",
        base_model=str(checkpoint_dir(family)),
        data=[{"kind": "synthetic", "scenes": 8, "seed": 5}],
        lora={"r": 4, "alpha": 8, "dropout": 0.0},  # target_modules: the family's defaults
        optimizer={"lr": 1e-3, "warmup_steps": 0},
        steps=2,
        batch_size=4,
        precision="fp32",
        eval={"holdout_fraction": 0.0},
    )
    result = finetune(cfg, out, progress=False, device="cpu")
    return result.adapter_dir


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    return {f: train_adapter(f, tmp_path_factory.mktemp(f"lora-{f}")) for f in FAMILIES}


def test_adapters_are_vllm_loadable_and_record_their_base(adapters):
    for family, adapter in adapters.items():
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert not config.get("modules_to_save"), family  # vLLM refuses adapters with full modules
        assert (adapter / "adapter_model.safetensors").is_file()
        meta = json.loads((adapter / "snap2caption_adapter.json").read_text())
        assert meta["base_identity"]["model_type"] == family


@pytest.fixture(scope="module", params=FAMILIES)
def family_service(request, adapters, tmp_path_factory):
    family = request.param
    svc = start_service(
        tmp_path_factory.mktemp(f"svc-{family}"),
        checkpoint_dir(family),
        {
            "SNAP2CAPTION_ADAPTER": str(adapters[family]),
            "SNAP2CAPTION_MAX_BATCH_SIZE": "8",
            "SNAP2CAPTION_CONSTRAINED": "true",  # the default; conftest turns it off for pipeline tests
        },
    )
    yield family, svc
    stop_service(svc.proc)


def test_each_family_serves_parseable_answers(family_service):
    family, svc = family_service
    with svc.client() as c:
        r = c.post(
            "/generate-caption",
            json={
                "image": b64(photo((120, 80))),
                "tone": "funny",
                "platform": "generic",
                "num_hashtags": 7,
                "num_candidates": 3,
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert "+adapter@" in body["model_version"]  # the LoRA adapter is merged in
        assert_parses(body, 7)
        assert len(body["candidates"]) == 3
        for cand in body["candidates"]:
            assert_parses(cand, 7)
        scores = [cand["score"] for cand in body["candidates"]]
        assert scores == sorted(scores, reverse=True)

        up = c.post(
            "/generate-caption/upload",
            files={"image": ("p.jpg", photo((60, 150), fmt="JPEG"), "image/jpeg")},
            data={"tone": "serious", "audience": "academic", "num_hashtags": "5"},
        )
        assert up.status_code == 200, up.text
        assert_parses(up.json(), 5)


def test_each_family_batches_photos_of_mixed_sizes(family_service):
    """Concurrent requests with different shapes and hashtag counts share model calls."""
    _, svc = family_service
    requests = [(SIZES[i % len(SIZES)], 5 + i % 6) for i in range(8)]
    with svc.client() as c:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda req: c.post(
                        "/generate-caption",
                        json={"image": b64(photo(req[0])), "num_hashtags": req[1], "platform": "generic"},
                    ),
                    requests,
                )
            )
        metrics = c.get("/metrics").text
    for r, (_, k) in zip(answers, requests):
        assert r.status_code == 200, r.text
        assert_parses(r.json(), k)
    count = float(re.search(r"^snap2caption_model_batch_size_count(?:\{[^}]*\})? (\S+)", metrics, re.M).group(1))
    total = float(re.search(r"^snap2caption_model_batch_size_sum(?:\{[^}]*\})? (\S+)", metrics, re.M).group(1))
    assert total > count, "every model call held one photo: nothing was batched"


@pytest.mark.parametrize("family", FAMILIES)
def test_one_model_call_mixing_sizes_and_counts_parses_every_answer(family):
    """The captioning core directly: one batch, every shape, every hashtag count, candidates."""
    from snap2caption_service.core.captioner import Captioner, CaptionJob

    captioner = Captioner.load(str(checkpoint_dir(family)), device="cpu")
    assert type(captioner.model).__name__ == FAMILY_CLASSES[family]
    jobs = [
        CaptionJob(Image.open(io.BytesIO(photo(SIZES[i % len(SIZES)]))).convert("RGB"), "casual", "personal", k, 2)
        for i, k in enumerate(range(5, 11))
    ]
    results = captioner.caption_batch(jobs)
    for job, cands in zip(jobs, results):
        assert len(cands) == 2
        for cand in cands:
            assert_parses(cand.model_dump(), job.num_hashtags)


def refused_start(tmp_path: Path, model: Path, env: dict | None = None) -> str:
    """Start the service on a model it must refuse; the server stops itself (not a worker
    restarted forever). Returns the reason it logged."""
    with pytest.raises(RuntimeError, match="service exited"):
        svc = start_service(tmp_path, model, env, timeout=120)
        stop_service(svc.proc)
    logged = "".join(p.read_text() for p in tmp_path.glob("service-*.log"))
    return next(line for line in logged.splitlines() if "cannot serve the configured model" in line)


def test_an_adapter_on_another_base_is_refused_at_start_up(adapters, tmp_path):
    reason = refused_start(tmp_path, checkpoint_dir("llava_next"), {"SNAP2CAPTION_ADAPTER": str(adapters["llava"])})
    assert "was trained on" in reason and str(checkpoint_dir("llava")) in reason
    assert str(checkpoint_dir("llava_next")) in reason


def test_an_unsupported_architecture_is_refused_at_start_up(tmp_path):
    from transformers import Qwen2VLConfig

    folder = tmp_path / "qwen2-vl"
    Qwen2VLConfig().save_pretrained(folder)  # what a user pointing at Qwen2-VL has: its config
    reason = refused_start(tmp_path, folder)
    assert "'qwen2_vl' model" in reason and "llava, llava_next, llava_onevision" in reason


def test_a_checkpoint_missing_weights_is_refused_not_half_loaded(tmp_path):
    from safetensors.torch import load_file, save_file

    from snap2caption_service.core.captioner import UnsupportedCheckpoint, load_checkpoint

    folder = tmp_path / "partial"
    shutil.copytree(checkpoint_dir("llava_next"), folder)
    weights = load_file(folder / "model.safetensors")
    dropped = next(k for k in weights if "q_proj" in k and "language_model" in k)
    del weights[dropped]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UnsupportedCheckpoint, match="does not load cleanly") as failed:
        load_checkpoint(str(folder))
    assert "missing" in str(failed.value)
