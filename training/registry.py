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
from collections.abc import Mapping
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

from snap2caption_service.core.registry import (
    CHALLENGER,
    CHAMPION,
    DEFAULT_MODEL_NAME,
    RegistryReader,
    VersionInfo,
    creator_alias,
    creators_model_name,
    registered_model_name,
)
from training.gate import GateDecision, GateRule
from training.tracking import ADAPTER_ARTIFACT

_UNSET = object()
# gate_decision values of versions the gate actually judged (not failed, aborted or pending).
JUDGED = ("promoted", "challenger")


class ChampionChanged(RuntimeError):
    """The champion is no longer the version the candidate was evaluated against."""


class Registry(RegistryReader):
    """The registry with its write side: new versions and the gate's verdicts."""

    description = (
        "Snap2Caption LoRA adapters; alias champion = served, challenger = latest candidate the gate held back"
    )

    # --- writing -----------------------------------------------------------------------

    def ensure_model(self) -> None:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                self.client.create_registered_model(self.name, description=self.description)
            except MlflowException as race:
                if race.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def register(
        self, run_id: str, artifact_path: str = ADAPTER_ARTIFACT, tags: Mapping[str, str] | None = None
    ) -> VersionInfo:
        """A new version whose source is the run's ``artifact_path`` folder. No alias yet."""
        listed = self.client.list_artifacts(run_id, artifact_path)
        if not any(Path(f.path).name == "adapter_config.json" for f in listed):
            raise FileNotFoundError(
                f"run {run_id} has no PEFT adapter under artifact path {artifact_path!r} "
                f"(found {[f.path for f in listed] or 'nothing'}); log it with log_adapter()"
            )
        self.ensure_model()
        source = RunsArtifactRepository.get_underlying_uri(f"runs:/{run_id}/{artifact_path}")
        mv = self.client.create_model_version(
            self.name, source=source, run_id=run_id, tags={k: str(v) for k, v in (tags or {}).items()}
        )
        return self._info(mv)

    def apply_gate(
        self,
        version: str | int,
        decision: GateDecision,
        metrics: Mapping[str, float] | None = None,
        rule: GateRule | None = None,
        expected_champion=_UNSET,
    ) -> VersionInfo:
        """Record the gate's verdict on ``version`` and move the matching alias.

        Tags: gate_decision (promoted | challenger; failed | aborted, with gate_error, when
        this call raised), gate_reason, gate_compared_with (the
        champion version, or none), gate_rule, metric.<name> for ``metrics`` and
        champion_metric.<name> for the champion's compared values. Then ``challenger`` or,
        last of all, ``champion``. Pass ``expected_champion`` (the version evaluated against,
        None if there was none) to refuse a promotion when the champion changed meanwhile.
        """
        version = str(version)
        current = self.aliases().get(CHAMPION)

        def still_expected(now: str | None) -> None:
            self._check_champion(now, expected_champion, version)

        return self._record_verdict(
            version,
            decision,
            metrics,
            rule,
            alias=CHAMPION,
            hold_alias=CHALLENGER,
            compared_with=current,
            champion_now=lambda: self.aliases().get(CHAMPION),
            check=still_expected,
        )

    def _record_verdict(
        self,
        version: str,
        decision: GateDecision,
        metrics: Mapping[str, float] | None,
        rule: GateRule | None,
        *,
        alias: str,
        hold_alias: str | None,
        compared_with: str | None,
        champion_now,
        check,
    ) -> VersionInfo:
        """The gate's verdict on ``version``: every tag, then (last) ``alias`` for a promotion or
        ``hold_alias`` for a hold. ``check(champion_now())`` raises ChampionChanged when the
        baseline the candidate was scored against is no longer the champion; it runs before
        the tags and again right before the alias moves."""
        self.client.get_model_version(self.name, version)  # fails early for an unknown version
        holder = self.aliases().get(alias)
        tags = {"gate_reason": decision.reason, "gate_compared_with": compared_with or "none"}
        if rule is not None:
            tags["gate_rule"] = json.dumps(rule.to_dict(), sort_keys=True)
        for name, value in (metrics or {}).items():
            tags[f"metric.{name}"] = repr(float(value))
        for name, (_, champion_value) in decision.compared.items():
            if champion_value is not None:
                tags[f"champion_metric.{name}"] = repr(float(champion_value))
        try:
            if decision.promote:  # inside the try: a refusal is recorded on the version as "aborted"
                check(compared_with)
            # "pending" first, the verdict only once everything else is written: a failure in
            # between never leaves a version that claims a verdict it did not get.
            self.client.set_model_version_tag(self.name, version, "gate_decision", "pending")
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, version, key, value)
            if not decision.promote:
                self.client.set_model_version_tag(self.name, version, "gate_decision", "challenger")
                if hold_alias:
                    self.client.set_registered_model_alias(self.name, hold_alias, version)
                return self.version(version)
            if holder != version:
                # MLflow has no compare-and-set for aliases: look again right before the move,
                # so the window for a concurrent promotion is a few round trips, not the tags.
                check(champion_now())
                self.client.set_model_version_tag(self.name, version, "gate_decision", "promoted")
                # The one step that changes what is served; everything above succeeded already.
                self.client.set_registered_model_alias(self.name, alias, version)
            else:
                self.client.set_model_version_tag(self.name, version, "gate_decision", "promoted")
        except Exception as exc:
            self._mark_not_applied(version, alias, exc)
            raise
        if hold_alias and self.aliases().get(hold_alias) == version:
            # A re-gated former challenger: it is champion now, not both.
            self.client.delete_registered_model_alias(self.name, hold_alias)
        return self.version(version)

    def _mark_not_applied(self, version: str, alias: str, exc: Exception) -> None:
        """Best effort (the server may be what failed): say on the version why it has no verdict."""
        try:
            if self.aliases().get(alias) == version:
                return  # the alias move reached the server; only its answer was lost
            self.client.set_model_version_tag(
                self.name, version, "gate_decision", "aborted" if isinstance(exc, ChampionChanged) else "failed"
            )
            self.client.set_model_version_tag(self.name, version, "gate_error", f"{type(exc).__name__}: {exc}"[:5000])
        except Exception:  # noqa: BLE001 - the original error is the one to raise
            pass

    def _check_champion(self, current: str | None, expected, version: str) -> None:
        if expected is _UNSET:
            return
        expected = None if expected is None else str(expected)
        if current != expected:
            raise ChampionChanged(
                f"champion of {self.name!r} is now version {current}, not {expected} "
                f"which version {version} was evaluated against; nothing promoted, "
                "re-run the evaluation"
            )


