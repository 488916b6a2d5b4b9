"""Per-creator LoRA adapters, served unmerged beside the merged champion, many in one batch.

A creator adapter is a LoRA trained on top of the champion merged into the base (the registry
contract is in core/registry.py: versions of "<registered model>-creators", alias
"creator-<key>", tags creator_id and champion_version). Serving one means:

- ``CreatorRegistry``: creator_id -> the version serving them, only if it was trained on the
  champion served here, downloaded once per version into <data_dir>/creator-adapters;
- ``ResidentAdapters``: which of them are loaded into the captioner's model (peft adapters,
  not merged, so one generate call mixes rows of many creators and champion rows); at most
  ``max_resident`` stay when no batch needs them (LRU), and an alias is re-read after
  ``refresh_s``, so a newly promoted adapter is served without a restart and the old one unloaded.

Threads: ``acquire`` runs on the caller's thread (never the model's): the registry lookup, the
download and reading the weights happen there, so the batches of other creators keep running.
Only changing the model (adding or deleting an adapter's modules, a few milliseconds) runs on
the model thread through ``run_on_model``, between batches: peft's generate walks and hooks
every module, which must not change under it.

The registry (mlflow) is imported only where it is read: the public API process imports this
module for ``served_model_version`` alone.

Anything wrong with a creator's adapter (registry down, broken files, trained on another
champion) serves that creator the champion, with a warning: never an error for the request.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from snap2caption_service.core import batched_lora
from snap2caption_service.core.captioner import (
    Captioner,
    base_identity,
    check_adapter_base,
    safetensors_adapter,
)

log = logging.getLogger(__name__)

CACHE_DIR = "creator-adapters"
# A pin that no batch released within the API's request timeout belongs to a request that never
# reached the model (refused, cancelled): it stops protecting the adapter from eviction.
PIN_LEASE_S = 600.0
# Creators whose resolution is remembered; beyond it the least recently asked are looked up again.
MAX_REMEMBERED_CREATORS = 10_000


def served_model_version(champion: str, adapter_label: str | None) -> str:
    """The answer's model_version: the champion's, plus the creator adapter's version if one answered."""
    return f"{champion}+{adapter_label}" if adapter_label else champion


@dataclass(frozen=True)
class CreatorAdapter:
    name: str  # the adapter's name inside the model: one per registry version
    label: str  # "<creators model>:v<N>", for model_version
    folder: Path


class AdapterUnusable(RuntimeError):
    """A creator adapter that cannot be served here: its creator gets the champion."""


class CreatorRegistry:
    """creator_id -> the adapter the registry says serves them, downloaded; None for the champion."""

    def __init__(self, champion_version: str, cache_dir: Path, name: str | None = None, uri: str | None = None):
        from snap2caption_service.core.registry import RegistryReader, creators_model_name

        self.reader = RegistryReader(creators_model_name(name), uri)
        self.champion_version = str(champion_version)
        self.cache_dir = Path(cache_dir)
        self._warned: set[tuple[str, str]] = set()

    def lookup(self, creator_id: str) -> CreatorAdapter | None:
        """Raises when the registry cannot be read or the download fails."""
        from snap2caption_service.core.registry import CHAMPION_VERSION_TAG, creator_alias, creator_key

        info = self.reader.by_alias(creator_alias(creator_id))
        if info is None:
            return None
        trained_on = info.tags.get(CHAMPION_VERSION_TAG, "")
        if trained_on != self.champion_version:
            if (info.version, trained_on) not in self._warned:  # once per version, not per request
                self._warned.add((info.version, trained_on))
                log.warning(
                    "creator adapter %s was trained on champion %r, the champion served is %r: its creator "
                    "(key %s) gets the champion until an adapter trained on this one is promoted",
                    info.label,
                    trained_on,
                    self.champion_version,
                    creator_key(creator_id),
                )
            return None
        return CreatorAdapter(f"creators_v{info.version}", info.label, self._download(info.version))

    def _download(self, version: str) -> Path:
        """The version's adapter folder under the cache, downloaded once: versions are immutable.
        Downloaded beside and renamed into place, so a half download is never taken for one."""
        folder = self.cache_dir / f"{self.reader.name}-v{version}"
        found = sorted(folder.glob("*/adapter_config.json"))
        if found:
            return found[0].parent
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(partial, ignore_errors=True)
        local = self.reader.download(version, partial)
        try:
            os.replace(partial, folder)
        except OSError:  # another thread or process put it there first: theirs is as good
            shutil.rmtree(partial, ignore_errors=True)
        return folder / local.relative_to(partial)


