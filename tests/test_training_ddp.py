"""`snap2caption train` under torchrun: 2 CPU processes (gloo) train like one process.

Both runs see the same global batches in the same order (the loop draws them from one seeded
order and each process takes its slice), so the loss curves must agree up to the
difference between averaging per-process mean losses and one mean over all tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.synthetic_manifest import write as write_manifest

REPO = Path(__file__).resolve().parent.parent


def _config(tmp: Path, base: Path, manifest: Path) -> Path:
    cfg = {
        "name": "ddp-check",
        "base_model": str(base),
        "data": [{"kind": "manifest", "path": str(manifest)}],
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": ["multi_modal_projector"]},
        "optimizer": {"lr": 0.003, "warmup_steps": 2},
        "steps": 12,
        "batch_size": 8,
        "precision": "fp32",
        "seed": 3,
        "eval": {"holdout_fraction": 0.0},
    }
    path = tmp / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cmd: list[str], tmp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SNAP2CAPTION_DATA_DIR": str(tmp / "data"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_two_process_ddp_matches_one_process(tmp_path, tiny_model_dir):
    manifest = write_manifest(tmp_path / "scenes", 48, seed=5)
    cfg = _config(tmp_path, tiny_model_dir, manifest)
    train = ["-m", "snap2caption_service", "train", "--config", str(cfg), "--train-only"]
    _run([sys.executable, *train, "--output-dir", str(tmp_path / "single")], tmp_path)
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *train,
            "--output-dir",
            str(tmp_path / "ddp"),
        ],
        tmp_path,
    )

    single = json.loads((tmp_path / "single" / "summary.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    assert len(single["losses"]) == len(ddp["losses"]) == 12
    assert single["losses"][-1] < single["losses"][0]  # it learned something
    for step, (a, b) in enumerate(zip(single["losses"], ddp["losses"])):
        assert b == pytest.approx(a, rel=0.01), f"step {step}: single {a:.4f} vs 2-process DDP {b:.4f}"
    assert (tmp_path / "ddp" / "adapter" / "adapter_config.json").is_file()
