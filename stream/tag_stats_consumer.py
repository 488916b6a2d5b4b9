"""``snap2caption tag-stats``: count what creators keep, remove and add per hashtag.

An ordinary consumer of the training topic (``caption.feedback``) in a group of its own
(``snap2caption-tag-stats``), writing ``core/tag_stats.py``'s table, which the service's ranker
reads. One loop:

    poll -> decode each record (skip and count what cannot be used) -> ONE SQLite transaction:
    counts + skips + next offset per partition -> commit the group offsets (monitoring only)

The delivery guarantee is the table's: a batch's counts and its offsets commit together, and on
every assignment the consumer seeks to the offsets in the table (the topic's beginning for a
partition it has none for), never to the group's. A crash anywhere re-reads exactly the records
whose counts did not commit. One process per table.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from pydantic import Field, ValidationError

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import EVENT_TYPE_FEEDBACK, FeedbackRecord
from snap2caption_service.core.hashtags import context_words, hashtag_edit, normalize_all
from snap2caption_service.core.settings import KafkaSettings
from snap2caption_service.core.tag_stats import Batch, Edit, TagStats
from stream import kafka_compat
from stream.topics import ensure_topics, subscribe_when_visible

log = logging.getLogger("snap2caption.tag_stats")


class TagStatsSettings(KafkaSettings):
    """The tag-stats consumer: the broker and topics (KafkaSettings) and its own group. The table
    is the service's SNAP2CAPTION_TAG_STATS_FILE (core Settings), so both name the same file."""

    tag_stats_group: str = Field("snap2caption-tag-stats", description="Its consumer group (lag monitoring).")
    tag_stats_batch_records: int = Field(500, ge=1, description="Most records per poll, and so per transaction.")


def edit_of(record: FeedbackRecord) -> Edit | None:
    """The hashtag signal of one feedback, or None when it has none (a downvote without an edit).

    An upvote without an edit keeps every shown tag. A record from before the edit fields existed
    (all three empty despite an edit) gets them computed the same way feedback_store does."""
    served = record.served
    kept, removed, added = record.hashtags_kept, record.hashtags_removed, record.hashtags_added
    if record.edited_hashtags is not None and not (kept or removed or added):
        kept, removed, added = hashtag_edit(served.hashtags, record.edited_hashtags)
    elif record.edited_hashtags is None:
        if record.rating != "up":
            return None
        kept = normalize_all(served.hashtags)
    return Edit(
        platform=served.platform,
        creator=record.creator_id or served.creator_id,
        contexts=tuple(context_words(served.hashtags, served.caption, served.alt_text)),
        kept=tuple(normalize_all(kept)),
        removed=tuple(normalize_all(removed)),
        added=tuple(normalize_all(added)),
    )


def decode(value: bytes | None, headers) -> tuple[FeedbackRecord | None, str | None]:
    """(record, None), or (None, the reason it cannot be counted)."""
    try:
        event = cloudevents.from_kafka(value, headers)
    except cloudevents.CloudEventError as exc:
        # A record without ce_ headers (written by hand, or by an older producer) is still read as
        # a feedback record; only a value that is not one at all is skipped.
        if exc.reason != "not_a_cloudevent" or value is None:
            return None, exc.reason
        data = value
    else:
        if event.type != EVENT_TYPE_FEEDBACK:
            return None, "not_feedback"
        data = event.data
    try:
        record = FeedbackRecord.model_validate_json(data)
    except ValidationError:
        return None, "malformed"
    if record.served is None:
        return None, "no_served_answer"
    return record, None


