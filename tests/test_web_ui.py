"""The creator web page, in a real browser (Debian's Chromium via playwright-core), against the
real service (`bentoml serve` in a subprocess, tiny untrained model; the tone test uses the
trained demo model).

The browser scenarios live in tests/web/scenarios.mjs: each one checks what the page shows and
prints what it saw as JSON; the tests here start the services, hand the scenario its inputs,
and check the server side (the feedback store). infra/install_browser.sh installs Chromium and
playwright-core on first use; if that fails, these tests fail (they never skip).

Screenshots go to test-artifacts/ (git-ignored): web-*.png.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ARTIFACTS, REPO, start_service, stop_service

pytestmark = pytest.mark.service

SCENARIOS = REPO / "tests" / "web" / "scenarios.mjs"
INSTALL = REPO / "infra" / "install_browser.sh"
CHROMIUM = "/usr/bin/chromium"


# ---------------------------------------------------------------- browser and inputs


@pytest.fixture(scope="session")
def node_dir() -> Path:
    """Chromium + playwright-core, installed by the project's own script (idempotent)."""
    proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"infra/install_browser.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert (path / "node_modules" / "playwright-core").is_dir(), proc.stderr
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing after install_browser.sh"
    assert shutil.which("node"), "node missing after install_browser.sh"
    return path


