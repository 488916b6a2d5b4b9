"""Checkpoints and adapters load from safetensors only (issue 13): a folder whose weights are
only a pickle (pytorch_model.bin, adapter_model.bin) is refused with a clear error, and the
pickle is never opened. Serving (core/captioner.py load_merged) and fine-tuning
(training/finetune.py load_trainable) share the rule."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from snap2caption_service.core.captioner import UnsafeCheckpoint, load_merged, require_safetensors, safetensors_adapter


class _RunsCode:
    """What a hostile pickle does: call anything at load time (here: create a marker folder)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_RunsCode(marker)))


@pytest.fixture(scope="module")
def pickle_checkpoint(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model's folder with its safetensors weights swapped for a code-running pickle."""
    folder = tmp_path_factory.mktemp("pickle-ckpt") / "model"
    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("model*.safetensors*"):
        weights.unlink()
    marker = folder.parent / "pickle-ran"
    plant_pickle(folder / "pytorch_model.bin", marker)
    return folder, marker


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(safetensors adapter, pickle-only adapter, marker the pickle would create)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    root = tmp_path_factory.mktemp("adapters")
    base = LlavaForConditionalGeneration.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(
        root / "safe"
    )
    shutil.copytree(root / "safe", root / "pickle")
    (root / "pickle" / "adapter_model.safetensors").unlink()
    plant_pickle(root / "pickle" / "adapter_model.bin", root / "adapter-pickle-ran")
    return root / "safe", root / "pickle", root / "adapter-pickle-ran"


def test_a_checkpoint_with_only_pytorch_model_bin_is_refused(pickle_checkpoint):
    folder, marker = pickle_checkpoint
    with pytest.raises(UnsafeCheckpoint, match=r"no safetensors weights.*only pytorch_model\.bin \(pickle"):
        load_merged(str(folder))
    assert not marker.exists()  # never unpickled


def test_from_pretrained_itself_is_asked_for_safetensors(pickle_checkpoint, monkeypatch):
    """Past the folder check (or for a hub id, which it cannot look into), transformers is
    asked for safetensors only and refuses the pickle itself."""
    from snap2caption_service.core import captioner

    folder, marker = pickle_checkpoint
    monkeypatch.setattr(captioner, "require_safetensors", lambda ref: None)
    with pytest.raises(OSError, match="model.safetensors"):
        captioner.load_merged(str(folder))
    assert not marker.exists()


def test_a_folder_without_any_weights_is_refused_too(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnsafeCheckpoint, match="no safetensors weights"):
        require_safetensors(str(tmp_path))


def test_an_adapter_with_only_adapter_model_bin_is_refused(tiny_model_dir, adapters):
    safe, unsafe, marker = adapters
    assert safetensors_adapter(str(safe)) == str(safe)
    with pytest.raises(UnsafeCheckpoint, match=r"no adapter_model\.safetensors.*only adapter_model\.bin"):
        load_merged(str(tiny_model_dir), str(unsafe))
    assert not marker.exists()
    model, _ = load_merged(str(tiny_model_dir), str(safe))  # the safetensors adapter still merges
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_fine_tuning_refuses_pickles_too(tiny_model_dir, pickle_checkpoint, adapters):
    from training.finetune import load_trainable

    folder, marker = pickle_checkpoint
    _, unsafe, adapter_marker = adapters
    cfg = SimpleNamespace(precision="fp32")  # nothing else is read before the refusal
    with pytest.raises(UnsafeCheckpoint, match="pytorch_model.bin"):
        load_trainable(str(folder), cfg, None, "cpu")
    with pytest.raises(UnsafeCheckpoint, match="adapter_model.bin"):
        load_trainable(str(tiny_model_dir), cfg, str(unsafe), "cpu")
    assert not marker.exists() and not adapter_marker.exists()
