"""The snap2caption command, run as a user would run it."""

import json
import os
import subprocess
import sys

from conftest import REPO, png_bytes


def run_cli(*args, env=None, timeout=300):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "SNAP2CAPTION_ENV_FILE": "/nonexistent", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "snap2caption_service", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("serve", "caption", "demo-model", "evaluate-demo"):
        assert cmd in r.stdout
    r = run_cli("caption", "--help")
    assert "--tone" in r.stdout and "--audience" in r.stdout and "--json" in r.stdout


def test_caption_files_as_json(tmp_path, tiny_model_dir):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    a.write_bytes(png_bytes())
    b.write_bytes(png_bytes((0, 0, 200), fmt="JPEG"))
    r = run_cli(
        "caption",
        str(a),
        str(b),
        "--tone",
        "funny",
        "--audience",
        "academic",
        "--json",
        "--num-hashtags",
        "5",
        "--model",
        str(tiny_model_dir),
        env={"SNAP2CAPTION_MAX_NEW_TOKENS": "16"},
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["file"] for o in out] == [str(a), str(b)]
    assert all(len(o["hashtags"]) <= 5 and o["model_version"].startswith("tiny-llava") for o in out)


def test_caption_reports_bad_file_and_still_captions_good_one(tmp_path, tiny_model_dir):
    good, bad = tmp_path / "good.png", tmp_path / "notes.txt"
    good.write_bytes(png_bytes())
    bad.write_text("not an image")
    r = run_cli(
        "caption", str(good), str(bad), "--model", str(tiny_model_dir), env={"SNAP2CAPTION_MAX_NEW_TOKENS": "8"}
    )
    assert r.returncode == 1
    assert "notes.txt" in r.stderr and "caption:" in r.stdout


def test_caption_rejects_bad_options(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(png_bytes())
    r = run_cli("caption", str(img), "--tone", "x" * 40)
    assert r.returncode == 2 and "tone" in r.stderr
    r = run_cli("caption", str(img), "--audience", "everyone")
    assert r.returncode == 2
