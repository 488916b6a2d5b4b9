"""Which weights to serve, first match wins:

1. SNAP2CAPTION_MODEL (+ SNAP2CAPTION_ADAPTER): an explicit choice always wins;
2. with MLflow configured (MLFLOW_TRACKING_URI), the registry's ``models:/<name>@champion``:
   its LoRA adapter on the base model it was trained on; or, when the Bento being served
   already packages that very version (`import-model --champion`), the packaged weights,
   with nothing downloaded or merged at start;
3. the captioner packaged in the Bento being served (bentofile.yaml `models:`, imported by
   `snap2caption import-model`): what a container built with `bentoml containerize` runs;
4. the embedded demo model, built on first use (what `make serve` runs from the repo).
   Building it is training's job: the entry point (the BentoML service, the CLI) passes
   ``training.build_demo.ensure_demo_model`` in as ``demo``, so this module imports no training code.

A source that is configured but unavailable (MLflow down, no champion yet) is logged and
skipped: the service starts on the next one rather than not at all.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snap2caption_service.core.captioner import Captioner
from snap2caption_service.core.creator_adapters import ResidentAdapters, registry_adapters
from snap2caption_service.core.registry import NO_CHAMPION, RegistryReader
from snap2caption_service.core.settings import Settings
from snap2caption_service.core.versions import ADAPTER_META, registered_version

log = logging.getLogger(__name__)

# (data_dir, progress) -> the demo model's folder, built on first use.
DemoBuilder = Callable[[Path, bool], Path]


def resolve_base(base_model: str, data_dir: Path, demo: DemoBuilder) -> str:
    """'demo' -> the embedded demo model's folder (built on first use); anything else as given."""
    if base_model != "demo":
        return base_model
    return str(demo(data_dir, True))


def adapter_base(adapter_dir: str | Path, data_dir: Path, demo: DemoBuilder) -> str:
    """The base model an adapter was trained on, as a loadable reference."""
    meta_path = Path(adapter_dir) / ADAPTER_META
    if not meta_path.is_file():
        cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
        return cfg["base_model_name_or_path"]
    meta = json.loads(meta_path.read_text())
    trained_on = Path(meta.get("base_ref", ""))
    if meta.get("base_version") and trained_on.name == meta["base_version"] and trained_on.is_dir():
        return str(trained_on)  # the very demo model folder it was trained on is here
    base = resolve_base(meta["base_model"], data_dir, demo)
    if meta.get("base_version") and Path(base).name != meta["base_version"]:
        raise RuntimeError(
            f"adapter {adapter_dir} was trained on {meta['base_version']} but the demo model here "
            f"is {Path(base).name}: retrain it on this base"
        )
    return base


@dataclass(frozen=True)
class ModelChoice:
    ref: str  # what Captioner.load reads: a Hugging Face id or a folder
    adapter: str = ""  # PEFT LoRA adapter folder merged at load, or ""
    version: str | None = None  # known version; None: derived from the folders' contents
    source: str = ""  # for the log: why these weights
    champion_version: str | None = None  # the registry champion's version number, when these are its weights


def _bare(adapter: str) -> str | None:
    """The champion_version creator adapters need to be served on these weights: a model with no
    adapter merged is the bare base; one with an adapter from elsewhere matches no registry tag."""
    return None if adapter else NO_CHAMPION


def _explicit(settings: Settings) -> ModelChoice | None:
    if settings.model:
        return ModelChoice(
            settings.model, settings.adapter, source="SNAP2CAPTION_MODEL", champion_version=_bare(settings.adapter)
        )
    return None


