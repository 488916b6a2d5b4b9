"""training/feedback_snapshot.py: the feedback rules, and snapshots built from a real Kafka topic
into a local folder and into S3 (moto's server on loopback). The readers: tests/test_datasets.py."""

from __future__ import annotations

import io
import json
import threading
import uuid
from pathlib import Path

import pytest
from PIL import Image

from snap2caption_service.core.caption_archive import CaptionArchive
from snap2caption_service.core.contracts import FeedbackRecord, ServedCaption
from stream.settings import StreamSettings
from stream.topics import ensure_topics
from stream_support import bootstrap, moto_s3, produce  # noqa: F401  (fixtures)
from training.datasets import load_image
from training.feedback_snapshot import (
    build_snapshot,
    load_latest,
    pending_events,
    read_feedback_range,
    read_snapshot,
    records_from_feedback,
)


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "PNG")
    return buf.getvalue()


def req(n: int) -> str:
    """A request id of the shape the service issues (the archive and the contracts insist)."""
    return f"{n:032x}"


def served(archive: CaptionArchive, n: int, caption: str = "A red circle.") -> ServedCaption:
    s = ServedCaption(
        request_id=req(n),
        image_sha256=f"{n:064x}",
        tone="funny",
        audience="personal",
        caption=caption,
        hashtags=["#red", "#circle", "#art", "#fun", "#shapes"],
        alt_text="A red circle on white.",
        model_version="demo-x",
    )
    archive.put(s, png((n * 40 % 255, 10, 10)))
    return s


def feedback(s: ServedCaption | None, rating: str, request_id: str | None = None, **edit) -> FeedbackRecord:
    return FeedbackRecord(
        request_id=request_id or s.request_id,
        rating=rating,
        feedback_id=uuid.uuid4().hex,
        received_at="2026-11-25T00:00:00Z",
        served=s,
        **edit,
    )


# --- the rules ------------------------------------------------------------------------------


def test_feedback_rules(tmp_path):
    archive = CaptionArchive(str(tmp_path / "archive"))
    s = [served(archive, i) for i in range(6)]
    ghost = ServedCaption(**{**s[0].model_dump(), "request_id": "e" * 32, "image_sha256": "f" * 64})
    events = [
        feedback(s[0], "down", edited_caption="Studio pick: a red circle."),  # correction (caption)
        feedback(s[1], "down", edited_hashtags=["#red", "#studio"]),  # correction (hashtags)
        feedback(s[2], "up"),  # positive
        feedback(s[3], "down"),  # counted, not trained
        feedback(None, "up", request_id="d" * 32),  # no served record
        feedback(ghost, "up"),  # image not archived
        feedback(s[4], "up"),
        feedback(s[4], "down", edited_caption="Better."),  # the last one wins
    ]
    records, counts = records_from_feedback(events, archive, tmp_path)
    assert counts == {
        "events": 8,
        "corrections": 3,
        "positives": 1,
        "downvotes_without_edit": 1,
        "unmatched": 1,
        "image_missing": 1,
        "superseded": 1,
        "bad_ids": 0,
    }
    by_id = {r.extra["request_id"]: r for r in records}
    assert set(by_id) == {req(0), req(1), req(2), req(4)}
    assert by_id[req(0)].caption == "Studio pick: a red circle." and by_id[req(0)].kind == "correction"
    assert by_id[req(0)].hashtags == tuple(s[0].hashtags)  # unedited parts stay as shown
    assert by_id[req(1)].hashtags == ("#red", "#studio") and by_id[req(1)].caption == s[1].caption
    assert by_id[req(2)].kind == "positive" and by_id[req(2)].caption == s[2].caption
    assert by_id[req(4)].caption == "Better."
    assert by_id[req(0)].tone == "funny" and by_id[req(0)].alt_text == "A red circle on white."
    assert "Caption: Studio pick: a red circle.\nHashtags: #red #circle" in by_id[req(0)].target()
    # Hashtags nobody edited are the ranker's choice for a platform: evaluated as served there,
    # read but not learned by a fine-tune; the creator's own list is learned.
    assert by_id[req(0)].hashtags_from_ranker and by_id[req(2)].hashtags_from_ranker
    assert not by_id[req(1)].hashtags_from_ranker
    assert by_id[req(0)].extra["platform"] == "instagram" and by_id[req(0)].extra["num_hashtags"] == 5
    # What a caption edit replaced: the fine-tune learns the edit and keeps the rest as its base has it.
    assert by_id[req(0)].shown_caption == s[0].caption
    assert by_id[req(1)].shown_caption is None and by_id[req(2)].shown_caption is None
    # In image order, whatever order the events came in: the same feedback, the same fine-tune.
    again, _ = records_from_feedback(list(reversed(events[:4])), archive, tmp_path)
    assert [r.image_id for r in again] == sorted(r.image_id for r in again)
    assert (tmp_path / f"{s[0].image_sha256}.png").read_bytes() == archive.image(s[0].image_sha256)


