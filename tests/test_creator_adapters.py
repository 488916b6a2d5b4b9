"""Per-creator adapters served unmerged (core/creator_adapters.py, issue 17 §2-3): a batch mixing
8 creators and the champion answers row for row as each creator alone; LRU eviction really
deletes; a wrong champion_version, an unknown creator or a broken adapter gets the champion; a
promotion in the real MLflow registry is served after the refresh without a restart; and the
real service names the adapter in model_version (HTTP and the upload form).

benchmarks/adapter_throughput.py builds its adapters and registers them with the helpers here.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from snap2caption_service.core.captioner import Captioner, CaptionJob
from snap2caption_service.core.creator_adapters import CreatorAdapter, CreatorRegistry, ResidentAdapters
from snap2caption_service.core.settings import GenerationSettings

# Short unconstrained answers, as the service tests use: row equality does not need the grammar.
FAST = GenerationSettings(max_new_tokens=24, constrained=False)
CREATORS = 8


def make_adapter(model, folder: Path, seed: int, random_weights: bool = True, r: int = 4) -> Path:
    """A LoRA adapter on ``model``'s language model (as training/finetune.py targets it), saved to
    ``folder`` and removed from the model again. ``random_weights``: non-zero A and B (fixed seed),
    so its answers differ from the champion's; else peft's own start (B = 0), an adapter that costs
    what a trained one costs and answers what the champion answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    from training.finetune import lora_target_pattern

    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=8 * r if random_weights else r,  # random: large enough that every adapter changes answers
        target_modules=lora_target_pattern(["q_proj", "k_proj", "v_proj", "o_proj"]),
        init_lora_weights=not random_weights,
    )
    peft = get_peft_model(model, config)
    peft.save_pretrained(folder, safe_serialization=True)
    peft.unload()
    return folder


