"""Feedback snapshots: the training topic's new events turned into a versioned dataset.

A snapshot reads ``caption.feedback`` (read_committed) from where the previous snapshot
ended up to the end offsets seen when it starts, and keeps, per captioned request (the last
feedback on it wins):

- thumbs-down with an edited caption or hashtags -> a training target (kind ``correction``),
  the edit replacing what was shown;
- thumbs-up -> the shown result as a positive example (kind ``positive``);
- thumbs-down without an edit -> counted, not trained on (nothing says what was right).

Each feedback event carries what was shown (``served``: image hash, options, result); the
image itself comes from the caption archive by its content hash and is copied into the
snapshot, so a snapshot is self-contained:

    <root>/fb-<hash>/records.jsonl   the manifest (training/datasets.py reads it)
    <root>/fb-<hash>/images/<sha>.png
    <root>/fb-<hash>/snapshot.json   id, content hash, topic, offset range, counts
    <root>/latest.json               the newest snapshot: where the next one starts

``<hash>`` is the content hash of the records and images, so the same feedback gives the same
version. ``root`` is a folder or ``s3://bucket/prefix``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from snap2caption_service.core.caption_archive import CaptionArchive
from snap2caption_service.core.contracts import FeedbackRecord, is_request_id, is_sha256
from snap2caption_service.core.settings import _config
from snap2caption_service.core.storage import Storage, is_s3, join, split_s3_uri
from training.datasets import CaptionRecord, read_manifest, write_manifest

log = logging.getLogger(__name__)

LATEST = "latest.json"


class SnapshotSettings(BaseSettings):
    """Where S3 snapshots are cached locally for reading (env prefix SNAP2CAPTION_)."""

    model_config = _config()

    snapshot_cache: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "snap2caption-snapshots",
        description="Local copies of s3:// snapshots (immutable, keyed by id) [SNAP2CAPTION_SNAPSHOT_CACHE]",
    )


@dataclass
class SnapshotInfo:
    id: str
    content_hash: str
    location: str
    topic: str
    offsets: dict[str, list[int]]  # partition -> [start, end): the range this snapshot consumed
    counts: dict[str, int] = field(default_factory=dict)
    created_at: str = ""
    previous: str | None = None

    @property
    def trainable(self) -> int:
        return self.counts.get("corrections", 0) + self.counts.get("positives", 0)


def records_from_feedback(
    feedback: list[FeedbackRecord], archive: CaptionArchive, image_dir: Path
) -> tuple[list[CaptionRecord], dict[str, int]]:
    """The snapshot's rules, independent of Kafka: feedback in offset order -> records + counts."""
    counts = {
        "events": len(feedback),
        "corrections": 0,
        "positives": 0,
        "downvotes_without_edit": 0,
        "unmatched": 0,
        "image_missing": 0,
        "superseded": 0,
        "bad_ids": 0,
    }
    latest: dict[str, FeedbackRecord] = {}
    for fb in feedback:
        # Ids from Kafka become file names below: only the shapes the service issues.
        if not is_request_id(fb.request_id) or (fb.served is not None and not is_sha256(fb.served.image_sha256)):
            counts["bad_ids"] += 1
            log.warning("feedback %s: request id or image hash of the wrong shape; skipped", fb.feedback_id[:64])
            continue
        if fb.request_id in latest:
            counts["superseded"] += 1
        latest[fb.request_id] = fb
    records = []
    for fb in latest.values():
        served = fb.served
        if served is None:
            counts["unmatched"] += 1  # recorded before the archive existed, or from elsewhere
            continue
        edited = fb.edited_caption is not None or fb.edited_hashtags is not None
        if fb.rating == "down" and not edited:
            counts["downvotes_without_edit"] += 1
            continue
        image_file = image_dir / f"{served.image_sha256}.png"
        if not image_file.exists():
            data = archive.image(served.image_sha256)
            if data is None:
                counts["image_missing"] += 1
                log.warning("feedback %s: image %s is not in the archive", fb.feedback_id, served.image_sha256)
                continue
            image_file.write_bytes(data)
        kind = "correction" if edited else "positive"
        counts["corrections" if edited else "positives"] += 1
        records.append(
            CaptionRecord(
                image=f"images/{image_file.name}",
                image_id=served.image_sha256,
                caption=(fb.edited_caption if fb.edited_caption is not None else served.caption).strip(),
                hashtags=tuple(fb.edited_hashtags if fb.edited_hashtags is not None else served.hashtags),
                alt_text=served.alt_text,
                tone=served.tone,
                audience=served.audience,
                kind=kind,
                extra={
                    "feedback_id": fb.feedback_id,
                    "request_id": fb.request_id,
                    "shown_model_version": served.model_version,
                    # What the hashtags were ranked for: evaluation answers the record the same way
                    # (training/evaluation.py served_options).
                    "platform": served.platform,
                    "num_hashtags": served.num_hashtags,
                    # Hashtags the creator did not edit are the ranker's choice from the model's pool
                    # (core/hashtags.py): fine-tunes do not learn them (CaptionRecord.hashtags_from_ranker).
                    "hashtags_from": "creator" if fb.edited_hashtags is not None else "ranker",
                    # What the edit changed is what a creator adapter learns; the rest it keeps
                    # as its base writes it (TrainExample.shown_caption, TrainConfig.kl_to_base).
                    **({"shown_caption": served.caption} if fb.edited_caption is not None else {}),
                    # Whose house style the edit is: their records train their own adapter
                    # (training/creator_retrain.py), not everyone's champion.
                    **({"creator_id": served.creator_id} if served.creator_id else {}),
                },
            )
        )
    # Partitions interleave differently on every read: in image order, the same feedback is the same
    # dataset (and the same fine-tune, whose batches follow the records' order and the seed).
    records.sort(key=lambda r: (r.image_id, r.extra["request_id"]))
    return records, counts


