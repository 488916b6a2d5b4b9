"""What each served caption needs later, when its feedback arrives: the image and what was shown.

Feedback names only a ``request_id``; retraining needs the photo and the result the creator
saw. So every caption request leaves two small objects, in a local folder or an S3 prefix
(``SNAP2CAPTION_ARCHIVE``, e.g. ``s3://bucket/snap2caption``), that any replica can read:

    images/<sha256[:2]>/<sha256>.png    the normalized image, keyed by the upload's content hash
    requests/<request_id>.json          a ``ServedCaption``: options, shown result, model version

Images are content-addressed, so a photo captioned ten times is stored once. The request
record is written after the image, so a record never points at a missing image.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from snap2caption_service.core.contracts import ServedCaption

log = logging.getLogger(__name__)


def image_key(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.png"


def request_key(request_id: str) -> str:
    return f"requests/{request_id}.json"


class CaptionArchive:
    """A local folder or an ``s3://bucket/prefix``; the same interface for both."""

    def __init__(self, location: str):
        self.location = str(location)
        if self.location.startswith("s3://"):
            bucket, _, prefix = self.location[len("s3://"):].partition("/")
            self._bucket, self._prefix = bucket, prefix.strip("/")
            self._root = None
            self._s3 = _s3_client()
        else:
            self._root = Path(self.location).expanduser()
            self._root.mkdir(parents=True, exist_ok=True)

    # --- writing (the service, at caption time) ----------------------------------------------
    def put(self, served: ServedCaption, image_png: bytes) -> None:
        key = image_key(served.image_sha256)
        if not self._exists(key):
            self._write(key, image_png)
        self._write(request_key(served.request_id), served.model_dump_json().encode())

    # --- reading (the service at feedback time; snapshot building) ---------------------------
    def get(self, request_id: str) -> ServedCaption | None:
        data = self._read(request_key(request_id))
        return None if data is None else ServedCaption.model_validate_json(data)

    def image(self, sha256: str) -> bytes | None:
        return self._read(image_key(sha256))

    # --- storage -------------------------------------------------------------------------------
    def _exists(self, key: str) -> bool:
        if self._root is not None:
            return (self._root / key).is_file()
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self._bucket, Key=self._s3_key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _write(self, key: str, data: bytes) -> None:
        if self._root is None:
            self._s3.put_object(Bucket=self._bucket, Key=self._s3_key(key), Body=data)
            return
        path = self._root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers never see half an object

    def _read(self, key: str) -> bytes | None:
        if self._root is not None:
            path = self._root / key
            return path.read_bytes() if path.is_file() else None
        from botocore.exceptions import ClientError

        try:
            return self._s3.get_object(Bucket=self._bucket, Key=self._s3_key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _s3_key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key


def _s3_client():
    import boto3

    # The same endpoint variable as the event pipeline's fetcher (MinIO, moto, or AWS).
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None,
                        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                        or "us-east-1")