class TagStatsConsumer(ConsumerRebalanceListener):
    def __init__(self, settings: TagStatsSettings, table_path: Path):
        self.s = settings
        self.table = TagStats(table_path)
        self.done: dict[int, int] = {}  # next offset per partition, as committed to the table
        self.consumer: KafkaConsumer | None = None
        self.stop = threading.Event()

    # Rebalance listener: wherever the group would start, the table knows better.
    def on_partitions_assigned(self, assigned) -> None:
        self.done = self.table.offsets(self.s.topic_feedback)
        for tp in assigned:
            if tp.partition in self.done:
                self.consumer.seek(tp, self.done[tp.partition])
            else:
                self.consumer.seek_to_beginning(tp)
        log.info("assigned %s; resuming at %s", sorted(tp.partition for tp in assigned), self.done or "the beginning")

    def on_partitions_revoked(self, revoked) -> None:
        pass  # every polled record is already in the table or was never counted: nothing to flush

    def _caught_up(self) -> bool:
        assigned = self.consumer.assignment()
        if not assigned:
            return False
        ends = self.consumer.end_offsets(list(assigned))
        return all(self.consumer.position(tp) >= ends[tp] for tp in assigned)

    def run(self, until_end: bool = False) -> dict[str, int]:
        """Consume until stopped (SIGTERM, ``stop``) or, with ``until_end``, until every partition
        is read to its end; returns the table's running totals."""
        s = self.s
        ensure_topics(s, [s.topic_feedback])
        # A header key that is not UTF-8 is skipped here, not raised in poll(); a rebalance completes.
        kafka_compat.install()
        self.consumer = KafkaConsumer(
            bootstrap_servers=s.bootstrap,
            client_id="snap2caption-tag-stats",
            group_id=s.tag_stats_group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=s.tag_stats_batch_records,
        )
        subscribe_when_visible(self.consumer, s.topic_feedback, self)
        log.info(
            "counting hashtag edits from %s (group %s) into %s", s.topic_feedback, s.tag_stats_group, self.table.path
        )
        try:
            while not self.stop.is_set():
                polled = self.consumer.poll(timeout_ms=500)
                if polled:
                    self._apply(polled)
                elif until_end and self._caught_up():
                    break
        finally:
            self.consumer.close(autocommit=False)
            totals = self.table.totals()
            self.table.close()
        log.info("stopped; totals %s", totals)
        return totals

    def _apply(self, polled) -> None:
        batch = Batch(self.s.topic_feedback)
        for tp, records in polled.items():
            for msg in records:
                if msg.offset < self.done.get(tp.partition, 0):
                    continue  # counted before a rebalance moved the partition away and back
                record, reason = decode(msg.value, msg.headers)
                if reason is not None:
                    log.warning("feedback %d:%d skipped: %s", tp.partition, msg.offset, reason)
                    batch.skip(reason)
                else:
                    edit = edit_of(record)
                    if edit is None:
                        batch.skip("no_hashtag_signal")
                    else:
                        batch.edits.append((record.request_id, record.received_at, edit))
                batch.next_offsets[tp.partition] = msg.offset + 1
        if not batch.next_offsets:
            return
        self.table.apply(batch)  # the commit point: counts and offsets together
        self.done.update(batch.next_offsets)
        offsets = {
            TopicPartition(self.s.topic_feedback, p): OffsetAndMetadata(o, "", -1)
            for p, o in batch.next_offsets.items()
        }
        try:
            self.consumer.commit(offsets)  # for lag dashboards; a failure costs nothing but a stale lag
        except Exception as exc:  # noqa: BLE001 - CommitFailedError after a rebalance, a broker away
            log.info("group offsets not committed (%s); the table has them", exc)
        log.info(
            "applied %d hashtag edits, skipped %s, through %s",
            len(batch.edits),
            batch.skipped or "none",
            {p: o for p, o in sorted(batch.next_offsets.items())},
        )


def run_tag_stats(table_path: Path, until_end: bool = False) -> int:
    settings = TagStatsSettings()
    consumer = TagStatsConsumer(settings, table_path)

    def on_sigterm(signum, frame):
        consumer.stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    t0 = time.monotonic()
    totals = consumer.run(until_end=until_end)
    print(f"tag stats {table_path}: {totals} ({time.monotonic() - t0:.1f} s)", flush=True)
    return 0
