"""Stopping a server we started, children included (tests, benchmarks, the retrain proof).

``bentoml serve`` runs an arbiter that spawns its workers in process groups of their own, so
killing the arbiter's group alone orphans the workers: still loaded, still holding memory and
ports, and on a 2-core machine still taking CPU from whatever runs next.
"""

from __future__ import annotations

import os
import signal
import subprocess


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