def read_feedback_range(
    bootstrap: str, topic: str, start: dict[int, int] | None, timeout_s: float = 60.0
) -> tuple[list[FeedbackRecord], dict[str, list[int]], int]:
    """Committed feedback from ``start`` (default: the beginning) to the end offsets as of now.

    Returns (records in offset order per partition, {partition: [start, end]}, unparseable count).
    """
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
        consumer_timeout_ms=1000,
    )
    try:
        parts = consumer.partitions_for_topic(topic)  # an empty set, never None, while unknown
        deadline = time.monotonic() + timeout_s
        while not parts and time.monotonic() < deadline:
            time.sleep(0.5)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(f"topic {topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        ranges: dict[str, list[int]] = {}
        for tp in tps:
            first = max((start or {}).get(tp.partition, begin[tp]), begin[tp])
            ranges[str(tp.partition)] = [first, end[tp]]
            consumer.seek(tp, first)
        out: list[tuple[int, int, FeedbackRecord]] = []
        bad = 0
        pending = {tp for tp in tps if ranges[str(tp.partition)][0] < end[tp]}
        while pending and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                for msg in msgs:
                    if msg.offset >= end[tp]:
                        continue
                    try:
                        out.append((tp.partition, msg.offset, FeedbackRecord.model_validate_json(msg.value)))
                    except ValueError:
                        bad += 1
                        log.warning("feedback %s:%d is not a feedback record; skipped", tp.partition, msg.offset)
            # Transaction markers occupy offsets too, so "done" is the position, not the last record.
            pending = {tp for tp in pending if consumer.position(tp) < end[tp]}
        if pending:
            raise TimeoutError(f"could not read {topic} up to its end offsets within {timeout_s}s")
        out.sort(key=lambda t: (t[1], t[0]))
        return [r for _, _, r in out], ranges, bad
    finally:
        consumer.close()


def content_hash(folder: Path) -> str:
    h = hashlib.sha256()
    h.update((folder / "records.jsonl").read_bytes())
    for img in sorted((folder / "images").glob("*.png")):
        h.update(img.name.encode())  # the name is the image's own content hash
    return h.hexdigest()


def build_snapshot(
    root: str, archive: CaptionArchive, bootstrap: str, topic: str, advance: bool = True
) -> SnapshotInfo | None:
    """Write the next snapshot; None when no feedback arrived since the last one.

    ``advance=False`` writes the snapshot but leaves latest.json alone: retraining calls
    ``mark_consumed`` only once the model trained on it is registered, so a failed run
    leaves the events to the next run instead of skipping them.
    """
    previous = load_latest(root)
    start = {int(p): r[1] for p, r in previous.offsets.items()} if previous else None
    feedback, ranges, bad = read_feedback_range(bootstrap, topic, start)
    with tempfile.TemporaryDirectory(prefix="snap2caption-snapshot-") as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        records, counts = records_from_feedback(feedback, archive, work / "images")
        counts["unparseable"] = bad
        log.info("feedback %s %s: %s", topic, ranges, counts)
        if not feedback and not bad:
            return None
        write_manifest(records, work / "records.jsonl")
        digest = content_hash(work)
        info = SnapshotInfo(
            id=f"fb-{digest[:12]}",
            content_hash=digest,
            location="",
            topic=topic,
            offsets=ranges,
            counts=counts,
            created_at=datetime.now(UTC).isoformat(),
            previous=previous.id if previous else None,
        )
        info.location = join(root, info.id)
        (work / "snapshot.json").write_text(json.dumps(asdict(info), indent=2))
        _publish(work, info)
    if advance:
        mark_consumed(root, info)
    log.info(
        "snapshot %s: %d corrections, %d positives -> %s",
        info.id,
        counts["corrections"],
        counts["positives"],
        info.location,
    )
    return info


def pending_events(root: str, bootstrap: str, topic: str) -> int:
    """Feedback events on the topic after the latest snapshot's end (transaction markers included)."""
    from kafka import KafkaConsumer, TopicPartition

    latest = load_latest(root)
    done = {int(p): r[1] for p, r in latest.offsets.items()} if latest else {}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return 0
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return sum(max(0, end[tp] - max(done.get(tp.partition, 0), begin[tp])) for tp in tps)
    finally:
        consumer.close()


def mark_consumed(root: str, info: SnapshotInfo) -> None:
    """Make ``info`` the latest snapshot: the next one starts at its end offsets."""
    Storage(root).write(LATEST, json.dumps(asdict(info), indent=2).encode())


def load_latest(root: str) -> SnapshotInfo | None:
    data = Storage(root).read(LATEST)
    return SnapshotInfo(**json.loads(data.decode())) if data else None


def snapshot_chain(root: str, head: SnapshotInfo | None) -> list[SnapshotInfo]:
    """``head`` and every snapshot before it (its ``previous`` links), oldest first; ``head``
    None: the chain ending at latest.json."""
    head = head or load_latest(root)
    chain: list[SnapshotInfo] = []
    seen: set[str] = set()
    while head is not None and head.id not in seen:
        chain.append(head)
        seen.add(head.id)
        data = Storage(join(root, head.previous)).read("snapshot.json") if head.previous else None
        head = SnapshotInfo(**json.loads(data.decode())) if data else None
    return chain[::-1]


def feedback_history(root: str, head: SnapshotInfo | None) -> list[CaptionRecord]:
    """Every record of the snapshot chain ending at ``head``, one per captioned request (a later
    snapshot's feedback on the same request replaces an earlier one's, as within a snapshot)."""
    latest: dict[str, CaptionRecord] = {}
    for info in snapshot_chain(root, head):
        for r in read_snapshot(info.location):
            latest.pop(r.extra.get("request_id") or r.image_id, None)
            latest[r.extra.get("request_id") or r.image_id] = r
    return list(latest.values())


def read_snapshot(location: str) -> list[CaptionRecord]:
    """A snapshot's records, with image paths a reader can open (S3 snapshots are cached locally)."""
    folder = _local_copy(location)
    return read_manifest(folder / "records.jsonl")


# --- local folder or S3 (snap2caption_service/core/storage.py) --------------------------------
def _publish(work: Path, info: SnapshotInfo) -> None:
    """Copy the finished snapshot into place (records.jsonl last on S3, whole-folder rename locally),
    so a reader never sees half a snapshot."""
    store = Storage(info.location)
    if store.is_s3:
        files = sorted((f for f in work.rglob("*") if f.is_file()), key=lambda f: f.name == "records.jsonl")
        for f in files:
            store.write(f.relative_to(work).as_posix(), f.read_bytes())
        return
    target = store.path
    if target.exists():
        return  # the same content hash: this exact snapshot was written before
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.copytree(work, staging)
    os.replace(staging, target)


def _snapshot_file(key: str) -> bool:
    """The only keys a snapshot holds; anything else (``../x``, an absolute path) is not copied."""
    if key in ("records.jsonl", "snapshot.json"):
        return True
    name = key.removeprefix("images/")
    return name != key and name.endswith(".png") and is_sha256(name.removesuffix(".png"))


def _local_copy(location: str) -> Path:
    if not is_s3(location):
        store = Storage(location)
        if not store.exists("records.jsonl"):
            raise FileNotFoundError(f"{store.path} is not a feedback snapshot (no records.jsonl)")
        return store.path
    _bucket, prefix = split_s3_uri(location)
    cache = SnapshotSettings().snapshot_cache
    folder = cache / prefix.replace("/", "_")
    if folder.resolve().parent != cache.resolve():  # a prefix of "", "." or ".."
        raise ValueError(f"{location} is not a snapshot location")
    if (folder / "records.jsonl").is_file():
        return folder  # snapshots are immutable: the id is their content hash
    store = Storage(location)
    staging = folder.with_name(folder.name + f".partial-{os.getpid()}")
    for key in store.list():
        if not _snapshot_file(key):
            log.warning("snapshot %s: unexpected object %r not copied", location, key[:200])
            continue
        data = store.read(key)
        if data is None:
            continue  # listed, then gone: not part of a finished snapshot
        dst = staging / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
    if not (staging / "records.jsonl").is_file():
        raise FileNotFoundError(f"{location} is not a feedback snapshot (no records.jsonl)")
    staging.rename(folder)
    return folder