class CreatorRegistry(Registry):
    """The creators' adapters (core/registry.py's contract): versions of ``creators_model_name()``
    tagged CREATOR_TAG and CHAMPION_VERSION_TAG; alias ``creator_alias(id)`` = the version
    serving that creator. A held version gets its verdict tags but no alias: the creator keeps
    what they had."""

    description = (
        "Snap2Caption per-creator LoRA adapters, each on top of the champion version in its "
        "champion_version tag; alias creator-<key> = the version serving that creator"
    )

    def __init__(self, champion_model: str | None = None, uri: str | None = None):
        super().__init__(creators_model_name(champion_model), uri)
        self.champions = RegistryReader(champion_model, uri)

    def all_versions(self) -> list[VersionInfo]:
        """Every version with its tags, in one paged listing (creator ids are free text, unsafe
        in a filter string, so callers filter by tag themselves)."""
        versions, token = [], None
        while True:
            page = self.client.search_model_versions(f"name = '{self.name}'", max_results=1000, page_token=token)
            versions += [self._info(mv) for mv in page]
            token = page.token
            if not token:
                return versions

    def apply_creator_gate(
        self,
        version: str | int,
        creator_id: str,
        decision: GateDecision,
        metrics: Mapping[str, float] | None,
        rule: GateRule | None,
        expected_champion: str | None,
    ) -> VersionInfo:
        """The gate's verdict on a creator's version; a promotion moves ``creator_alias`` only if
        the champion is still ``expected_champion`` (the one the adapter was trained on and
        scored against), else ChampionChanged and the creator keeps their alias."""
        version = str(version)

        def still_expected(now: str | None) -> None:
            self._check_champion(now, expected_champion, version)

        return self._record_verdict(
            version,
            decision,
            metrics,
            rule,
            alias=creator_alias(creator_id),
            hold_alias=None,
            compared_with=expected_champion,
            champion_now=lambda: self.champions.aliases().get(CHAMPION),
            check=still_expected,
        )

    def _check_champion(self, current: str | None, expected, version: str) -> None:
        if current != expected:
            raise ChampionChanged(
                f"champion of {self.champions.name!r} is now version {current}, not {expected} "
                f"which creator version {version} was trained on and evaluated against; nothing promoted"
            )


__all__ = [
    "Registry",
    "CreatorRegistry",
    "ChampionChanged",
    "VersionInfo",
    "CHAMPION",
    "CHALLENGER",
    "DEFAULT_MODEL_NAME",
    "registered_model_name",
]
