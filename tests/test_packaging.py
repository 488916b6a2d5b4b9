"""Packaging metadata stays in agreement."""

import tomllib

import yaml

from conftest import REPO


def test_bentofile_packages_match_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bento["python"]["packages"] == deps
    assert bento["service"] == "snap2caption_service.service:Snap2Caption"
