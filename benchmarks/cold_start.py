"""Cold start: process start -> /readyz -> first answer, from the repo and from the built Bento.

With scale to zero, the first request after a quiet spell waits for all of this. Three ways
of starting the same weights, run in turns (round-robin, so that all three see the same
machine state; this VM's speed drifts between minutes):

  repo           `python -m snap2caption_service serve` (what `make serve` runs), demo model
  repo + LoRA    the same with --adapter: peft imported and the adapter merged at load
  Bento          `bentoml serve snap2caption:<tag>` from an empty folder, no repo on the path:
                 demo + the same adapter merged by `import-model` into one safetensors set,
                 read from the BentoML model store

Per start it records: /livez (the HTTP server answers), /readyz (the model is loaded), the
model worker's own load time (snap2caption_model_load_seconds on /metrics: torch/transformers
import + weights + merge), and the first /generate-caption. "before load" is /readyz minus
the load: interpreter, BentoML, the service module and the worker processes. A second table
splits the load itself, timed in fresh processes on the same files.

    python benchmarks/cold_start.py [--runs 5] [--json-out FILE]

Needs PyPI access (bentoml build locks the dependencies); the page cache is warm after the
first run, as it is on a node that served the model before (not on a fresh node).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Start:
    config: str
    live_s: float
    ready_s: float
    load_s: float  # inside the model worker, from /metrics
    first_request_s: float
    model_version: str

    @property
    def before_load_s(self) -> float:
        return self.ready_s - self.load_s

    @property
    def first_answer_s(self) -> float:
        return self.ready_s + self.first_request_s


@dataclass
class Config:
    name: str
    cmd: list[str]
    cwd: Path
    env: dict
    starts: list[Start] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene_png_b64() -> str:
    from training import synthetic

    example = synthetic.make_examples(1, 4242)[0]
    buf = io.BytesIO()
    synthetic.render_scene(example.scene).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def model_load_seconds(metrics_text: str) -> float:
    m = re.search(r"^snap2caption_model_load_seconds_sum(?:\{[^}]*\})? ([0-9.e+-]+)$", metrics_text, re.M)
    if not m:
        raise RuntimeError("snap2caption_model_load_seconds_sum not on /metrics")
    return float(m.group(1))


def cold_start(cfg: Config, image_b64: str, log_dir: Path, timeout: float = 300) -> Start:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"{re.sub(r'[^a-z0-9]+', '-', cfg.name.lower())}-{port}.log"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*cfg.cmd, "--port", str(port), "--host", "127.0.0.1"],
        cwd=cfg.cwd,
        env=cfg.env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    live = ready = None
    try:
        with httpx.Client(timeout=2) as c:
            while ready is None:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{cfg.name}: server exited {proc.returncode}; log {log_path}:\n{log_path.read_text()[-3000:]}"
                    )
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"{cfg.name}: not ready after {timeout}s; log {log_path}")
                try:
                    if live is None and c.get(url + "/livez").status_code == 200:
                        live = time.perf_counter() - t0
                    if live is not None and c.get(url + "/readyz").status_code == 200:
                        ready = time.perf_counter() - t0
                except httpx.HTTPError:
                    pass
                if ready is None:
                    time.sleep(0.05)
            t1 = time.perf_counter()
            r = c.post(url + "/generate-caption", json={"image": image_b64}, timeout=120)
            first = time.perf_counter() - t1
            if r.status_code != 200:
                raise RuntimeError(f"{cfg.name}: first request answered {r.status_code}: {r.text[:300]}")
            load = model_load_seconds(c.get(url + "/metrics", timeout=10).text)
        return Start(cfg.name, live, ready, load, first, r.json()["model_version"])
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace: float = 30) -> None:
    from snap2caption_service.core.process_tree import stop_process_trees

    stop_process_trees([proc], grace)


def run(args: list[str], env: dict, cwd: Path = REPO) -> str:
    r = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r.stdout


def make_adapter(demo_dir: Path, out: Path) -> Path:
    """A LoRA adapter on every projection of the demo decoder. PEFT's default initialisation
    (B = 0) leaves the captions unchanged, so all three configurations do the same
    generation work; merging it costs what merging a trained adapter costs."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    base = LlavaForConditionalGeneration.from_pretrained(demo_dir, use_safetensors=True)
    lora = get_peft_model(
        base,
        LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    lora.save_pretrained(out)
    return out


def split_model_load(demo_dir: Path, adapter: Path, merged_dir: Path, env: dict) -> dict[str, float]:
    """The model load, piece by piece, each in a fresh interpreter (imports are per process)."""
    script = r"""
import json, sys, time
t = time.perf_counter()
import torch, transformers
from transformers import LlavaForConditionalGeneration
imp = time.perf_counter() - t
t = time.perf_counter()
import peft
imp_peft = time.perf_counter() - t
from snap2caption_service.core.captioner import Captioner
out = {"import torch+transformers": imp, "import peft": imp_peft}
t = time.perf_counter(); Captioner.load(sys.argv[1], version="x"); out["load demo weights"] = time.perf_counter() - t
t = time.perf_counter(); Captioner.load(sys.argv[1], sys.argv[2], version="x")
out["load demo + merge LoRA"] = time.perf_counter() - t
t = time.perf_counter(); Captioner.load(sys.argv[3], version="x"); out["load merged (Bento)"] = time.perf_counter() - t
print(json.dumps(out))
"""
    r = subprocess.run(
        [sys.executable, "-c", script, str(demo_dir), str(adapter), str(merged_dir)],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        raise SystemExit(f"model-load split failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f} [{min(values):5.2f}-{max(values):5.2f}]"


def table(configs: list[Config]) -> str:
    cols = [
        ("to /livez", "live_s"),
        ("before load", "before_load_s"),
        ("model load", "load_s"),
        ("to /readyz", "ready_s"),
        ("1st request", "first_request_s"),
        ("to 1st answer", "first_answer_s"),
    ]
    head = f"| {'start':<14} | runs | " + " | ".join(f"{c:^19}" for c, _ in cols) + " |"
    lines = [head, "|" + "|".join("-" * len(p) for p in head.split("|")[1:-1]) + "|"]
    for cfg in configs:
        cells = [stats([getattr(s, attr) for s in cfg.starts]) for _, attr in cols]
        lines.append(f"| {cfg.name:<14} | {len(cfg.starts):>4} | " + " | ".join(f"{c:^19}" for c in cells) + " |")
    return "\n".join(lines)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="cold starts per configuration (default 5)")
    ap.add_argument("--json-out", help="also write every start as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary BentoML home and logs")
    args = ap.parse_args()

    from snap2caption_service.core.settings import Settings
    from training.build_demo import ensure_demo_model

    demo_dir = ensure_demo_model(Settings().data_dir)
    work = Path(tempfile.mkdtemp(prefix="snap2caption-cold-start-"))
    home, logs = work / "bentoml", work / "logs"
    logs.mkdir(parents=True)
    load_before = load_average()
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SNAP2CAPTION_", "BENTOML_")) and k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")
    }
    base_env.update(
        {
            "SNAP2CAPTION_ENV_FILE": "/nonexistent",
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_HOME": str(home),
            "SNAP2CAPTION_MAX_NEW_TOKENS": "48",
        }
    )

    print(f"setting up in {work}: LoRA adapter, import-model, bentoml build ...", file=sys.stderr)
    adapter = make_adapter(demo_dir, work / "adapter")
    repo_env = {**base_env, "PYTHONPATH": str(REPO)}
    stored = json.loads(
        run(
            [
                "-m",
                "snap2caption_service",
                "import-model",
                "--model",
                str(demo_dir),
                "--adapter",
                str(adapter),
                "--version",
                "demo+lora-merged",
                "--json",
            ],
            repo_env,
        )
    )
    t = time.perf_counter()
    tag = re.search(r"__tag__:(\S+)", run(["-m", "bentoml", "build", "--output", "tag"], repo_env)).group(1)
    build_s = time.perf_counter() - t

    # The repo configurations read the cached demo model through a scratch data dir (the
    # service writes its feedback store and caption archive there, not into the real cache).
    data = work / "repo-data"
    (data / "models").mkdir(parents=True)
    (data / "models" / demo_dir.name).symlink_to(demo_dir)
    serve_cli = [sys.executable, "-m", "snap2caption_service", "serve"]
    bento_cwd = work / "empty"
    bento_cwd.mkdir()
    configs = [
        Config("repo", serve_cli, REPO, {**repo_env, "SNAP2CAPTION_DATA_DIR": str(data)}),
        Config(
            "repo + LoRA",
            [*serve_cli, "--adapter", str(adapter)],
            REPO,
            {**repo_env, "SNAP2CAPTION_DATA_DIR": str(data)},
        ),
        Config(
            "Bento",
            [sys.executable, "-m", "bentoml", "serve", tag],
            bento_cwd,
            {**base_env, "SNAP2CAPTION_DATA_DIR": str(work / "bento-data")},
        ),
    ]
    image = scene_png_b64()
    try:
        for i in range(args.runs):
            for cfg in configs:
                s = cold_start(cfg, image, logs)
                cfg.starts.append(s)
                print(
                    f"  run {i + 1} {cfg.name:<12} ready {s.ready_s:5.2f}s (load {s.load_s:5.2f}s), "
                    f"first answer {s.first_answer_s:5.2f}s  [{s.model_version}]",
                    file=sys.stderr,
                )
        split = split_model_load(demo_dir, adapter, Path(stored["path"]), base_env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"no GPU; load average {load_before} before, {load_average()} after"
    )
    print(
        f"model: {demo_dir.name} ({stored['size_bytes'] / 1e6:.1f} MB safetensors); Bento {tag} "
        f"(bentoml build incl. locking: {build_s:.1f}s)\n"
    )
    print("seconds from process start, median [min-max]:\n")
    print(table(configs))
    print("\nthe model load, in fresh processes on the same files:\n")
    for name, seconds in split.items():
        print(f"  {name:<26} {seconds:6.2f} s")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "starts": [
                        {**asdict(s), "before_load_s": s.before_load_s, "first_answer_s": s.first_answer_s}
                        for cfg in configs
                        for s in cfg.starts
                    ],
                    "model_load_split": split,
                    "bento": tag,
                    "build_s": build_s,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
