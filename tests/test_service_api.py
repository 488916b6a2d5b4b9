"""The HTTP contract, over real HTTP, against `bentoml serve` in a subprocess (tiny model)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import re

import pytest

from conftest import png_bytes
from snap2caption_service.core.caption_archive import CaptionArchive

pytestmark = pytest.mark.service


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_generate_caption_contract(service):
    with service.client() as c:
        r = c.post(
            "/generate-caption",
            json={
                "image": b64(png_bytes()),
                "tone": "funny",
                "audience": "promotional",
                "platform": "linkedin",
                "num_hashtags": 6,
                "num_candidates": 3,
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"caption", "hashtags", "alt_text", "candidates", "model_version", "request_id", "latency_ms"}
    assert len(body["candidates"]) == 3
    scores = [c["score"] for c in body["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert body["caption"] == body["candidates"][0]["caption"]
    assert len(body["hashtags"]) <= 6 and body["platform"] == "linkedin"
    assert all(re.fullmatch(r"#[a-z0-9]+", t) for t in body["hashtags"])
    assert body["model_version"].startswith("tiny-llava")
    assert body["latency_ms"] > 0 and len(body["request_id"]) == 32


def test_data_url_and_upload_variant(service):
    data = png_bytes(fmt="JPEG")
    with service.client() as c:
        r1 = c.post("/generate-caption", json={"image": "data:image/jpeg;base64," + b64(data)})
        r2 = c.post(
            "/generate-caption/upload",
            files={"image": ("p.jpg", data, "image/jpeg")},
            data={"tone": "serious", "audience": "academic", "num_hashtags": "5"},
        )
    assert r1.status_code == 200, r1.text
    assert r2.status_code == 200, r2.text
    assert r1.json()["image_sha256"] == r2.json()["image_sha256"]


def test_greedy_is_reproducible(service):
    body = {"image": b64(png_bytes((20, 90, 200))), "tone": "quirky"}
    with service.client() as c:
        a = c.post("/generate-caption", json=body).json()
        b = c.post("/generate-caption", json=body).json()
    assert a["caption"] == b["caption"] and a["hashtags"] == b["hashtags"]


def _pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"


def _bomb() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")
    return buf.getvalue()


BAD_JSON_BODIES = [
    ("invalid base64", {"image": "not base64 !!"}, 400, "invalid_base64"),
    ("empty image", {"image": ""}, 400, "empty_image"),
    ("text", {"image": b64(b"hello, this is just some text\n" * 3)}, 415, "not_an_image"),
    ("html", {"image": b64(b"<!DOCTYPE html><html><body>hi</body></html>")}, 415, "not_an_image"),
    ("pdf", {"image": b64(_pdf())}, 415, "not_an_image"),
    ("svg", {"image": b64(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')}, 415, "not_an_image"),
    ("unsupported format", {"image": b64(png_bytes(fmt="ICO"))}, 415, "unsupported_format"),
    ("truncated", {"image": b64(png_bytes(size=(300, 300), fmt="JPEG")[:400])}, 400, "truncated_image"),
    ("pixel bomb", {"image": b64(_bomb())}, 413, "too_many_pixels"),
]


@pytest.mark.parametrize("name,body,status,code", BAD_JSON_BODIES, ids=[b[0] for b in BAD_JSON_BODIES])
def test_bad_images_get_4xx_with_reason(service, name, body, status, code):
    with service.client() as c:
        r = c.post("/generate-caption", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code
    assert r.json()["detail"]


def test_over_byte_limit(tmp_path_factory, tiny_model_dir):
    from conftest import start_service, stop_service

    svc = start_service(tmp_path_factory.mktemp("svc-small"), tiny_model_dir, {"SNAP2CAPTION_MAX_IMAGE_BYTES": "2048"})
    try:
        big = png_bytes(size=(400, 400), fmt="BMP")
        with svc.client() as c:
            r = c.post("/generate-caption", json={"image": b64(big)})
            r2 = c.post("/generate-caption/upload", files={"image": ("a.bmp", big, "image/bmp")})
        assert r.status_code == 413 and r.json()["error"] == "image_too_large"
        assert r2.status_code == 413 and r2.json()["error"] == "image_too_large"
    finally:
        stop_service(svc.proc)


BAD_FIELDS = [
    ("empty body", b"", "image"),
    ("broken json", b"{not json", ""),
    ("tone too long", {"image": "aGk=", "tone": "x" * 33}, "tone"),
    ("unknown audience", {"image": "aGk=", "audience": "everyone"}, "audience"),
    ("too few hashtags", {"image": "aGk=", "num_hashtags": 0}, "num_hashtags"),
    ("too many hashtags", {"image": "aGk=", "num_hashtags": 11, "platform": "generic"}, "num_hashtags"),
    ("more than Instagram takes", {"image": "aGk=", "num_hashtags": 8}, "num_hashtags"),
    ("more than Threads takes", {"image": "aGk=", "num_hashtags": 2, "platform": "threads"}, "num_hashtags"),
    ("unknown platform", {"image": "aGk=", "platform": "myspace"}, "platform"),
    ("zero candidates", {"image": "aGk=", "num_candidates": 0}, "num_candidates"),
    ("too many candidates", {"image": "aGk=", "num_candidates": 6}, "num_candidates"),
]


@pytest.mark.parametrize("name,body,field", BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_bad_fields_get_400_naming_the_field(service, name, body, field):
    with service.client() as c:
        if isinstance(body, bytes):
            r = c.post("/generate-caption", content=body, headers={"content-type": "application/json"})
        else:
            r = c.post("/generate-caption", json=body)
    assert r.status_code == 400, r.text
    body = r.json()  # contracts.ErrorBody: the fields' paths and rules, never their values
    assert body["error"] == "invalid_request" and body["detail"], body
    assert any(field in f["loc"] for f in body["fields"]) if field else body["fields"]
    assert all(set(f) == {"loc", "msg"} for f in body["fields"])


def test_image_variants_are_accepted(service):
    """EXIF-rotated, grayscale, CMYK, 16-bit, palette, alpha and animated images all caption."""
    import io

    from PIL import Image

    def enc(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    variants = {
        "gray": enc(Image.new("L", (64, 48), 128), "PNG"),
        "cmyk": enc(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"),
        "16bit": enc(Image.new("I;16", (64, 48), 30000), "PNG"),
        "palette": enc(Image.new("P", (64, 48), 3), "PNG"),
        "alpha": enc(rgba, "PNG"),
        "animated": gif.getvalue(),
        "exif": enc(Image.new("RGB", (64, 32), (0, 200, 0)), "JPEG", exif=exif),
    }
    with service.client() as c:
        for name, data in variants.items():
            r = c.post("/generate-caption", json={"image": b64(data)})
            assert r.status_code == 200, (name, r.text)


def test_feedback_is_persisted(service):
    from pathlib import Path

    with service.client() as c:
        cap = c.post("/generate-caption", json={"image": b64(png_bytes())}).json()
        r = c.post(
            "/feedback",
            json={
                "request_id": cap["request_id"],
                "rating": "down",
                "edited_caption": "A better caption",
                "edited_hashtags": ["#red"],
                "reason": "too generic",
                "creator_id": "aisha",
            },
        )
        bad = c.post("/feedback", json={"request_id": cap["request_id"], "rating": "meh"})
    assert r.status_code == 202, r.text
    fid = r.json()["feedback_id"]
    assert bad.status_code == 400
    store = Path(service.env["SNAP2CAPTION_DATA_DIR"]) / "feedback.jsonl"
    records = [json.loads(line) for line in store.read_text().splitlines()]
    mine = [rec for rec in records if rec["feedback_id"] == fid]
    assert len(mine) == 1
    assert mine[0]["edited_caption"] == "A better caption" and mine[0]["creator_id"] == "aisha"
    assert mine[0]["request_id"] == cap["request_id"]
    # The record carries what the creator was shown, and the archive holds the image by hash,
    # so a feedback snapshot can turn it into a training example.
    served = mine[0]["served"]
    assert served["image_sha256"] == cap["image_sha256"] and served["caption"] == cap["caption"]
    assert served["hashtags"] == cap["hashtags"] and served["model_version"] == cap["model_version"]
    archive = CaptionArchive(str(Path(service.env["SNAP2CAPTION_DATA_DIR"]) / "archive"))
    from PIL import Image

    assert Image.open(io.BytesIO(archive.image(cap["image_sha256"]))).size == (96, 72)


def test_feedback_for_an_unknown_request_is_404(service):
    import uuid

    with service.client() as c:
        r = c.post("/feedback", json={"request_id": uuid.uuid4().hex, "rating": "up"})
        malformed = c.post("/feedback", json={"request_id": "never-served", "rating": "up"})
    assert r.status_code == 404 and r.json()["error"] == "unknown_request", r.text
    # Not the shape the service issues: refused before any lookup (tests/test_feedback_security.py).
    assert malformed.status_code == 400 and malformed.json()["fields"][0]["loc"] == ["request_id"], malformed.text


def test_health_and_metrics(service):
    with service.client() as c:
        assert c.get("/livez").status_code == 200
        assert c.get("/readyz").status_code == 200
        c.post("/generate-caption", json={"image": b64(png_bytes())})
        text = c.get("/metrics").text
    for name in (
        "snap2caption_captions_total",
        "snap2caption_caption_latency_seconds_bucket",
        "snap2caption_model_batch_size_bucket",
        "snap2caption_generated_tokens_total",
        "snap2caption_model_info",
        "bentoml_service_request_total",
    ):
        assert name in text, name
    assert re.search(r'snap2caption_captions_total\{outcome="ok",source="http"\} [1-9]', text)


def test_concurrent_requests_are_batched(service):
    """16 simultaneous requests must reach the model in batches larger than one."""

    def batch_stats(text):
        count = float(re.search(r"^snap2caption_model_batch_size_count(?:\{[^}]*\})? (\S+)", text, re.M).group(1))
        total = float(re.search(r"^snap2caption_model_batch_size_sum(?:\{[^}]*\})? (\S+)", text, re.M).group(1))
        return count, total

    with service.client() as c:
        before = batch_stats(c.get("/metrics").text)
        body = {"image": b64(png_bytes((10, 200, 10)))}
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: c.post("/generate-caption", json=body).status_code, range(16)))
        after = batch_stats(c.get("/metrics").text)
    assert codes == [200] * 16
    calls, items = after[0] - before[0], after[1] - before[1]
    assert items == 16
    assert calls < 16, f"{calls} model calls for 16 requests: no batching"
    assert items / calls > 1.5


def test_openapi_docs_served(service):
    with service.client() as c:
        spec = c.get("/docs.json").json()
    assert "/generate-caption" in spec["paths"] and "/feedback" in spec["paths"]


def test_auth_required_when_keys_configured(auth_service):
    body = {"image": b64(png_bytes())}
    with auth_service.client() as c:
        assert c.post("/generate-caption", json=body).status_code == 401
        assert c.post("/generate-caption", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/generate-caption", json=body, headers={"Authorization": "Basic key-one"}).status_code == 401
        assert c.post("/feedback", json={"request_id": "x", "rating": "up"}).status_code == 401
        ok = c.post("/generate-caption", json=body, headers={"Authorization": "Bearer key-two"})
        assert ok.status_code == 200, ok.text
        assert c.get("/livez").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.get("/docs.json").status_code == 200
        r = c.post("/generate-caption", json=body)
        assert r.json()["error"] == "unauthorized"


def test_overload_answers_429_quickly(tmp_path_factory, tiny_model_dir):
    """Past max_concurrency in-flight requests, extra ones are refused at once, not queued."""
    import time

    from conftest import start_service, stop_service

    svc = start_service(
        tmp_path_factory.mktemp("svc-busy"),
        tiny_model_dir,
        {
            "SNAP2CAPTION_MAX_CONCURRENCY": "2",
            "SNAP2CAPTION_MAX_NEW_TOKENS": "64",
            "SNAP2CAPTION_FAULT_LATENCY_MS": "1500",
        },
    )
    try:
        body = {"image": b64(png_bytes())}

        def one(_):
            with svc.client() as c:
                t0 = time.perf_counter()
                r = c.post("/generate-caption", json=body)
                return r.status_code, time.perf_counter() - t0, r.text

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(one, range(10)))
        refused = [r for r in results if r[0] == 429]
        assert {r[0] for r in results} <= {200, 429}, results
        assert len(refused) >= 5, results
        assert all(t < 1.0 for _, t, _ in refused), refused
        assert "Too many requests" in refused[0][2]
    finally:
        stop_service(svc.proc)
