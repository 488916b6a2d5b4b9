"""The `snap2caption canary analyze` command (snap2caption_service/release/canary_cli.py): its
exit codes where no Prometheus answers, usage errors, and what it imports.
tests/test_canary_prometheus.py runs it against a real Prometheus."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, free_port
from snap2caption_service.release.canary import EXIT_NO_ANALYSIS


def run_analyze(*args, env=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("SNAP2CAPTION_")}
    full.update({"PYTHONPATH": str(REPO), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "snap2caption_service", "canary", "analyze", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=REPO,
        timeout=60,
    )


def test_cli_unreachable_prometheus_is_no_verdict():
    r = run_analyze("--prometheus-url", f"http://127.0.0.1:{free_port()}", "--candidate", "snap2caption-00002")
    assert r.returncode == EXIT_NO_ANALYSIS, r.stderr
    assert "unreachable" in r.stderr


def test_cli_usage_errors_exit_2_never_a_verdict():
    assert run_analyze().returncode == 2  # no candidate
    r = run_analyze("--candidate", "x", "--window", "five")
    assert r.returncode == 2 and "PromQL duration" in r.stderr
    r = run_analyze("--candidate", "x", env={"SNAP2CAPTION_CANARY_MIN_SUCCESS_RATE": "lots"})
    assert r.returncode == 2 and "min_success_rate" in r.stderr


def test_canary_command_imports_neither_torch_nor_bentoml():
    """The canary workflow installs only httpx, pydantic and PyYAML to run it."""
    code = (
        "import sys, runpy; sys.argv = ['snap2caption', 'canary', 'analyze', '--help']\n"
        "try:\n    runpy.run_module('snap2caption_service', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "import json; print(json.dumps(sorted(m for m in ('torch', 'bentoml', 'transformers') if m in sys.modules)))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "exit codes" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
