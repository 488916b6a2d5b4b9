"""Shared fixtures: a tiny untrained LLaVA for fast tests, the cached demo model for quality
tests, and the real BentoML service started in a subprocess."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from snap2caption_service.core.process_tree import stop_process_trees

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


# What a fixture starts or builds -> the marker that `make test-fast` (and any `-m "not ..."`) deselects.
# A test that asks for one of these fixtures gets its marker even if the test module forgot it, so the
# unit-test run never starts Kafka or MLflow, builds the demo model or launches the service by accident.
FIXTURE_MARKERS = {
    "bootstrap": "kafka",  # stream_support: a real broker (infra/kafka.sh or testcontainers)
    "bootstrap_servers": "kafka",  # test_kafka_broker.py's own broker fixture
    "mlflow_server": "mlflow",  # mlflow_support: infra/mlflow.sh (mlflow_uri asks for it too)
    "demo_model_dir": "quality",  # trains the demo model on a cold cache (~10 min)
    "service": "service",  # the real BentoML service in a subprocess
    "auth_service": "service",
}


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection
def pytest_collection_modifyitems(items):
    for item in items:
        for fixture in set(item.fixturenames) & FIXTURE_MARKERS.keys():
            if item.get_closest_marker(FIXTURE_MARKERS[fixture]) is None:
                item.add_marker(FIXTURE_MARKERS[fixture])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(color=(200, 30, 30), size=(96, 72), fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight model with the demo architecture: real LLaVA code paths, no training."""
    from training.demo_model import build_untrained

    path = tmp_path_factory.mktemp("tiny-llava")
    model, processor = build_untrained()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Where the demo model is cached: the same place the README's commands use."""
    from snap2caption_service.core.settings import Settings

    return Settings().data_dir


@pytest.fixture(scope="session")
def demo_model_dir(data_dir) -> Path:
    from training.build_demo import ensure_demo_model

    return ensure_demo_model(data_dir, progress=False)


class RunningService:
    def __init__(self, url: str, proc: subprocess.Popen, log_path: Path, env: dict):
        self.url, self.proc, self.log_path, self.env = url, proc, log_path, env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kw)


def start_service(
    tmp: Path, model_dir: Path, extra_env: dict | None = None, timeout: float = 180, argv_prefix: tuple = ()
) -> RunningService:
    """The real service (`bentoml serve`) in a subprocess, ready. ``argv_prefix`` runs it under
    a wrapper (tests/test_readonly_root.py: a mount namespace with a read-only root)."""
    port = free_port()
    env = {
        **os.environ,
        "SNAP2CAPTION_MODEL": str(model_dir),
        "SNAP2CAPTION_DATA_DIR": str(tmp / "data"),
        # Pipeline tests: short, unconstrained answers. Under the answer grammar a random-weight
        # model writes every field to its token cap (~280 tokens an answer); tests/test_families.py
        # and test_answer_grammar.py run the grammar, through the service too.
        "SNAP2CAPTION_MAX_NEW_TOKENS": "24",
        "SNAP2CAPTION_CONSTRAINED": "false",
        "SNAP2CAPTION_ENV_FILE": "/nonexistent",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "PYTHONPATH": str(REPO),
    }
    env.update(extra_env or {})
    log_path = tmp / f"service-{port}.log"
    proc = subprocess.Popen(
        [
            *argv_prefix,
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "snap2caption_service.service:Snap2Caption",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--timeout-graceful-shutdown",  # as `snap2caption serve` starts it
            "10",
        ],
        cwd=REPO,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return RunningService(url, proc, log_path, env)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_service(proc)
    raise RuntimeError(f"service not ready after {timeout}s:\n{log_path.read_text()[-4000:]}")


def stop_services(procs: list[subprocess.Popen], grace: float = 20) -> None:
    stop_process_trees(procs, grace)


def stop_service(proc: subprocess.Popen) -> None:
    stop_services([proc])


@pytest.fixture(scope="session")
def service(tmp_path_factory, tiny_model_dir):
    """The real service on the tiny model; auth off."""
    svc = start_service(tmp_path_factory.mktemp("svc"), tiny_model_dir)
    yield svc
    stop_service(svc.proc)


@pytest.fixture(scope="session")
def auth_service(tmp_path_factory, tiny_model_dir):
    svc = start_service(
        tmp_path_factory.mktemp("svc-auth"), tiny_model_dir, {"SNAP2CAPTION_API_KEYS": "key-one,key-two"}
    )
    yield svc
    stop_service(svc.proc)


# The real MLflow tracking server (infra/mlflow.sh) for the registry and tracking tests.
from mlflow_support import mlflow_server, mlflow_uri  # noqa: E402,F401
