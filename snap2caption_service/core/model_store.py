"""The captioner in BentoML's model store: what `bentoml build` packages and a Bento serves.

``import_model`` takes any LLaVA checkpoint (folder or Hugging Face id) and an optional
PEFT LoRA adapter, merges the adapter into the base once, and saves a single set of
safetensors weights (plus the processor) as the store model ``snap2caption-captioner``.
A Bento built from that entry starts by reading one weights file: no adapter download,
no merge, no content hashing at cold start.

``packaged_model`` answers, inside a running service, "was I started from a Bento that
carries a captioner?" bentofile.yaml lists the model under the alias ``captioner``;
BentoML only defines that alias when it serves a built Bento, so ``make serve`` from the
repo never picks up whatever happens to be in ``~/bentoml``.

The seam for other sources (the MLflow registry's champion, say): download its model and
adapter folders, then call ``import_model(model_dir, adapter_dir, version=..., source=...)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from snap2caption_service.core.captioner import load_merged, resolve_dtype
from snap2caption_service.core.versions import model_version

log = logging.getLogger(__name__)

STORE_MODEL_NAME = "snap2caption-captioner"
# Must match the `alias` of the model in bentofile.yaml (tests/test_bento_build.py checks).
BENTO_MODEL_ALIAS = "captioner"
WEIGHTS_DIR = "hf"  # inside the store entry: a transformers save_pretrained folder
MANIFEST_FILE = "snap2caption_model.json"

_TAG_MAX = 63  # BentoML's limit for a tag's name or version


@dataclass(frozen=True)
class StoredCaptioner:
    """One captioner in the model store, as much as serving and the CLI need to know."""

    tag: str
    path: Path  # the save_pretrained folder Captioner.load reads
    version: str  # reported as model_version in every answer
    source: str  # where it came from: "demo", "path", "hub", or a caller's label
    base_model: str
    adapter: str
    created: str = ""
    size_bytes: int = 0

    def as_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def tag_version(version: str) -> str:
    """A BentoML tag version for a free-form model version.

    Versions such as ``llava-1.5-7b-hf+adapter@3f2a`` contain characters a tag may not, so
    those get a hash suffix: two different versions never share a tag.
    """
    clean = re.sub(r"[^a-z0-9._-]+", "-", version.lower()).strip("-._")
    if clean == version and 0 < len(clean) <= _TAG_MAX:
        return clean
    digest = hashlib.sha256(version.encode()).hexdigest()[:10]
    return f"{clean[: _TAG_MAX - 11].rstrip('-._') or 'model'}-{digest}"


def _stored_to_captioner(stored) -> StoredCaptioner:
    meta = stored.info.metadata
    path = Path(stored.path_of(WEIGHTS_DIR))
    if not (path / "config.json").is_file():
        raise RuntimeError(
            f"model store entry {stored.tag} has no weights under {path}; "
            f"re-import it with `snap2caption import-model --force`"
        )
    return StoredCaptioner(
        tag=str(stored.tag),
        path=path,
        version=meta.get("version", str(stored.tag)),
        source=meta.get("source", ""),
        base_model=meta.get("base_model", ""),
        adapter=meta.get("adapter", ""),
        created=str(stored.creation_time),
        size_bytes=int(meta.get("size_bytes", 0)),
    )


def get_stored(tag: str = f"{STORE_MODEL_NAME}:latest") -> StoredCaptioner:
    """A captioner from the model store by tag (raises bentoml.exceptions.NotFound)."""
    import bentoml

    return _stored_to_captioner(bentoml.models.get(tag))


def packaged_model() -> StoredCaptioner | None:
    """The captioner packaged in the Bento this process serves, or None outside a Bento."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        # Resolves through the Bento's model aliases; outside a Bento "captioner" is just a
        # model name nobody uses, hence NotFound.
        stored = bentoml.models.get(BENTO_MODEL_ALIAS)
    except NotFound:
        return None
    return _stored_to_captioner(stored)


def _default_source(model_ref: str) -> str:
    if (Path(model_ref) / "snap2caption_demo.json").is_file():
        return "demo"
    return "path" if Path(model_ref).exists() else "hub"


def import_model(
    model_ref: str,
    adapter_ref: str = "",
    *,
    version: str = "",
    source: str = "",
    dtype: str = "auto",
    force: bool = False,
) -> StoredCaptioner:
    """Save ``model_ref`` (+ ``adapter_ref`` merged in) as ``snap2caption-captioner:<version>``.

    model_ref: a LLaVA folder or Hugging Face id; adapter_ref: a PEFT LoRA adapter folder or
    ""; version: what the service will report as model_version (default: derived from the
    folders' contents, as the service does); dtype: "auto" keeps the checkpoint's own.
    An entry with the same version is reused unless ``force``.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    if adapter_ref and not (Path(adapter_ref) / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_ref} is not a PEFT adapter folder (no adapter_config.json)")
    if Path(model_ref).exists() and not (Path(model_ref) / "config.json").is_file():
        raise ValueError(f"{model_ref} is not a model folder (no config.json)")
    version = version or model_version(model_ref, adapter_ref)
    tag = f"{STORE_MODEL_NAME}:{tag_version(version)}"
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if not force:
            log.info("%s is already in the model store (version %s); --force re-imports it", tag, version)
            return _stored_to_captioner(existing)
        bentoml.models.delete(tag)

    t0 = time.perf_counter()
    torch_dtype = "auto" if dtype == "auto" else resolve_dtype(dtype, "cpu")
    model, processor = load_merged(model_ref, adapter_ref, torch_dtype)
    load_s = time.perf_counter() - t0
    source = source or _default_source(model_ref)
    labels = {
        "version": version[:_TAG_MAX],
        "source": source[:_TAG_MAX],
        "merged_adapter": "yes" if adapter_ref else "no",
    }
    metadata = {
        "version": version,
        "source": source,
        "base_model": str(model_ref),
        "adapter": str(adapter_ref),
        "dtype": str(model.dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": type(model).__name__,
    }
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as entry:
        out = Path(entry.path_of(WEIGHTS_DIR))
        # One safetensors set, adapter already merged: the served image never needs peft's
        # merge or a second download at start-up.
        model.save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        entry.info.metadata["size_bytes"] = size
        (out / MANIFEST_FILE).write_text(json.dumps({**metadata, "size_bytes": size, "tag": tag}, indent=2))
    log.info(
        "imported %s as %s (%.1f MB, load+merge %.1fs, total %.1fs)",
        version,
        tag,
        size / 1e6,
        load_s,
        time.perf_counter() - t0,
    )
    return get_stored(tag)
