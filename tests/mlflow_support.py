"""The real MLflow tracking server for tests, started by infra/mlflow.sh (the same script the
README and CI use) on a free port with its own data dir under pytest's tmp dir.

Registered in conftest.py, so any test can ask for ``mlflow_server`` (session-scoped) or
``mlflow_uri`` (also sets MLFLOW_TRACKING_URI for the test). If the server cannot start, the
test fails with the script's output and the server log's tail; it never skips.

Deliberately imports nothing heavy (no mlflow): conftest loads this for every test session.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MLFLOW_SH = REPO / "infra" / "mlflow.sh"
START_TIMEOUT_S = 300  # a cold start may first wait for infra/python_env.sh to build the venv


class MlflowServer:
    def __init__(self, data_dir: Path, port: int):
        self.data_dir, self.port = data_dir, port
        self.uri = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "SNAP2CAPTION_MLFLOW_DATA_DIR": str(data_dir)}

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mlflow.log"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no server log at {self.log_path}: {exc})"

    def _script(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                ["bash", str(MLFLOW_SH), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"infra/mlflow.sh {' '.join(args)} timed out after {timeout}s\n"
                f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}\nserver log ({self.log_path}):\n{self.log_tail()}"
            )

    def start(self) -> str:
        proc = self._script("start", str(self.port), timeout=START_TIMEOUT_S)
        match = re.search(r"^MLFLOW_TRACKING_URI=(\S+)$", proc.stdout, re.M)
        if proc.returncode != 0 or not match:
            pytest.fail(
                f"infra/mlflow.sh start {self.port} failed (exit {proc.returncode})\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
                f"server log ({self.log_path}):\n{self.log_tail()}"
            )
        assert match.group(1) == self.uri
        return self.uri

    def stop(self) -> None:
        proc = self._script("stop", timeout=60)
        if proc.returncode != 0:
            pytest.fail(f"infra/mlflow.sh stop failed (exit {proc.returncode}): {proc.stderr}")

    def status(self) -> subprocess.CompletedProcess:
        return self._script("status", timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-data"), _free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_uri(mlflow_server, monkeypatch) -> str:
    """The test server's URI, exported as MLFLOW_TRACKING_URI for the test's duration."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return mlflow_server.uri
