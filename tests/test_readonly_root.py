"""The service as k8s/base/knative-service.yaml runs it: as uid 1034 (runAsNonRoot, BentoML's
`bentoml` user), on a read-only root filesystem with an emptyDir wherever it writes. No
container engine here, so a mount namespace stands in for the pod: / is remounted read-only,
/tmp is a fresh tmpfs, only the folders the manifests give it (data dir, BentoML home, caches)
are writable, and the process drops to uid/gid 1034 with no capabilities."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, png_bytes, start_service, stop_service

pytestmark = [pytest.mark.service, pytest.mark.timeout(600)]

UID = 1034  # runAsUser / runAsGroup in k8s/base/knative-service.yaml
# Mount the writable folder, make everything else read-only (the pod's root filesystem), give
# /tmp its own empty tmpfs (the pod's /tmp emptyDir), then run the service ("$@") as uid 1034.
# The interpreter and the venv live under /root (mode 700 here, unlike an image's /usr), so /root
# is replaced by a read-only tmpfs that holds only them, at the same paths.
NAMESPACE_SCRIPT = """
set -e
mount --make-rprivate /
mount --rbind / /
mount -o remount,bind,ro /
mount --bind "$WRITABLE" "$WRITABLE"
mount -o remount,bind,rw "$WRITABLE"
mkdir -p "$WRITABLE/.stage/cache" "$WRITABLE/.stage/pyenv"
mount --bind /root/.cache "$WRITABLE/.stage/cache"
mount --bind /root/.pyenv "$WRITABLE/.stage/pyenv"
mount -t tmpfs -o mode=755 tmpfs /root
mkdir /root/.cache /root/.pyenv
mount --bind "$WRITABLE/.stage/cache" /root/.cache
mount --bind "$WRITABLE/.stage/pyenv" /root/.pyenv
mount -o remount,ro /root
case "$REPO" in /tmp/*)  # a checkout under /tmp (a CI clone) stays readable, read-only, over the new tmpfs
  mkdir -p "$WRITABLE/.stage/repo"; mount --bind "$REPO" "$WRITABLE/.stage/repo";;
esac
mount -t tmpfs tmpfs /tmp
case "$REPO" in /tmp/*)
  mkdir -p "$REPO"; mount --bind "$WRITABLE/.stage/repo" "$REPO"; mount -o remount,bind,ro "$REPO";;
esac
exec setpriv --reuid $RUN_UID --regid $RUN_UID --clear-groups --inh-caps=-all --no-new-privs "$@"
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


def test_service_runs_as_uid_1034_on_a_read_only_root_filesystem(tiny_model_dir, writable):
    assert mount_namespaces_work(), "this test needs `unshare --mount` (root, as on the CI machine)"
    model = writable / "model"
    shutil.copytree(tiny_model_dir, model)  # the pytest tmp dir is under /tmp, hidden in there
    for path in [writable, *writable.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)  # an emptyDir is world-writable
    env = {
        # What k8s/base/config/model.env points at its emptyDirs.
        "HF_HOME": str(writable / "cache" / "huggingface"),
        "XDG_CACHE_HOME": str(writable / "cache" / "xdg"),
        "WRITABLE": str(writable),
        "REPO": str(REPO),
        "RUN_UID": str(UID),
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
        assert "Read-only file system" not in log and "Permission denied" not in log, log[-3000:]
        owners = {p.stat().st_uid for p in (writable / "data").rglob("*")}
        assert owners == {UID}, owners  # everything it wrote, it wrote as 1034
    finally:
        stop_service(svc.proc)