def register_creator_version(uri: str, model: str, folder: Path, creator_id: str, champion_version: str) -> str:
    """A version of the creators' model with the contract's tags, its source a run's adapter
    artifact (as training/registry.py registers), and the creator's alias moved to it."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.tracking import MlflowClient

    from snap2caption_service.core.registry import CHAMPION_VERSION_TAG, CREATOR_TAG, creator_alias

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "adapter")
    try:
        client.create_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = RunsArtifactRepository.get_underlying_uri(f"runs:/{run.info.run_id}/adapter")
    tags = {CREATOR_TAG: creator_id, CHAMPION_VERSION_TAG: champion_version}
    mv = client.create_model_version(model, source=source, run_id=run.info.run_id, tags=tags)
    client.set_registered_model_alias(model, creator_alias(creator_id), mv.version)
    return str(mv.version)


def scene_images(n: int) -> list:
    from training import synthetic

    return [synthetic.render_scene(e.scene) for e in synthetic.make_examples(n, 4242)]


def answers(per_job) -> list[tuple]:
    return [(c[0].caption, tuple(c[0].hashtags), c[0].alt_text) for c in per_job]


@pytest.fixture(scope="module")
def adapter_dirs(demo_model_dir, tmp_path_factory) -> list[Path]:
    from snap2caption_service.core.captioner import load_checkpoint

    model, _ = load_checkpoint(str(demo_model_dir))
    root = tmp_path_factory.mktemp("creator-adapters")
    return [make_adapter(model, root / f"c{i}", seed=100 + i) for i in range(CREATORS)]


@pytest.fixture
def captioner(demo_model_dir) -> Captioner:
    return Captioner.load(str(demo_model_dir), generation=FAST, version="champion-under-test")


def local(folders: list[Path]):
    """A lookup over local folders: creator 'creator-<i>' -> adapter i (the registry's part is tested below)."""
    by_id = {
        f"creator-{i}": CreatorAdapter(f"creators_v{i + 1}", f"m-creators:v{i + 1}", f) for i, f in enumerate(folders)
    }
    return lambda creator_id: by_id.get(creator_id)


def test_mixed_batch_equals_each_creator_alone(captioner, adapter_dirs, demo_model_dir):
    images = scene_images(32)
    champion = answers(captioner.caption_batch([CaptionJob(img) for img in images]))  # the plain model

    adapters = ResidentAdapters(captioner, local(adapter_dirs), max_resident=CREATORS)
    who = [i % (CREATORS + 1) for i in range(32)]  # CREATORS = the champion
    held = [adapters.acquire(f"creator-{w}") if w < CREATORS else None for w in who]
    jobs = [CaptionJob(img, adapter=a.name if a else None) for img, a in zip(images, held)]
    mixed = answers(captioner.caption_batch(jobs))
    adapters.release(held)

    for w in range(CREATORS + 1):
        rows = [i for i in range(32) if who[i] == w]
        alone = answers(captioner.caption_batch([jobs[i] for i in rows]))
        assert [mixed[i] for i in rows] == alone, f"creator {w}"
    assert [mixed[i] for i in range(32) if who[i] == CREATORS] == [champion[i] for i in range(32) if who[i] == CREATORS]
    differ = {who[i] for i in range(32) if who[i] < CREATORS and mixed[i] != champion[i]}
    assert len(differ) >= CREATORS - 1, f"random adapters should change answers; only {sorted(differ)} did"

    # A creator's rows through adapter_names answer as that adapter merged into the model would.
    from peft import PeftModel

    from snap2caption_service.core.captioner import load_checkpoint

    base, processor = load_checkpoint(str(demo_model_dir))
    merged = Captioner(PeftModel.from_pretrained(base, adapter_dirs[0]).merge_and_unload().eval(), processor, "m", FAST)
    # The same scene heads, so both answers are checked alike (core/answer_agreement.py): a random
    # adapter's words can name a colour and shape, which the heads then rename.
    merged.scene_heads = captioner.scene_heads
    rows = [i for i in range(32) if who[i] == 0]
    assert answers(merged.caption_batch([CaptionJob(images[i]) for i in rows])) == [mixed[i] for i in rows]


def test_lru_evicts_and_deletes_and_the_last_one_restores_the_plain_model(captioner, adapter_dirs):
    loads, resident = [], []
    adapters = ResidentAdapters(
        captioner,
        local(adapter_dirs),
        max_resident=2,
        on_load=lambda s, ok: loads.append(ok),
        on_resident=resident.append,
    )
    a, b = adapters.acquire("creator-0"), adapters.acquire("creator-1")
    adapters.release([a, b])
    assert adapters.acquire("creator-0") == a  # resident: no load, and now the most recently used
    adapters.release([a])
    c = adapters.acquire("creator-2")
    assert b.name not in captioner.peft_model.peft_config  # delete_adapter was done, not just forgotten
    assert set(captioner.peft_model.peft_config) == {a.name, c.name}
    assert loads == [True, True, True] and resident[-1] == 2
    # A pinned adapter outlives the bound: a batch in flight keeps its adapters.
    d = adapters.acquire("creator-3")
    assert c.name in captioner.peft_model.peft_config and d.name in captioner.peft_model.peft_config
    adapters.release([c, d])
    assert set(captioner.peft_model.peft_config) == {c.name, d.name}

    adapters.max_resident = 0
    adapters.release([])
    assert captioner.peft_model is None  # all gone: generate runs on the plain model again
    img = scene_images(1)[0]
    assert answers(captioner.caption_batch([CaptionJob(img)]))  # and still works


def test_unknown_broken_or_failing_creators_get_the_champion(captioner, adapter_dirs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapter_dirs[0] / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")

    def lookup(creator_id):
        if creator_id == "down":
            raise ConnectionError("registry unreachable")
        return CreatorAdapter("creators_v9", "m-creators:v9", broken) if creator_id == "broken" else None

    loads = []
    adapters = ResidentAdapters(captioner, lookup, on_load=lambda s, ok: loads.append(ok))
    assert adapters.acquire("nobody") is None
    assert adapters.acquire("down") is None
    assert adapters.acquire("broken") is None and loads == [False]
    assert adapters.acquire("broken") is None and loads == [False]  # remembered until the refresh
    assert captioner.peft_model is None  # nothing half-loaded stays in the model


@pytest.fixture
def creators_model(mlflow_uri) -> str:
    return f"creators-test-{uuid.uuid4().hex[:8]}"


def test_champion_version_mismatch_gets_the_champion(mlflow_uri, creators_model, adapter_dirs, captioner, tmp_path):
    from snap2caption_service.core.registry import creators_model_name

    register_creator_version(mlflow_uri, creators_model_name(creators_model), adapter_dirs[0], "ana", "7")
    register_creator_version(mlflow_uri, creators_model_name(creators_model), adapter_dirs[1], "bo", "3")
    source = CreatorRegistry("3", tmp_path / "cache", creators_model, mlflow_uri)
    assert source.lookup("ana") is None  # trained on champion 7, champion 3 is served
    assert source.lookup("nobody") is None
    bo = source.lookup("bo")
    assert bo is not None and bo.label == f"{creators_model_name(creators_model)}:v2"
    assert (bo.folder / "adapter_model.safetensors").is_file() and tmp_path / "cache" in bo.folder.parents


def test_a_promotion_is_served_after_the_refresh_and_the_old_one_unloaded(
    mlflow_uri, creators_model, adapter_dirs, captioner, tmp_path
):
    from snap2caption_service.core.registry import creators_model_name

    name = creators_model_name(creators_model)
    register_creator_version(mlflow_uri, name, adapter_dirs[0], "ana/with slash", "base")
    now = [0.0]
    source = CreatorRegistry("base", tmp_path / "cache", creators_model, mlflow_uri)
    adapters = ResidentAdapters(captioner, source.lookup, refresh_s=30, clock=lambda: now[0])
    v1 = adapters.acquire("ana/with slash")
    assert v1.label == f"{name}:v1"
    assert "with slash" not in str(v1.folder)  # a creator id never names a path
    adapters.release([v1])

    register_creator_version(mlflow_uri, name, adapter_dirs[1], "ana/with slash", "base")  # promoted: alias -> v2
    now[0] = 10.0
    assert adapters.acquire("ana/with slash") == v1  # within the refresh interval
    adapters.release([v1])
    now[0] = 31.0
    v2 = adapters.acquire("ana/with slash")
    assert v2.label == f"{name}:v2"
    assert set(captioner.peft_model.peft_config) == {v2.name}  # v1 unloaded, no restart
    adapters.release([v2])


def test_service_names_the_adapter_in_model_version(mlflow_uri, creators_model, adapter_dirs, demo_model_dir, tmp_path):
    from conftest import png_bytes, start_service, stop_service
    from snap2caption_service.core.contracts import CaptionOptions
    from snap2caption_service.core.registry import creators_model_name
    from stream.service_client import request_body

    name = creators_model_name(creators_model)
    version = register_creator_version(mlflow_uri, name, adapter_dirs[0], "ana", "base")
    svc = start_service(
        tmp_path,
        demo_model_dir,
        {"MLFLOW_TRACKING_URI": mlflow_uri, "SNAP2CAPTION_REGISTERED_MODEL": creators_model},
    )
    try:
        import base64

        image = png_bytes()
        with svc.client() as c:
            plain = c.post("/generate-caption", json={"image": base64.b64encode(image).decode()})
            assert plain.status_code == 200, plain.text
            champion = plain.json()["model_version"]
            assert "+" not in champion
            for creator, want in (("ana", f"{champion}+{name}:v{version}"), ("nobody", champion)):
                r = c.post("/generate-caption", json={"image": base64.b64encode(image).decode(), "creator_id": creator})
                assert r.status_code == 200 and r.json()["model_version"] == want, r.text
            form = c.post("/generate-caption/upload", files={"image": image}, data={"creator_id": "ana"})
            assert form.status_code == 200 and form.json()["model_version"] == f"{champion}+{name}:v{version}"
            metrics = c.get("/metrics").text
        assert 'snap2caption_creator_adapter_loads_total{outcome="ok"} 1.0' in metrics
        assert "snap2caption_model_batch_adapter_rows_bucket" in metrics
    finally:
        stop_service(svc.proc)
    # Kafka upload events reach the same route with the event's creator_id (stream/service_client.py).
    _, pieces = request_body(b"x", CaptionOptions(creator_id="ana"))
    assert json.loads(b"".join(pieces))["creator_id"] == "ana"
