"""benchmarks/gpu.py on CPU with the tiny shape: the script a GPU run uses, proven to run here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(600)


def test_gpu_benchmark_runs_on_cpu_with_the_tiny_shape():
    out = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--shape", "tiny", "--device", "cpu", "--families", "llava", "llava_next"]
        + ["--batches", "1", "2", "--rounds", "1", "--max-new-tokens", "12"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines() if re.match(r"\s*llava", line)]
    # family x {unconstrained, constrained} x batches {1, 2}
    assert len(rows) == 8, out.stdout
    for row in rows:
        captions_per_s, tokens_per_s, p50, p90 = map(float, row[-4:])
        assert captions_per_s > 0 and tokens_per_s > 0 and 0 < p50 <= p90


def test_gpu_benchmark_says_so_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the CPU CI machine never does
    out = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no CUDA device" in out.stdout