def _photo(size=(320, 240)) -> bytes:
    """A small scene: sky, sun, grass and a red box, so the page has something to show."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (135, 190, 235))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle([0, int(h * 0.65), w, h], fill=(70, 150, 60))
    d.ellipse([int(w * 0.7), int(h * 0.08), int(w * 0.88), int(h * 0.32)], fill=(250, 210, 60))
    d.rectangle([int(w * 0.2), int(h * 0.42), int(w * 0.45), int(h * 0.75)], fill=(205, 40, 45))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _noise_png(side=200) -> bytes:
    """Random pixels: a PNG that does not compress, ~120 KB."""
    import os

    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("web-inputs")
    files = {
        "image": ("beach-day.png", _photo()),
        "large": ("large-photo.png", _noise_png()),
        "text": ("notes.txt", b"Shopping list: apples, bread, coffee.\nThis is not a photo.\n" * 4),
    }
    out = {}
    for key, (name, data) in files.items():
        (d / name).write_bytes(data)
        out[key] = d / name
    return out


class _ImageSite(BaseHTTPRequestHandler):
    """Another origin (another port) serving images: /cors/* with CORS, /nocors/* without (the
    server fetches an image address, so the page works with both)."""

    files: dict[str, tuple[str, bytes]] = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        prefix, _, name = self.path.lstrip("/").partition("/")
        if prefix not in ("cors", "nocors") or name not in self.files:
            self.send_error(404)
            return
        ctype, body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if prefix == "cors":
            self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def image_site(inputs):
    _ImageSite.files = {
        "sunny.png": ("image/png", inputs["image"].read_bytes()),
        "large.png": ("image/png", inputs["large"].read_bytes()),
        "page.html": ("text/html; charset=utf-8", b"<!doctype html><title>A page</title><p>not an image</p>"),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageSite)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_scenario(node_dir: Path, name: str, svc, timeout: float = 300, **params) -> dict:
    ARTIFACTS.mkdir(exist_ok=True)
    config = {
        "scenario": name,
        "baseUrl": svc.url,
        "nodeDir": str(node_dir),
        "chromium": CHROMIUM,
        "artifacts": str(ARTIFACTS),
        **{k: str(v) if isinstance(v, Path) else v for k, v in params.items()},
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        ["node", str(SCENARIOS), json.dumps(config)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        out = {"ok": False, "error": "no JSON result"}
    if proc.returncode != 0 or not out.get("ok"):
        pytest.fail(
            f"browser scenario {name!r} failed after {time.monotonic() - t0:.1f}s: {out.get('error')}\n"
            f"--- node stderr ---\n{proc.stderr[-6000:]}\n--- service log ---\n{svc.log()[-3000:]}"
        )
    return out


def feedback_records(svc) -> list[dict]:
    path = Path(svc.env["SNAP2CAPTION_DATA_DIR"]) / "feedback.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- extra services


# The image site is on loopback, which the fetcher refuses unless allowlisted (as a deployment
# allowlists its own image host); every other address keeps the SSRF guard.
URL_ALLOWLIST = {"SNAP2CAPTION_URL_ALLOWLIST": "127.0.0.1"}


@pytest.fixture(scope="module")
def url_service(tmp_path_factory, tiny_model_dir):
    svc = start_service(tmp_path_factory.mktemp("svc-url"), tiny_model_dir, URL_ALLOWLIST)
    yield svc
    stop_service(svc.proc)


@pytest.fixture(scope="module")
def small_limit_service(tmp_path_factory, tiny_model_dir):
    svc = start_service(
        tmp_path_factory.mktemp("svc-small-limit"),
        tiny_model_dir,
        {"SNAP2CAPTION_MAX_IMAGE_BYTES": "4096", **URL_ALLOWLIST},
    )
    yield svc
    stop_service(svc.proc)


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory, demo_model_dir):
    # Room for the alt text too (the tiny-model services stop at 24 tokens).
    svc = start_service(
        tmp_path_factory.mktemp("svc-demo"), demo_model_dir, {"SNAP2CAPTION_MAX_NEW_TOKENS": "128"}, timeout=600
    )
    yield svc
    stop_service(svc.proc)


# ---------------------------------------------------------------- tests


def test_page_is_served_and_open_without_key(service, auth_service):
    for svc in (service, auth_service):
        with svc.client(follow_redirects=False) as c:
            home = c.get("/")
            assert home.status_code == 307 and home.headers["location"].endswith("ui/"), home.text
            page = c.get("/ui/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "Snap2Caption" in page.text and 'src="app.js"' in page.text
            for asset, ctype in (("/ui/app.js", "javascript"), ("/ui/style.css", "text/css")):
                r = c.get(asset)
                assert r.status_code == 200 and ctype in r.headers["content-type"], asset
            assert c.get("/docs").status_code == 200  # Swagger, moved from "/"
            assert c.get("/readyz").status_code == 200
    with auth_service.client() as c:  # the page is open; the API is not
        assert c.post("/feedback", json={"request_id": "x", "rating": "up"}).status_code == 401


def test_upload_generate_copy_rate_and_edit_feedback(node_dir, service, inputs):
    out = run_scenario(
        node_dir,
        "main",
        service,
        image=inputs["image"],
        editedCaption="Red box, blue sky, best day. Edited by me!",
        editedHashtags="sunset #red, #square #Red",
    )
    result = out["result"]
    assert result["caption"].strip()
    assert len(result["hashtags"]) <= 6 and all(t.startswith("#") for t in result["hashtags"])
    assert len(result["others"]) == 2 and all(o["score"].startswith("Score ") for o in result["others"])
    assert out["busy"]["disabled"] and out["busy"]["ariaBusy"] == "true"
    assert out["clipCaption"] == result["caption"]
    assert "Feedback recorded" in out["confirm"]

    records = [r for r in feedback_records(service) if r["request_id"] == result["requestId"]]
    assert [r["rating"] for r in records] == ["up", "up"], records
    edit = records[-1]
    assert edit["edited_caption"] == "Red box, blue sky, best day. Edited by me!"
    assert edit["edited_hashtags"] == ["#sunset", "#red", "#square"]
    assert edit["reason"] == "too generic"
    assert records[0]["edited_caption"] is None


def test_drop_and_keyboard_only(node_dir, service, inputs):
    out = run_scenario(node_dir, "keyboard", service, image=inputs["image"])
    records = [r for r in feedback_records(service) if r["request_id"] == out["result"]["requestId"]]
    assert [r["rating"] for r in records] == ["down"], records


def test_image_from_url_without_cors_and_refused_addresses(node_dir, url_service, image_site):
    out = run_scenario(
        node_dir,
        "url",
        url_service,
        noCorsUrl=f"{image_site}/nocors/sunny.png",
        htmlUrl=f"{image_site}/nocors/page.html",
        missingUrl=f"{image_site}/nocors/missing.png",
        blockedUrl="https://169.254.169.254/latest/meta-data/",
    )
    assert out["name"] == "sunny.png" and out["preview"]["width"] == 320
    assert out["result"]["caption"].strip()
    # The server's own reasons, as it gave them.
    assert "169.254.169.254" in out["blocked"]["detail"] and "a cloud metadata address" in out["blocked"]["detail"]
    assert "404" in out["missing"]["detail"]


def test_error_states_not_image_busy_server_network(node_dir, service, inputs):
    out = run_scenario(node_dir, "errors", service, image=inputs["image"], textFile=inputs["text"])
    assert out["notImage"]["title"] == "That file isn't a photo"
    assert "JPEG" in out["notImage"]["detail"]
    for case in ("busy429", "busy503"):
        assert out[case]["title"] == "The server is busy right now"
    assert "500" in out["server500"]["detail"]
    assert out["network"]["title"] == "Can't reach Snap2Caption"


def test_too_large_photo(node_dir, small_limit_service, inputs, image_site):
    out = run_scenario(
        node_dir, "too_large", small_limit_service, image=inputs["large"], url=f"{image_site}/nocors/large.png"
    )
    for how in ("upload", "json"):
        assert out[how]["title"] == "That photo is too large"
        detail = out[how]["detail"]
        assert "4096 bytes" in detail or "4.1 KB" in detail, out[how]  # the server's limit is shown
        assert "smaller" in detail


def test_api_key_asked_for_then_works(node_dir, auth_service, inputs):
    out = run_scenario(node_dir, "auth", auth_service, image=inputs["image"], apiKey="key-two")
    assert out["noKey"]["title"] == "This server needs an API key"
    assert out["wrong"]["title"] == "Your API key wasn't accepted"
    records = [r for r in feedback_records(auth_service) if r["request_id"] == out["result"]["requestId"]]
    assert [r["rating"] for r in records] == ["up"]


def test_phone_width_has_no_horizontal_overflow(node_dir, service, inputs):
    out = run_scenario(node_dir, "phone", service, image=inputs["image"])
    for step in out["steps"].values():
        assert step["scrollWidth"] <= 390 and not step["wide"], step
    assert (ARTIFACTS / "web-phone-2-result.png").stat().st_size > 10_000


def test_webcam_photo_and_no_camera(node_dir, service):
    out = run_scenario(node_dir, "webcam", service)
    assert out["withCam"]["name"] == "camera photo.jpg"
    assert out["withCam"]["result"]["caption"].strip()
    assert out["noCam"]["buttonHidden"]


def test_changing_tone_changes_wording(node_dir, demo_service, inputs):
    """Trained demo model (slow the first time: it trains). Runs last."""
    out = run_scenario(node_dir, "tone", demo_service, timeout=600, image=inputs["image"], tones=["funny", "serious"])
    funny, serious = out["captions"]["funny"], out["captions"]["serious"]
    assert funny["caption"].strip() and serious["caption"].strip()
    assert funny["caption"] != serious["caption"], (funny, serious)
