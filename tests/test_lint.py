"""`make lint` is live: each of its checks, run with the project's configuration (pyproject.toml,
infra/lint/vulture_whitelist.py) on a copy of the code with one planted violation, fails and names
what was planted. CI runs `make lint` (the lint job, .ci/run) before the tests."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from conftest import REPO

BIN = Path(sys.executable).parent  # the venv infra/python_env.sh builds from requirements.lock
CONFIG = REPO / "pyproject.toml"
COPIED = ("snap2caption_service", "stream", "training", "tests", "benchmarks", "infra/lint")


def tool(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{name} is not in {BIN}: run the tests through make (infra/python_env.sh)"
    return str(path)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd), "NO_COLOR": "1"}  # the copy, never the checkout
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def project_copy(root: Path) -> Path:
    """The code and the tools' configuration, as lint sees them in the checkout."""
    for rel in COPIED:
        shutil.copytree(REPO / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(CONFIG, root / "pyproject.toml")
    return root


def plant(path: Path, code: str) -> None:
    path.write_text(path.read_text() + f"\n\n{code}\n")


def test_make_lint_runs_the_five_checks_and_ci_runs_it_before_the_tests():
    linters = re.search(r"^LINTERS = (.+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert shlex.split(linters) == ["ruff check", "ruff format --check", "lint-imports", "vulture", "deptry ."]
    # `make test` (the README's test command, all .ci/run runs) lints first.
    assert re.search(r"^test: lint\b", (REPO / "Makefile").read_text(), re.M)
    ci_run = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci_run, ci_run
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    assert "make lint" in [s.get("run") for s in ci["jobs"]["lint"]["steps"]]


def test_ruff_check_catches_an_unused_import(tmp_path):
    (tmp_path / "clean.py").write_text("import os\n\nprint(os.sep)\n")
    (tmp_path / "planted.py").write_text("import json\nimport os\n\nprint(os.sep)\n")
    ruff = [tool("ruff"), "check", "--no-cache", "--config", str(CONFIG)]
    clean = run([*ruff, "clean.py"], tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    r = run([*ruff, "planted.py"], tmp_path)
    assert r.returncode == 1 and "planted.py:1:8: F401" in r.stdout and "`json`" in r.stdout, r.stdout + r.stderr


def test_ruff_format_catches_a_badly_formatted_file(tmp_path):
    # 102 columns: within the configured 120 (the default 88 would rewrap it).
    (tmp_path / "clean.py").write_text(
        'def f(a, b):\n    return {"alpha": a, "beta": b, "gamma": [a, b, a, b], "delta": (a, b), "eps": str(a)}\n'
    )
    (tmp_path / "planted.py").write_text("def f( a,b ):\n    return {'a':a,'b':b}\n")
    fmt = [tool("ruff"), "format", "--check", "--no-cache", "--config", str(CONFIG)]
    clean = run([*fmt, "clean.py"], tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    r = run([*fmt, "planted.py"], tmp_path)
    assert r.returncode == 1 and "planted.py" in r.stdout, r.stdout + r.stderr


def test_import_linter_catches_imports_against_the_layers(tmp_path):
    root = project_copy(tmp_path)
    lint_imports = [tool("lint-imports"), "--no-cache"]
    kept = run(lint_imports, root)
    assert kept.returncode == 0, kept.stdout + kept.stderr  # the code as it is keeps every contract
    plant(root / "snap2caption_service/core/hashtags.py", "import training")  # core imports a layer above
    plant(root / "snap2caption_service/serving/auth.py", "import stream")  # one sibling imports another
    plant(root / "stream/topics.py", "import starlette.responses")  # HTTP outside serving
    plant(root / "training/gate.py", "import pytest")  # shipped code needs a dev-only package
    r = run(lint_imports, root)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Contracts: 0 kept, 3 broken." in out, out
    for edge in (
        "snap2caption_service.core.hashtags -> training",
        "snap2caption_service.serving.auth -> stream",
        "stream.topics -> starlette",
        "training.gate -> pytest",
    ):
        assert edge in out, edge


def test_vulture_catches_an_unused_function(tmp_path):
    root = project_copy(tmp_path)
    plant(root / "stream/topics.py", "def planted_unused_function():\n    return 1")
    r = run([tool("vulture")], root)  # paths, confidence and whitelist from pyproject.toml
    assert r.returncode == 3, r.stdout + r.stderr  # vulture: dead code found
    assert "stream/topics.py" in r.stdout and "unused function 'planted_unused_function'" in r.stdout, r.stdout
    # the whitelist and the ignored decorators are in effect: framework-called names are not reported
    for used_by_a_framework in ("model_config", "generate_caption", "on_partitions_assigned", "from_http_request"):
        assert f"'{used_by_a_framework}'" not in r.stdout, r.stdout


def test_deptry_catches_an_undeclared_import(tmp_path):
    root = project_copy(tmp_path)
    deptry = [tool("deptry"), "--no-ansi", "."]
    clean = run(deptry, root)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    plant(root / "snap2caption_service/core/images.py", "import sympy")  # installed (torch's), not declared
    plant(root / "training/gate.py", "import planted_missing_module")  # not installed at all
    r = run(deptry, root)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "DEP003 'sympy' imported but it is a transitive dependency" in out, out
    assert "DEP001 'planted_missing_module' imported but missing from the dependency definitions" in out, out


def test_dev_packages_deptry_lets_the_tests_import_are_forbidden_in_shipped_code():
    """deptry's DEP004 exceptions (dev-only packages the tests import) would also let shipped code
    import them; the "no-dev-deps" import contract forbids exactly that."""
    tools = tomllib.loads(CONFIG.read_text())["tool"]
    dev_imported = set(tools["deptry"]["per_rule_ignores"]["DEP004"])
    [contract] = [c for c in tools["importlinter"]["contracts"] if c["id"] == "no-dev-deps"]
    assert contract["source_modules"] == ["snap2caption_service", "stream", "training"]
    assert dev_imported <= set(contract["forbidden_modules"]), dev_imported - set(contract["forbidden_modules"])
