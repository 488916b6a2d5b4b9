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

from snap2caption_service.core.contracts import ServedCaption
from snap2caption_service.core.storage import Storage

log = logging.getLogger(__name__)


def image_key(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.png"


def request_key(request_id: str) -> str:
    return f"requests/{request_id}.json"


class CaptionArchive:
    """A local folder or an ``s3://bucket/prefix`` (core/storage.py); the same interface for both."""

    def __init__(self, location: str):
        self.location = str(location)
        self._store = Storage(self.location, create=True)

    # --- writing (the service, at caption time) ----------------------------------------------
    def put(self, served: ServedCaption, image_png: bytes) -> None:
        key = image_key(served.image_sha256)
        if not self._store.exists(key):
            self._store.write(key, image_png)
        self._store.write(request_key(served.request_id), served.model_dump_json().encode())

    # --- reading (the service at feedback time; snapshot building) ---------------------------
    def get(self, request_id: str) -> ServedCaption | None:
        data = self._store.read(request_key(request_id))
        return None if data is None else ServedCaption.model_validate_json(data)

    def image(self, sha256: str) -> bytes | None:
        return self._store.read(image_key(sha256))
