"""The model version string every answer reports as ``model_version``: one home for its rules.

- a registered version (MLflow champion):       ``<registered model>:v<N>``
- the embedded demo model:                      ``demo-<recipe key>`` (its snap2caption_demo.json)
- any other folder:                             ``<folder name>@<content hash>``
- a hub id:                                     the id as given
- with a LoRA adapter merged in:                ``<base>+<adapter folder>@<content hash>``
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DEMO_META_FILE = "snap2caption_demo.json"
# An adapter's record of the base it was trained on, written next to adapter_config.json.
ADAPTER_META = "snap2caption_adapter.json"


def registered_version(name: str, version: str | int) -> str:
    return f"{name}:v{version}"


def demo_version(recipe_key: str) -> str:
    return f"demo-{recipe_key}"


def _folder_hash(path: Path) -> str:
    """Short content hash of an artifact folder's weights and configs, for versioning."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".model", ".txt"}:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def model_version(model_ref: str, adapter_ref: str = "") -> str:
    """A version string that changes whenever the weights served change."""
    path = Path(model_ref)
    meta = path / DEMO_META_FILE
    if meta.is_file():
        base = json.loads(meta.read_text())["version"]
    elif path.is_dir():
        base = f"{path.name}@{_folder_hash(path)}"
    else:
        base = model_ref
    if adapter_ref:
        apath = Path(adapter_ref)
        base += f"+{apath.name}@{_folder_hash(apath)}" if apath.is_dir() else f"+{adapter_ref}"
    return base
