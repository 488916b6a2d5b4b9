"""training/config.py: the training configs and the data sources they name (no services).
The eval split and the LoRA wiring: tests/test_finetune.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from training.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_example_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.gate_rule().primary_metric == "cider_d"
    assert cfg.total_steps(1000) >= 1


def test_overrides_and_strictness(tmp_path):
    cfg = load_config(CONFIGS / "demo-lora.yaml", ["steps=7", "lora.r=4", "eval.guard_scenes=0"])
    assert (cfg.steps, cfg.lora.r, cfg.eval.guard_scenes) == (7, 4, 0)
    with pytest.raises(ValidationError, match="lora_rank"):
        load_config(CONFIGS / "demo-lora.yaml", ["lora_rank=4"])  # a typo is an error, not a default
    with pytest.raises(ValidationError, match="exactly one of steps or epochs"):
        load_config(CONFIGS / "demo-lora.yaml", ["epochs=2"])
    with pytest.raises(ValueError, match="guarded"):
        load_config(CONFIGS / "demo-lora.yaml", ["registration_rule.guarded.bleu4=-1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(CONFIGS / "demo-lora.yaml", ["steps"])
    epochs = load_config(CONFIGS / "demo-lora.yaml", ["steps=null", "epochs=2", "batch_size=8", "grad_accum=2"])
    assert epochs.total_steps(160) == 20  # 2 epochs of 160 at a global batch of 16


def test_synthetic_sources_and_the_idf_corpus(tmp_path, monkeypatch):
    from snap2caption_service.core.settings import get_settings
    from training.config import DataSource
    from training.datasets import read_captions, read_source
    from training.evaluation import idf_documents

    with pytest.raises(ValidationError, match="scenes"):
        DataSource(kind="synthetic", path="/x")
    with pytest.raises(ValidationError, match="needs a path"):
        DataSource(kind="manifest")
    cfg = load_config(CONFIGS / "demo-retrain.yaml", ["eval.idf_corpus.0.scenes=30"])
    assert len(idf_documents(cfg.eval)) == 30
    monkeypatch.setenv("SNAP2CAPTION_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        spec = DataSource(kind="synthetic", scenes=6, seed=3).model_dump()
        records = read_source(spec)  # rendered once into the data dir, then read from there
        assert [r.caption for r in records] == read_captions(spec)
        assert all(Path(r.image).is_file() for r in records)
        assert read_source(spec) == records and len(list((tmp_path / "synthetic").iterdir())) == 1
    finally:
        get_settings.cache_clear()
