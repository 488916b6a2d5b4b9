"""A compatibility shim for kafka-python (3.0.x): header keys that are not UTF-8.

kafka-python decodes every record header key with ``bytes.decode("utf-8")`` while it parses a
fetched batch (``DefaultRecordBatch._read_msg``). A key that is not UTF-8 (``kcat -H
$'\\xff\\xfe=1'``; the broker does not check) raises there, inside ``KafkaConsumer.poll()``, as
``CorruptRecordError``: the record never reaches the consumer, which cannot dead-letter it or
move past it, and every restart (and every peer given the partition) fails on it again.

``install()`` (called once, before the consumer is created) wraps ``_read_msg``: when it fails
with UnicodeDecodeError, the record is parsed again with such keys decoded as
:class:`UndecodableHeaderKey` (``surrogateescape``: the key's lone surrogates stand for its
bytes). Records with UTF-8 keys take kafka-python's own path unchanged. The consumer then sees
the record and dead-letters it (``cloudevents.from_kafka``: ``undecodable_header``).

Process-wide: every KafkaConsumer of the process gets such keys instead of the exception.
"""

from __future__ import annotations

import functools

from kafka.record.default_records import DefaultRecordBatch


class UndecodableHeaderKey(str):
    """A header key that was not UTF-8: its bytes as ``surrogateescape`` text. ``encode()``
    gives the original bytes back (kafka-python sizes a record's headers by encoding their keys)."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return str.encode(self, encoding, "surrogateescape")


class _LenientBytes(bytes):
    """A slice of the record buffer whose ``decode()`` keeps undecodable bytes (see above)."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        try:
            return bytes.decode(self, encoding, errors)
        except UnicodeDecodeError:
            return UndecodableHeaderKey(bytes.decode(self, encoding, "surrogateescape"))


class _LenientBuffer(bytearray):
    """The record buffer for the second parse: its slices are _LenientBytes. Key, value and
    header values are taken as ``bytes(slice)`` (plain bytes); only header keys are decoded."""

    def __getitem__(self, index):
        item = bytearray.__getitem__(self, index)
        return _LenientBytes(item) if isinstance(index, slice) else item


def _lenient(read_msg):
    @functools.wraps(read_msg)  # __wrapped__: kafka-python's own
    def _read_msg(self, *args, **kwargs):
        try:
            return read_msg(self, *args, **kwargs)
        except UnicodeDecodeError:
            # _read_msg moves self._pos only once a record is read whole: parse it again.
            buffer = self._buffer
            self._buffer = _LenientBuffer(buffer)
            try:
                return read_msg(self, *args, **kwargs)
            finally:
                self._buffer = buffer

    _read_msg.snap2caption_lenient = True
    return _read_msg


def install() -> None:
    """Let kafka-python hand over records whose header keys are not UTF-8 (idempotent)."""
    read_msg = DefaultRecordBatch._read_msg
    if not getattr(read_msg, "snap2caption_lenient", False):
        DefaultRecordBatch._read_msg = _lenient(read_msg)