def test_ids_of_the_wrong_shape_never_become_paths(tmp_path):
    """Request ids and image hashes read from Kafka name files in the snapshot: a record that got
    past the contract (an older producer, a hand-made event) with ``../`` in them is skipped."""
    archive = CaptionArchive(str(tmp_path / "archive"))
    good = served(archive, 1)
    evil_served = ServedCaption.model_construct(**{**good.model_dump(), "image_sha256": "../../../escaped"})
    events = [
        FeedbackRecord.model_construct(**{**feedback(good, "up").model_dump(), "request_id": "../../x"}),
        FeedbackRecord.model_construct(**{**feedback(good, "up").model_dump(), "served": evil_served}),
        feedback(good, "up"),
    ]
    (tmp_path / "images").mkdir()
    records, counts = records_from_feedback(events, archive, tmp_path / "images")
    assert counts["bad_ids"] == 2 and len(records) == 1
    assert not (tmp_path / "escaped.png").exists()


def test_a_snapshot_copied_from_s3_takes_only_snapshot_files(tmp_path, monkeypatch):
    """Object keys listed under an S3 snapshot (``../x``) and its prefix never leave the cache."""
    from training import feedback_snapshot

    objects = {
        "records.jsonl": b"",
        "snapshot.json": b"{}",
        f"images/{'a' * 64}.png": b"png",
        "../../outside.txt": b"escaped",
        "images/../../x.png": b"escaped",
    }

    class FakeStorage:
        def __init__(self, location):
            pass

        def list(self):
            return list(objects)

        def read(self, key):
            return objects[key]

    monkeypatch.setattr(feedback_snapshot, "Storage", FakeStorage)
    monkeypatch.setenv("SNAP2CAPTION_SNAPSHOT_CACHE", str(tmp_path / "cache"))
    folder = feedback_snapshot._local_copy("s3://bucket/snaps/fb-abc")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        f"images/{'a' * 64}.png",
        "records.jsonl",
        "snapshot.json",
    ]
    assert not list(tmp_path.rglob("outside.txt")) and not list(tmp_path.rglob("x.png"))
    for location in ("s3://bucket/..", "s3://bucket/", "s3://bucket/."):
        with pytest.raises(ValueError, match="not a snapshot location"):
            feedback_snapshot._local_copy(location)


# --- snapshots from the real topic ----------------------------------------------------------


def _topic(bootstrap: str) -> str:
    topic = f"snap-{uuid.uuid4().hex[:8]}.feedback"
    ensure_topics(StreamSettings(kafka_bootstrap_servers=bootstrap, topic_partitions=2), [topic])
    return topic


def _send(bootstrap: str, topic: str, events: list[FeedbackRecord]) -> None:
    produce(bootstrap, topic, [(e.feedback_id.encode(), e.model_dump_json().encode(), []) for e in events])


