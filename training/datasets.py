"""Training and evaluation data: one record type, three readers.

- ``read_instacities(root)``: InstaCities-style folders, ``<city>/<name>.jpg`` with the
  caption in ``<name>.txt`` (hashtags written inline in the caption are split out).
- ``read_manifest(path)``: JSONL, one object per line: ``image`` (a path relative to the
  manifest, an absolute path or an ``s3://`` URI), ``caption``, ``hashtags``, ``tone``,
  ``audience``, ``alt_text``. Feedback snapshots are written in this same format
  (training/feedback_snapshot.py), so they are read by this reader too.
- ``read_source(spec)``: a config entry ``{kind: instacities|manifest|feedback_snapshot, path}``
  or ``{kind: synthetic, scenes, seed}`` (the demo model's generated scenes, rendered once
  into the data directory); ``read_captions(spec)`` gives only the captions of one.

Images are loaded when examples are built, not when records are read, so reading a large
manifest is cheap and a missing image fails with the record that names it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from snap2caption_service.core.contracts import AUDIENCES
from snap2caption_service.core.hashtags import finalize_hashtags, normalize_hashtag
from snap2caption_service.core.prompting import format_target
from snap2caption_service.core.storage import s3_client, split_s3_uri

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_INLINE_TAG = re.compile(r"#\w+")


class DataError(ValueError):
    """A record or source that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class CaptionRecord:
    image: str  # local path or s3:// URI
    caption: str
    hashtags: tuple[str, ...]
    alt_text: str = ""
    tone: str = "casual"
    audience: str = "personal"
    image_id: str = ""  # stable id for prediction tables; defaults to the image reference
    kind: str = "reference"  # reference | correction | positive (feedback snapshots)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def creator_id(self) -> str | None:
        """The creator the caption was requested for (feedback snapshots carry it); None for
        data that belongs to no one creator."""
        return self.extra.get("creator_id") or None

    @property
    def hashtags_from_ranker(self) -> bool:
        """The hashtags are what serving's ranker showed and the creator left alone (feedback
        snapshots say so), not a list someone chose: fine-tunes read them but do not learn them."""
        return self.extra.get("hashtags_from") == "ranker"

    @property
    def shown_caption(self) -> str | None:
        """The caption the creator was shown, when ``caption`` is their edit of it (feedback
        snapshots record it); None when the caption was written from scratch or kept."""
        shown = self.extra.get("shown_caption")
        return shown if isinstance(shown, str) and shown != self.caption else None

    def target(self) -> str:
        # Alt text is what a screen reader says; a dataset without it falls back to the caption
        # rather than teaching the model to answer with an empty line.
        return format_target(self.caption, list(self.hashtags), self.alt_text or self.caption)

    def to_json(self) -> dict:
        return {
            "image": self.image,
            "image_id": self.image_id,
            "caption": self.caption,
            "hashtags": list(self.hashtags),
            "alt_text": self.alt_text,
            "tone": self.tone,
            "audience": self.audience,
            "kind": self.kind,
            **self.extra,
        }


def split_inline_hashtags(text: str) -> tuple[str, list[str]]:
    """'Sunset over the bay #sf #goldenhour' -> ('Sunset over the bay', ['#sf', '#goldenhour'])."""
    tags = [t for t in (normalize_hashtag(m) for m in _INLINE_TAG.findall(text)) if t]
    return " ".join(_INLINE_TAG.sub(" ", text).split()), list(dict.fromkeys(tags))


def read_instacities(root: str | Path, tone: str = "casual", audience: str = "personal") -> list[CaptionRecord]:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"InstaCities folder {root} does not exist")
    records = []
    for city in sorted(p for p in root.iterdir() if p.is_dir()):
        for img in sorted(p for p in city.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            txt = img.with_suffix(".txt")
            if not txt.is_file():
                log.warning("skipping %s: no caption file %s", img, txt.name)
                continue
            caption, tags = split_inline_hashtags(txt.read_text(encoding="utf-8", errors="replace"))
            city_tag = normalize_hashtag(city.name)
            tags = finalize_hashtags(tags + ([city_tag] if city_tag else []), 10, caption=caption)
            if not caption:
                log.warning("skipping %s: caption is only hashtags", img)
                continue
            records.append(
                CaptionRecord(
                    image=str(img),
                    caption=caption,
                    hashtags=tuple(tags),
                    tone=tone,
                    audience=audience,
                    image_id=f"{city.name}/{img.stem}",
                )
            )
    if not records:
        raise DataError(f"no <city>/<name>.jpg + <name>.txt pairs under {root}")
    return records


def read_manifest(path: str | Path) -> list[CaptionRecord]:
    if str(path).startswith("s3://"):
        path = _download_manifest(str(path))
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                records.append(_manifest_record(obj, path.parent))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path}:{n}: {exc}") from exc
    return records