def champion_choice(settings: Settings, demo: DemoBuilder, packaged=None) -> ModelChoice | None:
    """The registry's champion (downloaded once per version), or None if none is registered.

    ``packaged``: the StoredCaptioner in the Bento being served, if any. When it is the
    champion's version (imported with `import-model --champion`), it is served as it is: a
    cold start then skips the adapter download and the merge.

    Raises when MLflow is unreachable or the adapter cannot be used.
    """
    registry = RegistryReader(settings.registered_model or None, settings.mlflow_tracking_uri or None)
    champion = registry.champion()
    if champion is None:
        return None
    version = registered_version(registry.name, champion.version)
    if packaged is not None and packaged.version == version:
        return ModelChoice(
            str(packaged.path),
            "",
            version,
            source=f"MLflow champion {version}, packaged in this Bento as {packaged.tag}",
            champion_version=champion.version,
        )
    # Versions are immutable, so a downloaded one is reused at the next start.
    folder = settings.data_dir / "champions" / f"{registry.name}-v{champion.version}"
    adapter = folder / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        adapter = registry.download(champion.version, folder)
    base = adapter_base(adapter, settings.data_dir, demo)
    return ModelChoice(
        base,
        str(adapter),
        version,
        source=f"MLflow champion models:/{registry.name}@champion (v{champion.version})",
        champion_version=champion.version,
    )


def _champion(settings: Settings, demo: DemoBuilder) -> ModelChoice | None:
    if not settings.mlflow_tracking_uri:
        return None
    try:
        choice = champion_choice(settings, demo, _stored_in_bento())
    except Exception as exc:  # noqa: BLE001 - MLflow down, download failed, base mismatch: all fall through
        log.warning("could not load the MLflow champion (%s): serving the next model source", exc)
        return None
    if choice is None:
        log.warning("MLflow model %s has no champion yet: serving the next model source", settings.registered_model)
    return choice


def _stored_in_bento():
    if "bentoml" not in sys.modules:  # not inside a BentoML server: spare the CLI the import
        return None
    from snap2caption_service.core.model_store import packaged_model

    return packaged_model()


def _packaged(settings: Settings) -> ModelChoice | None:
    stored = _stored_in_bento()
    if stored is None:
        return None
    # An adapter named in the environment still applies, on top of the packaged weights; the
    # version then comes from the folders so it says so.
    version = None if settings.adapter else stored.version
    return ModelChoice(str(stored.path), settings.adapter, version, source=f"Bento model {stored.tag}")


def _demo(settings: Settings, demo: DemoBuilder, progress: bool) -> ModelChoice:
    return ModelChoice(
        str(demo(settings.data_dir, progress)),
        settings.adapter,
        source="demo model",
        champion_version=_bare(settings.adapter),
    )


def choose_model(settings: Settings, demo: DemoBuilder, progress: bool = True) -> ModelChoice:
    return _explicit(settings) or _champion(settings, demo) or _packaged(settings) or _demo(settings, demo, progress)


def load_captioner(settings: Settings, demo: DemoBuilder, progress: bool = True) -> Captioner:
    return load_serving(settings, demo, progress)[0]


def load_serving(
    settings: Settings, demo: DemoBuilder, progress: bool = True, run_on_model=lambda fn: fn(), **adapter_hooks
) -> tuple[Captioner, ResidentAdapters | None]:
    """The captioner, and the creator adapters that go with it (None when it is not the registry's
    champion, or they are off). ``run_on_model``: how to run a change of the model on the thread
    that generates (creator_adapters.py)."""
    choice = choose_model(settings, demo, progress=progress)
    log.info("serving the %s: %s%s", choice.source, choice.ref, f" + {choice.adapter}" if choice.adapter else "")
    captioner = Captioner.load(
        choice.ref,
        choice.adapter,
        device=settings.device,
        dtype=settings.dtype,
        generation=settings.generation,
        version=choice.version,
    )
    adapters = registry_adapters(
        captioner,
        choice.champion_version,
        settings.data_dir,
        settings.registered_model,
        settings.mlflow_tracking_uri,
        settings.max_resident_adapters,
        settings.adapter_refresh_s,
        run_on_model,
        **adapter_hooks,
    )
    return captioner, adapters
