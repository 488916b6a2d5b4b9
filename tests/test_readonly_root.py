"""The service on a read-only root filesystem, as k8s/base/knative-service.yaml runs it
(readOnlyRootFilesystem, an emptyDir wherever it writes). No container engine here, so a mount
namespace stands in for the pod: / is remounted read-only, /tmp is a fresh tmpfs, and only the
folders the manifests give it (data dir, BentoML home, caches) are writable."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import png_bytes, start_service, stop_service

pytestmark = [pytest.mark.service, pytest.mark.timeout(600)]

# Mount the writable folder, make everything else read-only (the pod's root filesystem), give
# /tmp its own empty tmpfs (the pod's /tmp emptyDir), then run the service ("$@").
NAMESPACE_SCRIPT = """
set -e
mount --make-rprivate /
mount --rbind / /
mount -o remount,bind,ro /
mount --bind "$WRITABLE" "$WRITABLE"
mount -o remount,bind,rw "$WRITABLE"
mount -t tmpfs tmpfs /tmp
exec "$@"
"""


def mount_namespaces_work() -> bool:
    probe = subprocess.run(["unshare", "--mount", "--fork", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def writable():
    # Outside /tmp, which the namespace replaces with an empty tmpfs.
    path = Path(tempfile.mkdtemp(prefix="snap2caption-ro-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_service_runs_with_a_read_only_root_filesystem(tiny_model_dir, writable):
    assert mount_namespaces_work(), "this test needs `unshare --mount` (root, as on the CI machine)"
    model = writable / "model"
    shutil.copytree(tiny_model_dir, model)  # the pytest tmp dir is under /tmp, hidden in there
    env = {
        # What k8s/base/config/model.env points at its emptyDirs.
        "HF_HOME": str(writable / "cache" / "huggingface"),
        "XDG_CACHE_HOME": str(writable / "cache" / "xdg"),
        "WRITABLE": str(writable),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    prefix = ("unshare", "--mount", "--fork", "bash", "-c", NAMESPACE_SCRIPT, "read-only-root")
    svc = start_service(writable, model, env, argv_prefix=prefix)
    try:
        with svc.client() as c:
            image = base64.b64encode(png_bytes()).decode()
            r = c.post("/generate-caption", json={"image": image, "num_hashtags": 5})
            assert r.status_code == 200, r.text
            fb = c.post("/feedback", json={"request_id": r.json()["request_id"], "rating": "up"})
            assert fb.status_code == 202, fb.text
            assert c.get("/metrics").status_code == 200
        assert (writable / "data").is_dir() and any((writable / "data").rglob("*.jsonl"))
        log = svc.log()
        assert "Read-only file system" not in log, log[-3000:]
    finally:
        stop_service(svc.proc)
