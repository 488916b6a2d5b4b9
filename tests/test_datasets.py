"""training/datasets.py: the InstaCities reader and the JSONL manifest reader (local, and in
S3 on moto's server)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from stream_support import moto_s3  # noqa: F401  (fixture)
from training.datasets import DataError, load_image, read_instacities, read_manifest, read_source


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "PNG")
    return buf.getvalue()


def test_instacities_reader(tmp_path):
    for city, name, text in [
        ("london", "1", "Rainy walk by the Thames #london #Rain"),
        ("paris", "a", "Croissant o'clock"),
    ]:
        (tmp_path / city).mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / city / f"{name}.jpg")
        (tmp_path / city / f"{name}.txt").write_text(text)
    Image.new("RGB", (20, 20)).save(tmp_path / "paris" / "no-caption.jpg")  # skipped with a warning
    recs = read_instacities(tmp_path)
    assert [r.image_id for r in recs] == ["london/1", "paris/a"]
    assert recs[0].caption == "Rainy walk by the Thames" and recs[0].hashtags[:3] == ("#london", "#rain", "#rainy")
    assert "#paris" in recs[1].hashtags
    assert load_image(recs[0].image).size == (20, 20)
    with pytest.raises(DataError, match="no <city>"):
        read_instacities(tmp_path / "london")


def test_manifest_reader_local_and_s3(tmp_path, moto_s3, monkeypatch):
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "img").mkdir()
    Image.new("RGB", (10, 10), (9, 9, 9)).save(tmp_path / "img" / "a.png")
    uri = moto_s3.put("train/b.png", png((0, 200, 0)))
    lines = [
        {
            "image": "img/a.png",
            "caption": "Local one",
            "hashtags": "#a #b",
            "tone": "funny",
            "audience": "academic",
            "alt_text": "A grey square.",
        },
        {"image": uri, "caption": "From S3", "hashtags": ["#Green!"]},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    recs = read_source({"kind": "manifest", "path": str(tmp_path / "m.jsonl")})
    assert recs[0].image == str(tmp_path / "img" / "a.png") and recs[0].audience == "academic"
    assert recs[1].hashtags == ("#green",) and load_image(recs[1].image).getpixel((0, 0)) == (0, 200, 0)
    # A manifest in S3 with relative image paths: they resolve beside it.
    moto_s3.put("sets/v1/images/c.png", png((5, 5, 250)))
    moto_s3.put("sets/v1/records.jsonl", json.dumps({"image": "images/c.png", "caption": "Blue"}).encode())
    s3_recs = read_manifest(f"s3://{moto_s3.bucket}/sets/v1/records.jsonl")
    assert load_image(s3_recs[0].image).getpixel((0, 0)) == (5, 5, 250)

    (tmp_path / "bad.jsonl").write_text('{"image": "x.png", "caption": "ok"}\n{"image": "y.png"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="audience"):
        (tmp_path / "aud.jsonl").write_text('{"image": "x.png", "caption": "ok", "audience": "aliens"}\n')
        read_manifest(tmp_path / "aud.jsonl")