@pytest.mark.kafka
def test_snapshots_follow_the_topic_offsets(tmp_path, bootstrap):
    archive = CaptionArchive(str(tmp_path / "archive"))
    topic, root = _topic(bootstrap), str(tmp_path / "snapshots")
    first = [feedback(served(archive, i), "down", edited_caption=f"Studio pick {i}.") for i in range(5)]
    _send(bootstrap, topic, first + [feedback(served(archive, 9), "down")])
    produce(bootstrap, topic, [(b"junk", b"not json", [])])
    assert pending_events(root, bootstrap, topic) == 7

    snap = build_snapshot(root, archive, bootstrap, topic)
    assert snap.counts["corrections"] == 5 and snap.counts["downvotes_without_edit"] == 1
    assert snap.counts["unparseable"] == 1
    assert sum(end - start for start, end in snap.offsets.values()) == 7
    assert all(start == 0 for start, _ in snap.offsets.values())
    assert load_latest(root).id == snap.id and pending_events(root, bootstrap, topic) == 0
    recs = read_snapshot(snap.location)
    assert sorted(r.caption for r in recs) == [f"Studio pick {i}." for i in range(5)]
    assert all(load_image(r.image).size == (32, 24) for r in recs)
    written = json.loads((Path(snap.location) / "snapshot.json").read_text())  # a local root here
    assert written["content_hash"] == snap.content_hash

    assert build_snapshot(root, archive, bootstrap, topic) is None  # nothing new

    # The next snapshot starts where this one ended; advance=False leaves the pointer alone.
    _send(bootstrap, topic, [feedback(served(archive, 20 + i), "up") for i in range(3)])
    second = build_snapshot(root, archive, bootstrap, topic, advance=False)
    assert second.counts["positives"] == 3 and second.counts["events"] == 3
    for part, (start, _end) in second.offsets.items():
        assert start == snap.offsets[part][1]
    assert load_latest(root).id == snap.id and pending_events(root, bootstrap, topic) == 3
    again = build_snapshot(root, archive, bootstrap, topic)
    assert again.id == second.id  # same feedback -> same content hash -> same version
    assert load_latest(root).id == second.id and second.previous == snap.id


@pytest.mark.kafka
def test_snapshot_to_s3(tmp_path, bootstrap, moto_s3, monkeypatch):
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SNAP2CAPTION_SNAPSHOT_CACHE", str(tmp_path / "cache"))
    archive = CaptionArchive(f"s3://{moto_s3.bucket}/archive")
    topic, root = _topic(bootstrap), f"s3://{moto_s3.bucket}/snapshots"
    _send(bootstrap, topic, [feedback(served(archive, i), "down", edited_caption=f"Edit {i}") for i in range(4)])
    snap = build_snapshot(root, archive, bootstrap, topic)
    assert snap.location == f"{root}/{snap.id}"
    keys = {
        o["Key"]
        for o in moto_s3.client().list_objects_v2(Bucket=moto_s3.bucket, Prefix=f"snapshots/{snap.id}/")["Contents"]
    }
    assert f"snapshots/{snap.id}/records.jsonl" in keys and len([k for k in keys if k.endswith(".png")]) == 4
    assert load_latest(root).id == snap.id
    recs = read_snapshot(snap.location)
    assert sorted(r.caption for r in recs) == [f"Edit {i}" for i in range(4)]
    assert load_image(recs[0].image).size == (32, 24)


@pytest.mark.kafka
def test_a_feedback_topic_created_a_moment_later_is_waited_for(bootstrap):
    topic = f"snap-{uuid.uuid4().hex[:8]}.feedback"
    timer = threading.Timer(
        2.0, ensure_topics, (StreamSettings(kafka_bootstrap_servers=bootstrap, topic_partitions=2), [topic])
    )
    timer.start()
    try:
        records, ranges, bad = read_feedback_range(bootstrap, topic, None, timeout_s=30)
    finally:
        timer.join()
    assert (records, bad) == ([], 0) and sorted(ranges) == ["0", "1"]
    with pytest.raises(RuntimeError, match="does not exist"):
        read_feedback_range(bootstrap, f"snap-{uuid.uuid4().hex[:8]}.absent", None, timeout_s=1)
