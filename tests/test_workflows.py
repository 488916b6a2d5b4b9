"""The GitHub Actions workflows (.github/workflows/) pass actionlint, with shellcheck on every
`run:` step; and they do what the README says (triggers, release by digest, canary branches on
the documented exit codes). actionlint is built by infra/install_actionlint.sh; a failed install
fails these tests. tests/test_canary_prometheus.py runs the canary job's steps for real."""

from __future__ import annotations

import functools
import re
import subprocess

import pytest
import yaml

from conftest import REPO
from snap2caption_service.release.canary import EXIT_HOLD, EXIT_NO_ANALYSIS, EXIT_PROMOTE, EXIT_ROLLBACK

WORKFLOWS = REPO / ".github" / "workflows"
INSTALL = REPO / "infra" / "install_actionlint.sh"


@functools.cache
def tools() -> dict[str, str]:
    r = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        pytest.fail(f"infra/install_actionlint.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def actionlint(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tools()["ACTIONLINT"], "-no-color", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def on(wf: dict) -> dict:
    return wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on:` key as True


def test_install_script_is_pinned_and_idempotent():
    pinned = re.search(r'ACTIONLINT_VERSION="\$\{ACTIONLINT_VERSION:-(v[0-9.]+)\}"', INSTALL.read_text()).group(1)
    first = tools()
    again = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "building" not in again.stderr, again.stderr
    version = subprocess.run([first["ACTIONLINT"], "-version"], capture_output=True, text=True).stdout
    assert version.splitlines()[0] == pinned
    assert first["SHELLCHECK"]


def test_every_workflow_passes_actionlint():
    names = sorted(p.name for p in WORKFLOWS.glob("*.yml"))
    assert {"ci.yml", "release.yml", "canary.yml"} <= set(names)
    r = actionlint()
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr


def test_actionlint_here_catches_workflow_and_shell_errors(tmp_path):
    """Proof the lint is live: a bad expression, an unknown input to a reusable workflow and
    an unquoted variable (shellcheck SC2086) are each reported."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # actionlint finds the project by .git
    wf_dir = tmp_path / ".github" / "workflows"
    wf_dir.mkdir(parents=True)
    (wf_dir / "canary.yml").write_text((WORKFLOWS / "canary.yml").read_text())
    (wf_dir / "bad.yml").write_text("""\
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo ${{ github.nonexistent_context_field }}
      - run: |
          files=$(ls)
          rm $files
  b:
    uses: ./.github/workflows/canary.yml
    with:
      image: x
      environment: staging
      no-such-input: 1
""")
    r = actionlint(cwd=tmp_path)
    assert r.returncode == 1
    out = r.stdout
    assert "nonexistent_context_field" in out
    assert "no-such-input" in out
    assert "SC2086" in out, out


def test_ci_lints_and_runs_the_readme_test_command():
    ci = workflow("ci.yml")
    lint = "\n".join(s.get("run", "") for s in ci["jobs"]["lint"]["steps"])
    assert "infra/install_actionlint.sh" in lint and "compileall" in lint and "promtool" in lint
    assert [s["run"] for s in ci["jobs"]["test"]["steps"] if "run" in s] == ["make test"]


def test_release_builds_pushes_by_digest_and_attaches_the_bento():
    rel = workflow("release.yml")
    assert on(rel) == {"push": {"tags": ["v*"]}}
    assert rel["permissions"] == {"contents": "write", "packages": "write"}
    job = rel["jobs"]["release"]
    script = "\n".join(s.get("run", "") for s in job["steps"])
    for needed in (
        "bentoml build",
        "bentoml containerize",
        "--opt push",
        "containerimage.digest",
        "bentoml export",
        "gh release create",
        "import-model",
    ):
        assert needed in script, needed
    assert job["outputs"]["image"] == "${{ steps.push.outputs.image }}"
    assert "@$digest" in script  # the output is repository@sha256:..., never a tag
    staging = rel["jobs"]["canary-staging"]
    assert staging["uses"] == "./.github/workflows/canary.yml"
    assert staging["with"] == {"image": "${{ needs.release.outputs.image }}", "environment": "staging"}


def test_canary_branches_on_the_documented_exit_codes():
    job = workflow("canary.yml")["jobs"]["canary"]
    [shift] = [s["run"] for s in job["steps"] if s.get("name", "").startswith("Shift traffic")]
    assert f"{EXIT_PROMOTE}) " in shift and f"{EXIT_ROLLBACK}) " in shift
    assert f"{EXIT_HOLD}|{EXIT_NO_ANALYSIS})" in shift
    assert "canary analyze" in shift and "canary patch" in shift
    [rollback] = [s for s in job["steps"] if s.get("name", "").startswith("Roll back")]
    assert rollback["if"].startswith("(failure() || cancelled())")
    assert "--percent 0" in rollback["run"]
    triggers = on(workflow("canary.yml"))
    assert {"workflow_dispatch", "workflow_call"} <= set(triggers)
    assert triggers["workflow_dispatch"]["inputs"]["steps"]["default"] == "10 25 50 100"


# A `uses:` line: the reference, and the comment after it (`# vX.Y.Z`, the tag it was pinned from).
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>[^\s#]+)\s*(?:#\s*(?P<comment>.*?))?\s*$")
PINNED = re.compile(r"^(?P<action>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(?:/[^@\s]+)?)@(?P<sha>[0-9a-f]{40})$")


def _yaml_uses(wf: dict) -> list[str]:
    """Every `uses:` the YAML parser sees: job level (reusable workflows) and step level."""
    found = []
    for job in wf["jobs"].values():
        if "uses" in job:
            found.append(job["uses"])
        found += [s["uses"] for s in job.get("steps", []) if "uses" in s]
    return found


def test_every_action_is_pinned_by_commit_sha():
    """A tag (v4) can be moved to other code; a commit SHA cannot. Each third-party `uses:` is
    owner/repo@<40-hex SHA> # vX.Y.Z, and one action is pinned to one commit everywhere."""
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(WORKFLOWS.glob("*.y*ml")):
        lines = [(n, USES_LINE.match(line)) for n, line in enumerate(path.read_text().splitlines(), 1)]
        matched = [(n, m) for n, m in lines if m]
        # Nothing escapes the line check (flow-style mappings, quoting): the parser agrees.
        assert sorted(m["ref"].strip("'\"") for _, m in matched) == sorted(_yaml_uses(yaml.safe_load(path.read_text())))
        for n, m in matched:
            ref = m["ref"].strip("'\"")
            where = f"{path.name}:{n}: {ref}"
            if ref.startswith("./"):
                continue  # this repository's own workflow or action, at the same commit
            if ref.startswith("docker://"):
                assert re.search(r"@sha256:[0-9a-f]{64}$", ref), f"{where}: pin the image by digest"
                continue
            pinned = PINNED.match(ref)
            assert pinned, f"{where}: not pinned to a 40-hex commit SHA"
            tag = (m["comment"] or "").strip()
            assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"{where}: needs the tag as '# vX.Y.Z'"
            pins.setdefault(pinned["action"], set()).add((pinned["sha"], tag))
    assert pins, "no actions found"
    mixed = {a: sorted(p) for a, p in pins.items() if len(p) > 1}
    assert not mixed, f"one action, several pins: {mixed}"


MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# A step that reaches the tracking server: the project's registry commands or mlflow itself.
TALKS_TO_MLFLOW = re.compile(r"\b(import-model|retrain|train|mlflow)\b")


def test_mlflow_is_reached_with_credentials_from_secrets():
    """Every step that has MLFLOW_TRACKING_URI and runs something that talks to MLflow gets the
    tracking server's credentials, from GitHub secrets; no MLflow credential is written down."""
    talking = []
    for path in sorted(WORKFLOWS.glob("*.yml")):
        wf = yaml.safe_load(path.read_text())
        for job_id, job in wf["jobs"].items():
            job_env = {**(wf.get("env") or {}), **(job.get("env") or {})}
            for i, step in enumerate(job.get("steps", [])):
                env = {**job_env, **(step.get("env") or {})}
                where = f"{path.name} {job_id} step {step.get('name', i)}"
                for key, value in env.items():
                    if key.startswith("MLFLOW_TRACKING_") and key != "MLFLOW_TRACKING_URI":
                        assert value == f"${{{{ secrets.{key} }}}}", f"{where}: {key} must be a secret"
                if "MLFLOW_TRACKING_URI" in env and TALKS_TO_MLFLOW.search(step.get("run", "")):
                    talking.append(where)
                    for key in MLFLOW_CREDENTIALS:
                        assert env.get(key) == f"${{{{ secrets.{key} }}}}", f"{where}: {key} not given"
    assert any("release.yml" in w for w in talking), "release.yml's import of the champion talks to MLflow"
