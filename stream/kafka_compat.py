"""Compatibility shims for kafka-python (3.0.x), installed together by ``install()`` (called once,
before a consumer is created; idempotent; process-wide: every KafkaConsumer of the process gets
them).

**Header keys that are not UTF-8.** kafka-python decodes every record header key with
``bytes.decode("utf-8")`` while it parses a fetched batch (``DefaultRecordBatch._read_msg``). A
key that is not UTF-8 (``kcat -H $'\\xff\\xfe=1'``; the broker does not check) raises there, inside
``KafkaConsumer.poll()``, as ``CorruptRecordError``: the record never reaches the consumer, which
cannot dead-letter it or move past it, and every restart (and every peer given the partition)
fails on it again. The shim wraps ``_read_msg``: when it fails with UnicodeDecodeError, the record
is parsed again with such keys decoded as :class:`UndecodableHeaderKey` (``surrogateescape``: the
key's lone surrogates stand for its bytes). Records with UTF-8 keys take kafka-python's own path
unchanged. The consumer then sees the record and dead-letters it (``cloudevents.from_kafka``:
``undecodable_header``).

**A rebalance the metadata started must finish.** When the topic's partitions change (or the
group formed before the consumer's metadata named the topic), the group leader's
``ConsumerCoordinator.need_rejoin()`` answers True from a snapshot comparison without setting
``rejoin_needed``. The JoinGroup/SyncGroup task updates that snapshot as it assigns, so when the
task finishes between two ``poll()`` calls (our loop polls with ``timeout_ms=0`` while every
partition is paused) the next ``need_rejoin()`` answers False and the finished join is never
completed: the partitions were revoked, the new assignment is never applied, and the consumer
sits on its old positions with its uncommitted records dropped. The Java client fixed the same
hole by requesting a rejoin there (KAFKA-9815, apache/kafka#8420); the shim does the same, so
``rejoin_needed`` stays set until the join completes.
"""

from __future__ import annotations

import functools

from kafka.coordinator.consumer import ConsumerCoordinator
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


def _sticky(need_rejoin):
    @functools.wraps(need_rejoin)
    def _need_rejoin(self):
        needed = need_rejoin(self)
        if needed:
            self.rejoin_needed = True  # cleared by kafka-python once the join completes
        return needed

    _need_rejoin.snap2caption_sticky = True
    return _need_rejoin


def install() -> None:
    """Install both shims (idempotent)."""
    read_msg = DefaultRecordBatch._read_msg
    if not getattr(read_msg, "snap2caption_lenient", False):
        DefaultRecordBatch._read_msg = _lenient(read_msg)
    need_rejoin = ConsumerCoordinator.need_rejoin
    if not getattr(need_rejoin, "snap2caption_sticky", False):
        ConsumerCoordinator.need_rejoin = _sticky(need_rejoin)
