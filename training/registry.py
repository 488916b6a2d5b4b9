"""The model registry: every retrained adapter becomes a version of ONE registered model
(``snap2caption-captioner``, or SNAP2CAPTION_REGISTERED_MODEL), and the gate decides which
version holds the ``champion`` alias (what gets served) and which is the ``challenger``
(the latest candidate that did not beat it).

A version's source is the run's adapter artifact folder (PEFT's adapter_config.json +
weights), not an MLflow "MLmodel" flavour: serving loads it with peft, so the registry only
needs to know where it is and which run produced it.

Failure safety: ``apply_gate`` writes every tag first and moves the ``champion`` alias as its
very last call. Whatever fails before that (the server, a rejected value, a champion that
changed underneath), the previous champion keeps the alias.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
from mlflow.tracking import MlflowClient

from .gate import GateDecision, GateRule
from .tracking import ADAPTER_ARTIFACT, tracking_uri

MODEL_NAME_ENV = "SNAP2CAPTION_REGISTERED_MODEL"
DEFAULT_MODEL_NAME = "snap2caption-captioner"
CHAMPION, CHALLENGER = "champion", "challenger"
_UNSET = object()


def registered_model_name(name: str | None = None) -> str:
    return (name or os.environ.get(MODEL_NAME_ENV, "").strip() or DEFAULT_MODEL_NAME)


class ChampionChanged(RuntimeError):
    """The champion is no longer the version the candidate was evaluated against."""


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str | None
    source: str
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class Registry:
    """One registered model on the tracking server (MLFLOW_TRACKING_URI)."""

    def __init__(self, name: str | None = None, uri: str | None = None):
        self.name = registered_model_name(name)
        self.uri = tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # --- reading -----------------------------------------------------------------------

    def version(self, version: str | int) -> VersionInfo:
        return self._info(self.client.get_model_version(self.name, str(version)))

    def aliases(self) -> dict[str, str]:
        """alias -> version; {} when the model has never been registered."""
        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {alias: str(v) for alias, v in (model.aliases or {}).items()}

    def by_alias(self, alias: str) -> VersionInfo | None:
        version = self.aliases().get(alias)
        return None if version is None else self.version(version)

    def champion(self) -> VersionInfo | None:
        return self.by_alias(CHAMPION)

    def challenger(self) -> VersionInfo | None:
        return self.by_alias(CHALLENGER)

    def resolve(self, ref: str | int) -> VersionInfo:
        """A version number or an alias ('champion', 'challenger')."""
        ref = str(ref)
        if ref.isdigit():
            return self.version(ref)
        info = self.by_alias(ref)
        if info is None:
            raise LookupError(f"registered model {self.name!r} has no version with alias {ref!r} "
                              f"(aliases: {self.aliases() or 'none'})")
        return info

    # --- writing -----------------------------------------------------------------------

    def ensure_model(self) -> None:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                self.client.create_registered_model(
                    self.name, description="Snap2Caption LoRA adapters; alias champion = served, "
                                           "challenger = latest candidate the gate held back")
            except MlflowException as race:
                if race.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def register(self, run_id: str, artifact_path: str = ADAPTER_ARTIFACT,
                 tags: Mapping[str, str] | None = None) -> VersionInfo:
        """A new version whose source is the run's ``artifact_path`` folder. No alias yet."""
        listed = self.client.list_artifacts(run_id, artifact_path)
        if not any(Path(f.path).name == "adapter_config.json" for f in listed):
            raise FileNotFoundError(f"run {run_id} has no PEFT adapter under artifact path {artifact_path!r} "
                                    f"(found {[f.path for f in listed] or 'nothing'}); log it with log_adapter()")
        self.ensure_model()
        source = RunsArtifactRepository.get_underlying_uri(f"runs:/{run_id}/{artifact_path}")
        mv = self.client.create_model_version(self.name, source=source, run_id=run_id,
                                              tags={k: str(v) for k, v in (tags or {}).items()})
        return self._info(mv)

    def apply_gate(self, version: str | int, decision: GateDecision,
                   metrics: Mapping[str, float] | None = None, rule: GateRule | None = None,
                   expected_champion=_UNSET) -> VersionInfo:
        """Record the gate's verdict on ``version`` and move the matching alias.

        Tags: gate_decision (promoted | challenger; failed | aborted, with gate_error, when
        this call raised), gate_reason, gate_compared_with (the
        champion version, or none), gate_rule, metric.<name> for ``metrics`` and
        champion_metric.<name> for the champion's compared values. Then ``challenger`` or,
        last of all, ``champion``. Pass ``expected_champion`` (the version evaluated against,
        None if there was none) to refuse a promotion when the champion changed meanwhile.
        """
        version = str(version)
        self.client.get_model_version(self.name, version)  # fails early for an unknown version
        current = self.aliases().get(CHAMPION)
        if decision.promote:
            self._check_champion(current, expected_champion, version)
        tags = {"gate_reason": decision.reason, "gate_compared_with": current or "none"}
        if rule is not None:
            tags["gate_rule"] = json.dumps(rule.to_dict(), sort_keys=True)
        for name, value in (metrics or {}).items():
            tags[f"metric.{name}"] = repr(float(value))
        for name, (_, champion_value) in decision.compared.items():
            if champion_value is not None:
                tags[f"champion_metric.{name}"] = repr(float(champion_value))
        try:
            # "pending" first, the verdict only once everything else is written: a failure in
            # between never leaves a version that claims a verdict it did not get.
            self.client.set_model_version_tag(self.name, version, "gate_decision", "pending")
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, version, key, value)
            if not decision.promote:
                self.client.set_model_version_tag(self.name, version, "gate_decision", "challenger")
                self.client.set_registered_model_alias(self.name, CHALLENGER, version)
                return self.version(version)
            if current != version:
                # MLflow has no compare-and-set for aliases: look again right before the move,
                # so the window for a concurrent promotion is a few round trips, not the tags.
                self._check_champion(self.aliases().get(CHAMPION), expected_champion, version)
                self.client.set_model_version_tag(self.name, version, "gate_decision", "promoted")
                # The one step that changes what is served; everything above succeeded already.
                self.client.set_registered_model_alias(self.name, CHAMPION, version)
            else:
                self.client.set_model_version_tag(self.name, version, "gate_decision", "promoted")
        except Exception as exc:
            self._mark_not_applied(version, exc)
            raise
        if self.aliases().get(CHALLENGER) == version:
            # A re-gated former challenger: it is champion now, not both.
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
        return self.version(version)

    def _mark_not_applied(self, version: str, exc: Exception) -> None:
        """Best effort (the server may be what failed): say on the version why it has no verdict."""
        try:
            if self.aliases().get(CHAMPION) == version:
                return  # the alias move reached the server; only its answer was lost
            self.client.set_model_version_tag(self.name, version, "gate_decision",
                                              "aborted" if isinstance(exc, ChampionChanged) else "failed")
            self.client.set_model_version_tag(self.name, version, "gate_error",
                                              f"{type(exc).__name__}: {exc}"[:5000])
        except Exception:  # noqa: BLE001 - the original error is the one to raise
            pass

    def _check_champion(self, current: str | None, expected, version: str) -> None:
        if expected is _UNSET:
            return
        expected = None if expected is None else str(expected)
        if current != expected:
            raise ChampionChanged(f"champion of {self.name!r} is now version {current}, not {expected} "
                                  f"which version {version} was evaluated against; nothing promoted, "
                                  "re-run the evaluation")

    # --- files -------------------------------------------------------------------------

    def download(self, ref: str | int = CHAMPION, dst: str | Path = ".") -> Path:
        """The adapter folder of a version or alias, downloaded into ``dst``; returns its path."""
        info = self.resolve(ref)
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=str(dst),
                                                         tracking_uri=self.uri))
        if not (local / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{info.uri} ({info.source}) downloaded to {local} holds no adapter_config.json")
        return local

    def _info(self, mv) -> VersionInfo:
        return VersionInfo(name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source,
                           aliases=tuple(mv.aliases or ()), tags=dict(mv.tags or {}))
