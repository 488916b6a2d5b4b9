"""The Bento, built for real: the demo model imported into an isolated BentoML store, the
real `bentoml build` (dependencies locked from PyPI), its contents and generated Dockerfile
checked, `bentoml export`ed, imported into a fresh store and served from there, where
neither the repo nor the demo-model cache is in reach.

`bentoml containerize` needs a Docker engine, which this machine lacks; the Dockerfile it
would build is the one checked here. SNAP2CAPTION_BENTO_EXPORT_DIR (CI: bentos/) keeps the
exported archive; by default it goes to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import REPO, free_port, png_bytes, stop_service

pytestmark = pytest.mark.service

BUILD_TIMEOUT = 600  # locking resolves ~170 packages against PyPI; seconds when uv's cache is warm


def _env(home: Path, **extra) -> dict:
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "SNAP2CAPTION_ENV_FILE": "/nonexistent",
        "PYTHONPATH": str(REPO),
    }
    for name in ("SNAP2CAPTION_MODEL", "SNAP2CAPTION_ADAPTER", "MLFLOW_TRACKING_URI"):  # they outrank the Bento's model
        env.pop(name, None)
    env.update(extra)
    return env


def _run(args: list[str], env: dict, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


class Built:
    def __init__(self, home: Path, tag: str, stored: dict):
        self.home, self.tag, self.stored = home, tag, stored
        name, version = tag.split(":")
        self.path = home / "bentos" / name / version
        self.info = yaml.safe_load((self.path / "bento.yaml").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_model_dir) -> Built:
    """import-model (the demo model, as `make bento` does) then `bentoml build`, in a fresh store."""
    home = tmp_path_factory.mktemp("bentoml-home")
    env = _env(home)
    stored = json.loads(_run(["-m", "snap2caption_service", "import-model", "--json"], env).stdout)
    r = _run(["-m", "bentoml", "build", "--output", "tag"], env, timeout=BUILD_TIMEOUT)
    match = re.search(r"__tag__:(\S+)", r.stdout)
    assert match, f"no tag in bentoml build's output:\n{r.stdout}\n{r.stderr[-3000:]}"
    return Built(home, match.group(1), stored)


def test_import_model_stores_the_demo_model(built, demo_model_dir):
    demo_version = json.loads((demo_model_dir / "snap2caption_demo.json").read_text())["version"]
    assert built.stored["tag"] == f"snap2caption-captioner:{demo_version}"
    assert built.stored["version"] == demo_version and built.stored["source"] == "demo"
    weights = Path(built.stored["path"])
    assert (weights / "model.safetensors").is_file() and (weights / "tokenizer.json").is_file()
    assert weights.is_relative_to(built.home / "models")


def test_bento_yaml_names_service_model_and_config(built):
    info = built.info
    assert info["service"] == "snap2caption_service.service:Snap2Caption"
    assert info["name"] == "snap2caption" and info["labels"]["project"] == "snap2caption"
    assert [(m["tag"], m["alias"]) for m in info["models"]] == [(built.stored["tag"], "captioner")]
    assert {s["name"] for s in info["services"]} == {"snap2caption", "snap2caption-model"}
    envs = {e["name"]: e["value"] for e in info["envs"]}
    assert envs["SNAP2CAPTION_DATA_DIR"] == "/home/bentoml/snap2caption"
    routes = {r["route"] for r in info["schema"]["routes"]}
    assert {"/generate-caption", "/generate-caption/upload", "/feedback", "/events"} <= routes


def test_bento_source_tree_has_the_code_and_nothing_else(built):
    src = built.path / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    for needed in (
        "snap2caption_service/service.py",
        "snap2caption_service/core/model_store.py",
        "snap2caption_service/serving/web/index.html",
        "stream/consumer.py",
        "training/build_demo.py",
        "bentofile.yaml",
    ):
        assert needed in files, f"{needed} missing from the Bento"
    unwanted = [
        f
        for f in files
        if f.startswith(("tests/", "test-artifacts/", "bentos/", "benchmarks/", "k8s/"))
        or "__pycache__" in f
        or f.endswith((".pyc", ".bento", ".safetensors"))
    ]
    assert not unwanted, f"should not be in the Bento: {unwanted[:10]}"
    # The weights travel as the store model, not as source files.
    assert not any("models/demo-" in f for f in files)


def _requirements(built) -> dict[str, str]:
    pins = {}
    for line in (built.path / "env/python/requirements.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "--")):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\],]+)==([^\s;]+)(\s*;.*)?", line)
        assert m, f"requirement not pinned to one version: {line!r}"
        pins[re.sub(r"[-_.]+", "-", m.group(1).split("[")[0].lower())] = m.group(2)
    return pins


def test_requirements_are_locked_with_cuda_torch(built):
    pins = _requirements(built)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ]", dep)[0].lower())
        assert name in pins, f"{dep} is not pinned in the Bento's requirements"
    import bentoml

    assert pins["bentoml"] == bentoml.__version__
    assert len(pins) > 50, "transitive dependencies are pinned too"
    # PyPI's Linux x86_64 torch is the CUDA build: its CUDA runtime and cuDNN wheels are locked.
    assert "nvidia-cuda-runtime" in pins and any(n.startswith("nvidia-cudnn") for n in pins), sorted(pins)


def _dockerfile(built) -> str:
    return (built.path / "env/docker/Dockerfile").read_text()


def test_dockerfile_is_a_cuda_image_matching_torch(built):
    dockerfile = _dockerfile(built)
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-base-ubuntu\d+\.\d+", base)
    assert m, f"not a CUDA base image: {base}"
    cuda_runtime = _requirements(built)["nvidia-cuda-runtime"]
    assert m.group(1) == cuda_runtime.split(".")[0], (
        f"base image CUDA {m.group(1)} vs torch's CUDA runtime {cuda_runtime}: change them together"
    )
    assert "ENV NVIDIA_DRIVER_CAPABILITIES=" in dockerfile


def test_dockerfile_installs_the_lock_and_serves_the_bento(built):
    dockerfile = _dockerfile(built)
    assert "uv venv --python 3.11" in dockerfile
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    assert re.search(r"^COPY .* \. \./$", dockerfile, re.M), "the Bento (code, weights) is copied in"
    assert "EXPOSE 3000" in dockerfile and re.search(r"^USER bentoml$", dockerfile, re.M)
    entry = re.search(r'^ENTRYPOINT \[ "([^"]+)" \]', dockerfile, re.M).group(1)
    assert entry == "/home/bentoml/bento/env/docker/entrypoint.sh"
    script = (built.path / "env/docker/entrypoint.sh").read_text()
    assert 'set -- bentoml serve "$@" "$BENTO_PATH"' in script  # no arguments: serve this Bento
    for name, value in (
        ("SNAP2CAPTION_DATA_DIR", "/home/bentoml/snap2caption"),
        ("SNAP2CAPTION_DEVICE", "auto"),
        ("BENTO_PATH", "/home/bentoml/bento"),
    ):
        assert re.search(rf"^(ARG|ENV) {name}={re.escape(value)}$", dockerfile, re.M), f"{name} default missing"


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory) -> Path:
    # Absolute: bentoml export resolves a relative folder against "/".
    out = Path(os.environ.get("SNAP2CAPTION_BENTO_EXPORT_DIR") or tmp_path_factory.mktemp("bentos")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    version = built.tag.split(":")[1]
    _run(["-m", "bentoml", "export", built.tag, str(out)], _env(built.home))
    archive = out / f"snap2caption-{version}.bento"
    assert archive.is_file(), f"bentoml export wrote {sorted(p.name for p in out.iterdir())}"
    return archive


def test_exported_archive_carries_the_weights(built, exported):
    with tarfile.open(exported) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    model_dir = "models/" + built.stored["tag"].replace(":", "/")
    assert "bento.yaml" in names and "env/docker/Dockerfile" in names and "src/snap2caption_service/service.py" in names
    assert f"{model_dir}/hf/model.safetensors" in names, sorted(n for n in names if n.startswith("models/"))


def test_exported_bento_serves_its_packaged_model_anywhere(exported, built, tmp_path):
    """Imported into a fresh store and served away from the repo: the model must come from
    the archive (no repo on the path, an empty data dir: no demo-model cache to fall back on)."""
    home = tmp_path / "fresh-home"
    env = _env(home, SNAP2CAPTION_DATA_DIR=str(tmp_path / "data"), SNAP2CAPTION_MAX_NEW_TOKENS="24")
    env.pop("PYTHONPATH")
    _run(["-m", "bentoml", "import", str(exported)], env, cwd=tmp_path)  # the archive's models land in the store
    port = free_port()
    log_path = tmp_path / "bento-serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", built.tag, "--port", str(port), "--host", "127.0.0.1"],
        cwd=tmp_path,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        from snap2caption_service.core.process_tree import wait_until_up

        wait_until_up(url + "/readyz", proc, 180, log_path)
        import base64

        r = httpx.post(url + "/generate-caption", json={"image": base64.b64encode(png_bytes()).decode()}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == built.stored["version"]
        assert r.json()["caption"]
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert f'snap2caption_model_info{{version="{built.stored["version"]}"}} 1.0' in metrics
    finally:
        stop_service(proc)
    assert not (tmp_path / "data" / "models").exists(), "the demo model was looked for"


def test_import_model_merges_the_adapter(tmp_path, tiny_model_dir):
    """A LoRA adapter is merged before saving: one safetensors set equal to what the service
    would have built at load time, and no adapter left to apply."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    from snap2caption_service.core.captioner import Captioner

    base = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    env = _env(tmp_path / "home")
    version = "Tiny+LoRA run/7"  # not a valid BentoML tag version: stored under a derived one
    r = _run(
        [
            "-m",
            "snap2caption_service",
            "import-model",
            "--model",
            str(tiny_model_dir),
            "--adapter",
            str(adapter),
            "--version",
            version,
            "--source",
            "test",
            "--json",
        ],
        env,
    )
    stored = json.loads(r.stdout)
    assert stored["version"] == version and stored["source"] == "test" and stored["adapter"] == str(adapter)
    assert re.fullmatch(r"snap2caption-captioner:tiny-lora-run-7-[0-9a-f]{10}", stored["tag"])
    weights = Path(stored["path"])
    assert not (weights / "adapter_config.json").exists()
    with safe_open(weights / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]
    saved = LlavaForConditionalGeneration.from_pretrained(weights).state_dict()
    expected = Captioner.load(str(tiny_model_dir), str(adapter)).model.state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)
    q = next(k for k in saved if k.endswith("q_proj.weight"))  # the adapter did change something
    assert not torch.equal(saved[q], LlavaForConditionalGeneration.from_pretrained(tiny_model_dir).state_dict()[q])

    again = _run(
        [
            "-m",
            "snap2caption_service",
            "import-model",
            "--model",
            str(tiny_model_dir),
            "--adapter",
            str(adapter),
            "--version",
            version,
            "--json",
        ],
        env,
    )
    assert json.loads(again.stdout)["tag"] == stored["tag"]
    assert "already in the model store" in again.stderr


def test_import_model_rejects_a_folder_that_is_not_an_adapter(tmp_path, tiny_model_dir):
    env = _env(tmp_path / "home")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "snap2caption_service",
            "import-model",
            "--model",
            str(tiny_model_dir),
            "--adapter",
            str(tmp_path),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "not a PEFT adapter folder" in r.stderr
