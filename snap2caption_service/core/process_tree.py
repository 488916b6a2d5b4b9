"""Waiting for a server we started to be ready, and stopping it, children included (tests,
benchmarks, the retrain proof).

``bentoml serve`` runs an arbiter that spawns its workers in process groups of their own, so
killing the arbiter's group alone orphans the workers: still loaded, still holding memory and
ports, and on a 2-core machine still taking CPU from whatever runs next.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 300, log_path: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; raise RuntimeError (with the log's tail) if ``proc``
    exits first or ``timeout`` passes."""
    import httpx

    def tail() -> str:
        return f":\n{log_path.read_text(errors='replace')[-4000:]}" if log_path and log_path.exists() else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args[:5]))} exited with {proc.returncode}{tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout:.0f} s{tail()}")


def stop_process_trees(procs: list[subprocess.Popen], grace: float = 20) -> None:
    """SIGTERM each process's group, then SIGKILL whatever of its tree is left after ``grace`` s.

    Each process must have been started with ``start_new_session=True`` (its own group)."""
    import psutil

    family = []
    for p in procs:
        try:
            family += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    for p in procs:
        p.wait()
