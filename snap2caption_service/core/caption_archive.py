"""What each served caption needs later, when its feedback arrives: the image and what was shown.

Feedback names only a ``request_id``; retraining needs the photo and the result the creator
saw. So every caption request leaves two small objects, in a local folder or an S3 prefix
(``SNAP2CAPTION_ARCHIVE``, e.g. ``s3://bucket/snap2caption``), that any replica can read:

    images/<sha256[:2]>/<sha256>.png    the normalized image, keyed by the upload's content hash
    requests/<request_id>.json          a ``ServedCaption``: options, shown result, model version

Images are content-addressed, so a photo captioned ten times is stored once. The request
record is written after the image, so a record never points at a missing image.

Keys are built from ids that arrive from outside (a /feedback body, a Kafka record), so they
are checked twice: an id must have exactly the shape the service issues (32 hex digits for a
request, 64 for an image hash: ``InvalidKey`` otherwise), and a folder archive refuses a key
whose path resolves outside its root (a planted symlink, say). A record that is there but
does not parse is ``UnreadableRecord``, whose message never carries the file's content.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from snap2caption_service.core.contracts import ServedCaption, is_request_id, is_sha256
from snap2caption_service.core.storage import Storage

log = logging.getLogger(__name__)


class InvalidKey(ValueError):
    """An id that is not of the shape the service issues, or a key outside the archive."""


class UnreadableRecord(Exception):
    """A request record exists but is not a ServedCaption (corrupt, or not ours)."""


def image_key(sha256: str) -> str:
    if not is_sha256(sha256):
        raise InvalidKey("an image hash is 64 lowercase hex digits")
    return f"images/{sha256[:2]}/{sha256}.png"


def request_key(request_id: str) -> str:
    if not is_request_id(request_id):
        raise InvalidKey("a request_id is 32 lowercase hex digits")
    return f"requests/{request_id}.json"


class CaptionArchive:
    """A local folder or an ``s3://bucket/prefix`` (core/storage.py); the same interface for both."""

    def __init__(self, location: str):
        self.location = str(location)
        self._store = Storage(self.location, create=True)
        self._root = None if self._store.path is None else self._store.path.resolve()

    def _checked(self, key: str) -> str:
        """``key`` if it stays inside the archive (folders: after resolving links), else InvalidKey."""
        if self._root is not None and not (self._root / key).resolve().is_relative_to(self._root):
            raise InvalidKey("the key resolves outside the archive")
        return key

    # --- writing (the service, at caption time) ----------------------------------------------
    def put(self, served: ServedCaption, image_png: bytes) -> None:
        key = self._checked(image_key(served.image_sha256))
        record_key = self._checked(request_key(served.request_id))
        if not self._store.exists(key):
            self._store.write(key, image_png)
        self._store.write(record_key, served.model_dump_json().encode())

    # --- reading (the service at feedback time; snapshot building) ---------------------------
    def get(self, request_id: str) -> ServedCaption | None:
        """The record, None when there is none; InvalidKey for an id of the wrong shape."""
        data = self._store.read(self._checked(request_key(request_id)))
        if data is None:
            return None
        try:
            return ServedCaption.model_validate_json(data)
        except ValidationError:
            log.warning("archived request %s is not a ServedCaption record; refusing it", request_id)
            raise UnreadableRecord(f"the archived record of request {request_id} is unreadable") from None

    def image(self, sha256: str) -> bytes | None:
        return self._store.read(self._checked(image_key(sha256)))