_KNOWN = {"image", "image_id", "caption", "hashtags", "alt_text", "tone", "audience", "kind"}


def _manifest_record(obj: dict, base: Path) -> CaptionRecord:
    image = str(obj["image"])
    if not image.startswith("s3://") and not os.path.isabs(image):
        image = str(base / image)
    caption = str(obj["caption"]).strip()
    if not caption:
        raise ValueError("empty caption")
    hashtags = obj.get("hashtags") or []
    if isinstance(hashtags, str):
        hashtags = hashtags.split()
    tags = [t for t in (normalize_hashtag(h) for h in hashtags) if t]
    audience = obj.get("audience") or "personal"
    if audience not in AUDIENCES:
        raise ValueError(f"audience must be one of {AUDIENCES}, got {audience!r}")
    return CaptionRecord(
        image=image,
        caption=caption,
        hashtags=tuple(dict.fromkeys(tags)),
        alt_text=str(obj.get("alt_text") or ""),
        tone=str(obj.get("tone") or "casual"),
        audience=audience,
        image_id=str(obj.get("image_id") or obj["image"]),
        kind=str(obj.get("kind") or "reference"),
        extra={k: v for k, v in obj.items() if k not in _KNOWN},
    )


def write_manifest(records: list[CaptionRecord], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), sort_keys=True) + "\n")


def read_source(spec: dict) -> list[CaptionRecord]:
    """One ``data`` entry of a training config."""
    kind, path = spec.get("kind"), spec.get("path")
    if kind == "synthetic":
        from training import synthetic_manifest

        return synthetic_manifest.cached_records(int(spec["scenes"]), int(spec.get("seed", 77)))
    if not path:
        raise DataError(f"data source {spec} has no path")
    if kind == "instacities":
        return read_instacities(path, spec.get("tone", "casual"), spec.get("audience", "personal"))
    if kind == "manifest":
        return read_manifest(path)
    if kind == "feedback_snapshot":
        from training.feedback_snapshot import read_snapshot

        return read_snapshot(path)
    raise DataError(f"unknown data source kind {kind!r}; use instacities, manifest, feedback_snapshot or synthetic")


def read_captions(spec: dict) -> list[str]:
    """Only the captions of a data source (synthetic scenes are not rendered for this)."""
    if spec.get("kind") == "synthetic":
        from training import synthetic_manifest

        return synthetic_manifest.scene_captions(int(spec["scenes"]), int(spec.get("seed", 77)))
    return [r.caption for r in read_source(spec)]


def _download_manifest(uri: str) -> Path:
    """An s3:// manifest, downloaded; its relative image paths become s3:// URIs beside it."""
    import tempfile

    bucket, key = split_s3_uri(uri)
    body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    base = f"s3://{bucket}/{key.rsplit('/', 1)[0]}" if "/" in key else f"s3://{bucket}"
    lines = []
    for line in body.splitlines():
        if line.strip():
            obj = json.loads(line)
            img = str(obj.get("image", ""))
            if img and not img.startswith("s3://") and not os.path.isabs(img):
                obj["image"] = f"{base}/{img}"
            lines.append(json.dumps(obj))
    out = Path(tempfile.mkdtemp(prefix="snap2caption-manifest-")) / "records.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def load_image(ref: str):
    """A record's image as an RGB PIL image, from disk or S3 (core/storage.py: AWS_ENDPOINT_URL_S3 for MinIO/moto)."""
    from PIL import Image

    if ref.startswith("s3://"):
        bucket, key = split_s3_uri(ref)
        data = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    else:
        try:
            data = Path(ref).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read image {ref}: {exc}") from exc
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"{ref} is not a readable image: {exc}") from exc
