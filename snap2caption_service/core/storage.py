"""Storage: "a local folder or ``s3://bucket/prefix``", and the one S3 client factory.

Everything in the project that talks to S3 gets its client from ``s3_client()``, so the
endpoint and region rules live here only:

- endpoint: ``AWS_ENDPOINT_URL_S3`` (MinIO, moto); empty = AWS itself;
- region:   ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else ``us-east-1``.

``Storage(location)`` reads and writes objects by key (``/``-separated, relative to the
location) the same way in a folder and under an S3 prefix. Folder writes are atomic (a
temporary file per process and thread, then ``os.replace``), so a reader never sees half an
object and two threads writing the same key at once both succeed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings

from snap2caption_service.core.settings import _config

DEFAULT_REGION = "us-east-1"
_MISSING = ("404", "NoSuchKey", "NotFound")


class StorageSettings(BaseSettings):
    """Where S3 is; the standard AWS variable names (credentials are left to boto3's own chain)."""

    model_config = _config()

    aws_endpoint_url_s3: str = Field(
        "",
        validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "aws_endpoint_url_s3"),
        description="S3 API endpoint (MinIO, moto); empty = AWS [AWS_ENDPOINT_URL_S3]",
    )
    aws_region: str = Field(
        "",
        validation_alias=AliasChoices("AWS_REGION", "aws_region"),
        description="S3 region [AWS_REGION]; wins over AWS_DEFAULT_REGION",
    )
    aws_default_region: str = Field(
        "",
        validation_alias=AliasChoices("AWS_DEFAULT_REGION", "aws_default_region"),
        description="S3 region when AWS_REGION is unset [AWS_DEFAULT_REGION]; neither = us-east-1",
    )

    @property
    def region_name(self) -> str:
        return self.aws_region or self.aws_default_region or DEFAULT_REGION


def s3_client(config=None, endpoint_url: str | None = None):
    """A boto3 S3 client: the only place in the project that creates one.

    ``config`` is a ``botocore.config.Config`` (timeouts, retries, pool size). ``endpoint_url``
    overrides the environment's endpoint (None = ``StorageSettings``; "" = AWS itself).
    """
    import boto3

    settings = StorageSettings()
    endpoint = settings.aws_endpoint_url_s3 if endpoint_url is None else endpoint_url
    return boto3.client("s3", endpoint_url=endpoint or None, region_name=settings.region_name, config=config)


def is_s3(location: str) -> bool:
    return str(location).startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    if not is_s3(uri):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def join(location: str, name: str) -> str:
    """A location below another: ``s3://b/p`` + ``x`` -> ``s3://b/p/x``; folders join as paths."""
    location = str(location)
    return f"{location.rstrip('/')}/{name}" if is_s3(location) else str(Path(location) / name)


def is_missing(exc: Exception) -> bool:
    """True for a botocore ClientError that means "no such object"."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code") in _MISSING


class Storage:
    """A local folder or an ``s3://bucket/prefix``; the same operations on both.

    ``create=True`` makes a folder location exist now (S3 prefixes need nothing).
    """

    def __init__(self, location: str | Path, create: bool = False):
        self.location = str(location)
        if is_s3(self.location):
            bucket, prefix = split_s3_uri(self.location)
            self.bucket, self.prefix = bucket, prefix.strip("/")
            self.path: Path | None = None
            self._s3 = s3_client()
        else:
            self.bucket, self.prefix = None, ""
            self.path = Path(self.location).expanduser()
            self._s3 = None
            if create:
                self.path.mkdir(parents=True, exist_ok=True)

    @property
    def is_s3(self) -> bool:
        return self.path is None

    def exists(self, key: str) -> bool:
        if self.path is not None:
            return (self.path / key).is_file()
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if is_missing(exc):
                return False
            raise

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        if self.path is not None:
            path = self.path / key
            return path.read_bytes() if path.is_file() else None
        from botocore.exceptions import ClientError

        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise

    def write(self, key: str, data: bytes) -> None:
        if self.path is None:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
            return
        path = self.path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers never see half an object

    def list(self, prefix: str = "") -> list[str]:
        """Keys (relative to the location) of the objects under ``prefix``, sorted."""
        if self.path is not None:
            base = self.path / prefix if prefix else self.path
            if not base.is_dir():
                return []
            return sorted(p.relative_to(self.path).as_posix() for p in base.rglob("*") if p.is_file())
        full = self._key(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        keys = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][len(root) :] for obj in page.get("Contents", []))
        return sorted(keys)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key
