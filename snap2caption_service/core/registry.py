"""The model registry, read side: which version of the ONE registered model
(``snap2caption-captioner``, or SNAP2CAPTION_REGISTERED_MODEL) holds the ``champion`` alias
(what gets served), and its adapter folder. The serving process needs only this; writing
versions and moving aliases (the promotion gate) is training's (training/registry.py).

A version's source is the run's adapter artifact folder (PEFT's adapter_config.json +
weights), not an MLflow "MLmodel" flavour: serving loads it with peft, so the registry only
needs to know where it is and which run produced it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from snap2caption_service.core.settings import RegistrySettings
from snap2caption_service.core.versions import registered_version

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_MODEL_NAME = "snap2caption-captioner"
CHAMPION, CHALLENGER = "champion", "challenger"

# Per-creator adapters (issue 17) live in a second registered model beside the champion's,
# "<registered model>-creators": one version per promoted or held creator run, tagged with the
# creator and the champion version it was trained on; the alias "creator-<key>" marks the
# version serving that creator. A creator adapter is a LoRA on top of the champion merged into
# the base, so it is valid only with that champion version (tag CHAMPION_VERSION_TAG).
CREATORS_SUFFIX = "-creators"
CREATOR_TAG = "creator_id"
CHAMPION_VERSION_TAG = "champion_version"
# Its value for an adapter trained on the bare base model (no champion yet): written by training,
# matched by serving (core/model_loading.py) when the service runs the base without an adapter.
NO_CHAMPION = "base"


def creators_model_name(name: str | None = None) -> str:
    return registered_model_name(name) + CREATORS_SUFFIX


def creator_key(creator_id: str) -> str:
    """A creator id as registry aliases and folder names can hold it: ids are free text (an
    email, a handle with '/'), aliases and paths are not; a hash is safe and stays unique."""
    import hashlib

    return hashlib.sha256(creator_id.encode("utf-8")).hexdigest()[:20]


def creator_alias(creator_id: str) -> str:
    return f"creator-{creator_key(creator_id)}"


def tracking_uri(uri: str | None = None) -> str:
    """The tracking server's URI: the argument, else MLFLOW_TRACKING_URI; an http(s) server only."""
    uri = (uri or RegistrySettings().mlflow_tracking_uri).strip()
    if not uri:
        raise RuntimeError(
            f"{TRACKING_URI_ENV} is not set. Start the tracking server with "
            "`infra/mlflow.sh start` and export the MLFLOW_TRACKING_URI=... line it prints."
        )
    if not uri.startswith(("http://", "https://")):
        raise RuntimeError(
            f"{TRACKING_URI_ENV}={uri!r} is not a tracking server URL (http://...); "
            "runs and the model registry must go through the server started by infra/mlflow.sh"
        )
    return uri


def registered_model_name(name: str | None = None) -> str:
    return name or RegistrySettings().registered_model.strip() or DEFAULT_MODEL_NAME


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

    @property
    def label(self) -> str:
        return registered_version(self.name, self.version)


class RegistryReader:
    """One registered model on the tracking server (MLFLOW_TRACKING_URI), read only."""

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

    def resolve(self, ref: str | int) -> VersionInfo:
        """A version number or an alias ('champion', 'challenger')."""
        ref = str(ref)
        if ref.isdigit():
            return self.version(ref)
        info = self.by_alias(ref)
        if info is None:
            raise LookupError(
                f"registered model {self.name!r} has no version with alias {ref!r} "
                f"(aliases: {self.aliases() or 'none'})"
            )
        return info

    # --- files -------------------------------------------------------------------------

    def download(self, ref: str | int = CHAMPION, dst: str | Path = ".") -> Path:
        """The adapter folder of a version or alias, downloaded into ``dst``; returns its path."""
        info = self.resolve(ref)
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=str(dst), tracking_uri=self.uri)
        )
        if not (local / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{info.uri} ({info.source}) downloaded to {local} holds no adapter_config.json")
        return local

    def _info(self, mv) -> VersionInfo:
        return VersionInfo(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id,
            source=mv.source,
            aliases=tuple(mv.aliases or ()),
            tags=dict(mv.tags or {}),
        )