@dataclass
class _Resolution:
    adapter: CreatorAdapter | None
    at: float


class ResidentAdapters:
    """The creator adapters loaded into one captioner's model, and which creator gets which.

    ``acquire`` before a request joins the batcher (it pins the adapter), ``adapters_for`` and
    ``release`` on the model thread around the batch that carries it.
    """

    def __init__(
        self,
        captioner: Captioner,
        lookup: Callable[[str], CreatorAdapter | None],
        run_on_model: Callable[[Callable[[], object]], object] = lambda fn: fn(),
        max_resident: int = 8,
        refresh_s: float = 30.0,
        on_load: Callable[[float, bool], None] | None = None,
        on_resident: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.captioner = captioner
        self.lookup = lookup
        self.run_on_model = run_on_model
        self.max_resident = max_resident
        self.refresh_s = refresh_s
        self.on_load = on_load or (lambda seconds, ok: None)
        self.on_resident = on_resident or (lambda n: None)
        self.clock = clock
        self._lock = threading.Lock()
        self._resolved: OrderedDict[str, _Resolution] = OrderedDict()
        self._lookups: dict[str, Future] = {}  # creator_id -> the lookup under way
        self._resident: OrderedDict[str, CreatorAdapter] = OrderedDict()  # least recently used first
        self._loads: dict[str, Future] = {}  # adapter name -> the load under way
        self._pins: Counter[str] = Counter()
        self._pinned_at: dict[str, float] = {}
        # Read here, on the model thread: later, other threads must not walk the model's modules
        # while the model thread adds or deletes some.
        self._device = str(captioner.device)
        self._identity = base_identity(captioner.model)

    # --- the request's side (any thread but the model's) --------------------------------

    def acquire(self, creator_id: str) -> CreatorAdapter | None:
        """The creator's adapter, loaded and pinned until ``release``; None: the champion answers."""
        adapter = self._resolve(creator_id)
        if adapter is None:
            return None
        with self._lock:
            self._pin(adapter.name)
            if adapter.name in self._resident:
                self._resident.move_to_end(adapter.name)
                return adapter
            load = self._loads.get(adapter.name)
            first = load is None
            if first:
                load = self._loads[adapter.name] = Future()
        if first:
            self._load(adapter, load)
        try:
            load.result()
        except Exception as exc:  # noqa: BLE001 - whatever broke the adapter, its creator gets the champion
            with self._lock:
                self._unpin(adapter.name)
            log.warning("creator adapter %s not served (%s): the champion answers", adapter.label, exc)
            return None
        return adapter

    def _resolve(self, creator_id: str) -> CreatorAdapter | None:
        """The registry's answer for the creator, looked up at most every refresh_s (one lookup at a
        time per creator). A failed lookup is remembered as 'the champion' for as long."""
        with self._lock:
            known = self._resolved.get(creator_id)
            if known is not None and self.clock() - known.at < self.refresh_s:
                self._resolved.move_to_end(creator_id)
                return known.adapter
            lookup = self._lookups.get(creator_id)
            first = lookup is None
            if first:
                lookup = self._lookups[creator_id] = Future()
        if not first:
            return lookup.result()
        try:
            adapter = self.lookup(creator_id)
        except Exception as exc:  # noqa: BLE001 - registry down, download failed: the champion answers
            from snap2caption_service.core.registry import creator_key

            log.warning(
                "creator adapter for key %s not resolved (%s: %s): the champion answers for %.0f s",
                creator_key(creator_id),
                type(exc).__name__,
                exc,
                self.refresh_s,
            )
            adapter = None
        with self._lock:
            self._resolved[creator_id] = _Resolution(adapter, self.clock())
            self._resolved.move_to_end(creator_id)
            while len(self._resolved) > MAX_REMEMBERED_CREATORS:
                self._resolved.popitem(last=False)
            del self._lookups[creator_id]
            stale = self._stale()
        lookup.set_result(adapter)
        if stale:  # a promotion moved the alias on: unload what no creator is served any more
            self.run_on_model(self._evict)
        return adapter

    def _load(self, adapter: CreatorAdapter, done: Future) -> None:
        t0 = time.perf_counter()
        try:
            config, weights = self._read(adapter)
            self.run_on_model(lambda: self._add(adapter, config, weights))
        except Exception as exc:  # noqa: BLE001 - reported to every waiter through the future
            with self._lock:
                del self._loads[adapter.name]
                # Broken files stay broken: the champion answers until the next refresh.
                for resolution in self._resolved.values():
                    if resolution.adapter == adapter:
                        resolution.adapter = None
            self.on_load(time.perf_counter() - t0, False)
            done.set_exception(exc)
            return
        with self._lock:
            del self._loads[adapter.name]
        self.on_load(time.perf_counter() - t0, True)
        log.info("creator adapter %s loaded in %.3f s", adapter.label, time.perf_counter() - t0)
        done.set_result(None)

    def _read(self, adapter: CreatorAdapter):
        """(config, weights) from the adapter folder, on the caller's thread: the slow part of a load."""
        from peft import PeftConfig, PeftType
        from peft.utils import load_peft_weights

        folder = safetensors_adapter(str(adapter.folder))
        config = PeftConfig.from_pretrained(folder)
        if config.peft_type != PeftType.LORA or getattr(config, "use_dora", False):
            raise AdapterUnusable(f"{adapter.label} is a {config.peft_type} adapter; mixed batches serve plain LoRA")
        check_adapter_base(folder, self.captioner.version, self._identity)
        config.inference_mode = True
        return config, load_peft_weights(folder, device=self._device)

    # --- the model thread's side ---------------------------------------------------------

    def adapters_for(self, names: list[str | None]) -> list[CreatorAdapter | None]:
        """The batch's adapters by row. A row whose adapter went (its pin outlived the lease) is
        loaded again here, from the local cache: on the batch path, but only in that rare case."""
        out = []
        for name in names:
            with self._lock:
                adapter = self._resident.get(name) if name else None
                known = self._known(name) if name and adapter is None else None
            if known is not None:
                try:
                    config, weights = self._read(known)
                    self._add(known, config, weights)
                    adapter = known
                except Exception as exc:  # noqa: BLE001 - this row then gets the champion, and says so
                    log.warning("creator adapter %s could not be reloaded (%s): the champion answers", name, exc)
            out.append(adapter)
        return out

    def release(self, adapters: list[CreatorAdapter | None]) -> None:
        """The batch that pinned these is done: unpin them, and bring the model back within bounds."""
        with self._lock:
            for adapter in adapters:
                if adapter is not None:
                    self._unpin(adapter.name)
        self._evict()

    def _add(self, adapter: CreatorAdapter, config, weights) -> None:
        cap = self.captioner
        if cap.peft_model is None or adapter.name not in cap.peft_model.peft_config:  # else a batch's reload did
            self._inject(adapter, config, weights)
        with self._lock:
            self._resident[adapter.name] = adapter
            self._resident.move_to_end(adapter.name)
        self._evict()

    def _inject(self, adapter: CreatorAdapter, config, weights) -> None:
        from peft import PeftModel, set_peft_model_state_dict

        cap = self.captioner
        if cap.peft_model is None:
            cap.peft_model = PeftModel(cap.model, config, adapter_name=adapter.name)
        else:
            cap.peft_model.add_adapter(adapter.name, config)
        # Again after every add: an adapter on modules no earlier one targeted brings new layers.
        batched_lora.install(cap.peft_model)
        try:
            result = set_peft_model_state_dict(cap.peft_model, weights, adapter_name=adapter.name)
            missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter.name}." in k]
            if missing or result.unexpected_keys:
                raise AdapterUnusable(
                    f"{adapter.label}: weights do not fit the served model (missing {missing[:3]}, "
                    f"unexpected {list(result.unexpected_keys)[:3]})"
                )
            # peft's mixed batches hand every adapted layer the batch's rows: an adapter on the
            # vision tower would see image patches instead (LLaVA-NeXT), so only the language model's.
            if any(f".{adapter.name}." in n and "vision_tower" in n for n, _ in cap.peft_model.named_parameters()):
                raise AdapterUnusable(f"{adapter.label} adapts the vision tower; creator adapters adapt the words")
        except Exception:
            self._delete(adapter.name)
            raise
        cap.peft_model.eval()

    def _evict(self) -> None:
        """Unload what no creator is served any more, then the least recently used beyond
        max_resident; never an adapter a request or batch holds."""
        with self._lock:
            now = self.clock()
            free = [n for n in self._resident if not self._pinned(n, now)]  # least recently used first
            stale = self._stale()
            doomed = [n for n in free if n in stale]
            over = len(self._resident) - len(doomed) - self.max_resident
            doomed += [n for n in free if n not in stale][: max(over, 0)]
            for name in doomed:
                del self._resident[name]
            count = len(self._resident)
        for name in doomed:
            self._delete(name)
            log.info("creator adapter %s unloaded", name)
        self.on_resident(count)

    def _delete(self, name: str) -> None:
        cap = self.captioner
        if cap.peft_model is None or name not in cap.peft_model.peft_config:
            return
        cap.peft_model.delete_adapter(name)
        batched_lora.forget(cap.peft_model)  # no stack may outlive a weight it copied
        if not cap.peft_model.peft_config:
            # The last one gone: back to the plain model, exactly as fast as with no creators.
            cap.model = cap.peft_model.unload()
            cap.peft_model = None

    # --- bookkeeping (under the lock) ------------------------------------------------------

    def _pin(self, name: str) -> None:
        self._pins[name] += 1
        self._pinned_at[name] = self.clock()

    def _unpin(self, name: str) -> None:
        self._pins[name] -= 1
        if self._pins[name] <= 0:
            del self._pins[name]
            self._pinned_at.pop(name, None)

    def _pinned(self, name: str, now: float) -> bool:
        return self._pins[name] > 0 and now - self._pinned_at.get(name, now) < PIN_LEASE_S

    def _stale(self) -> set[str]:
        """Resident adapters that no creator's current resolution names."""
        wanted = {r.adapter.name for r in self._resolved.values() if r.adapter is not None}
        return {n for n in self._resident if n not in wanted}

    def _known(self, name: str) -> CreatorAdapter | None:
        return next((r.adapter for r in self._resolved.values() if r.adapter and r.adapter.name == name), None)


def registry_adapters(
    captioner: Captioner,
    champion_version: str | None,
    data_dir: Path,
    registered_model: str,
    tracking_uri: str,
    max_resident: int,
    refresh_s: float,
    run_on_model: Callable[[Callable[[], object]], object] = lambda fn: fn(),
    **hooks,
) -> ResidentAdapters | None:
    """Creator adapters for a captioner serving the registry's champion ``champion_version`` (or the
    bare base, core/registry.py NO_CHAMPION); None (every creator gets the champion) when it serves
    weights no creator adapter can be trained on, or they are turned off."""
    if not max_resident or not tracking_uri:
        return None
    if champion_version is None:
        log.info("creator adapters off: the model served is neither the registry's champion nor a bare base")
        return None
    source = CreatorRegistry(champion_version, data_dir / CACHE_DIR, registered_model or None, tracking_uri)
    log.info(
        "creator adapters from %s (trained on champion %r), at most %d resident, aliases re-read every %.0f s",
        source.reader.name,
        champion_version,
        max_resident,
        refresh_s,
    )
    return ResidentAdapters(captioner, source.lookup, run_on_model, max_resident, refresh_s, **hooks)
