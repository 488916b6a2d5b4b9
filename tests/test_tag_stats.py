"""The tag-stats table (core/tag_stats.py) and the consumer's record rules (stream/tag_stats_consumer.py)."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import EVENT_TYPE_FEEDBACK, FeedbackRecord, ServedCaption
from snap2caption_service.core.hashtags import LEARNED_VERDICT
from snap2caption_service.core.tag_stats import Batch, Edit, TagStats, TagStatsReader
from stream.tag_stats_consumer import decode, edit_of

RED_CIRCLE = ("red", "circle")
EDIT = Edit("instagram", "c1", RED_CIRCLE, kept=("#red", "#circle"), removed=("#design",), added=("#bauhaus",))


def apply(table: TagStats, edits: list[tuple[str, Edit]], next_offset: int, topic: str = "t", at: str = "1") -> None:
    batch = Batch(topic, edits=[(request_id, at, edit) for request_id, edit in edits])
    batch.next_offsets = {0: next_offset}
    table.apply(batch)


def test_one_edit_is_a_hint_and_a_habit_is_a_verdict(tmp_path):
    table, reader = TagStats(tmp_path / "s.sqlite"), TagStatsReader(tmp_path / "s.sqlite")
    apply(table, [("r0", EDIT)], 1)
    one = reader.adjustments("instagram", None, RED_CIRCLE)
    assert 0 < one["#bauhaus"] < LEARNED_VERDICT and -LEARNED_VERDICT < one["#design"] < 0
    assert "#red" not in one  # kept and never removed: no adjustment
    apply(table, [(f"r{i}", EDIT) for i in range(1, 30)], 30)
    many = reader.adjustments("instagram", None, RED_CIRCLE)
    assert many["#bauhaus"] > 0.7 and many["#design"] < -0.7
    # Similar images get most of it, other images on the platform some, other platforms none.
    other = reader.adjustments("instagram", None, ("blue", "square"))
    half = reader.adjustments("instagram", None, ("red", "square"))
    assert 0 < other["#bauhaus"] < half["#bauhaus"] < many["#bauhaus"]
    assert reader.adjustments("tiktok", None, RED_CIRCLE) == {}
    # The creator's own edits count more for that creator.
    mine = Edit("instagram", "c2", RED_CIRCLE, kept=("#red",), removed=("#circle",))
    apply(table, [(f"m{i}", mine) for i in range(5)], 35)
    assert (
        reader.adjustments("instagram", "c2", RED_CIRCLE)["#circle"]
        < reader.adjustments("instagram", None, RED_CIRCLE)["#circle"]
    )
    assert table.offsets("t") == {0: 35} and table.totals() == {"edits_applied": 35}


def test_counts_and_offsets_commit_together_or_not_at_all(tmp_path):
    table = TagStats(tmp_path / "s.sqlite")
    apply(table, [("r0", EDIT)], 1)
    before = table.counts()
    broken = Edit("instagram", "c1", RED_CIRCLE, kept=(None,))  # type: ignore[arg-type]  # NOT NULL fails
    with pytest.raises(sqlite3.IntegrityError):
        apply(table, [("r1", EDIT), ("r2", broken)], 3)
    assert table.counts() == before and table.offsets("t") == {0: 1} and table.totals() == {"edits_applied": 1}


def test_feedback_that_supersedes_replaces_what_the_earlier_one_counted(tmp_path):
    table = TagStats(tmp_path / "s.sqlite")
    apply(table, [("r0", EDIT)], 1, at="2026-12-01T10:00")
    second = Edit("instagram", "c1", RED_CIRCLE, kept=("#red", "#circle", "#design"))
    apply(table, [("r0", second)], 2, at="2026-12-01T11:00")
    fresh = TagStats(tmp_path / "fresh.sqlite")
    apply(fresh, [("r0", second)], 2, at="2026-12-01T11:00")
    assert table.counts() == fresh.counts()
    assert table.totals() == {"edits_applied": 2, "superseded": 1}
    # Read in the other order (another partition first), the later one still wins.
    swapped = TagStats(tmp_path / "swapped.sqlite")
    apply(swapped, [("r0", second)], 1, at="2026-12-01T11:00")
    apply(swapped, [("r0", EDIT)], 2, at="2026-12-01T10:00")
    assert swapped.counts() == fresh.counts()


def test_the_reader_waits_for_the_table_and_follows_a_replaced_file(tmp_path):
    path = tmp_path / "s.sqlite"
    reader = TagStatsReader(path)
    assert reader.adjustments("instagram", None, RED_CIRCLE) == {}  # no table yet: no adjustments
    table = TagStats(path)
    assert reader.adjustments("instagram", None, RED_CIRCLE) == {}  # empty table
    apply(table, [(f"r{i}", EDIT) for i in range(20)], 20)
    assert reader.adjustments("instagram", None, RED_CIRCLE)["#design"] < 0  # sees each commit at once
    table.close()
    other = TagStats(tmp_path / "other.sqlite")
    apply(other, [(f"r{i}", Edit("instagram", None, RED_CIRCLE, removed=("#red",))) for i in range(20)], 20)
    other.close()
    shutil.copy(tmp_path / "other.sqlite", tmp_path / "new.sqlite")
    (tmp_path / "new.sqlite").replace(path)  # a restore from a backup
    for side in ("-wal", "-shm"):
        (tmp_path / f"s.sqlite{side}").unlink(missing_ok=True)
    learned = reader.adjustments("instagram", None, RED_CIRCLE)
    assert "#design" not in learned and learned["#red"] < 0


def served(**kw) -> ServedCaption:
    values = dict(
        request_id="a" * 32,
        image_sha256="b" * 64,
        tone="casual",
        audience="personal",
        caption="Weekend vibes with a red circle.",
        hashtags=["#redcircle", "#red", "#circle", "#design"],
        alt_text="A large red circle, on a plain gray background.",
        model_version="v",
        creator_id="c1",
    )
    return ServedCaption(**{**values, **kw})


def record(**kw) -> FeedbackRecord:
    values = dict(request_id="a" * 32, rating="up", feedback_id="f", received_at="now", served=served())
    return FeedbackRecord(**{**values, **kw})


def as_kafka(rec: FeedbackRecord, type_: str = EVENT_TYPE_FEEDBACK):
    return cloudevents.to_kafka(cloudevents.new_event(type_, "urn:test", rec, id=rec.feedback_id))


def test_records_that_cannot_be_counted_are_named():
    value, headers = as_kafka(record())
    assert decode(value, headers)[0] is not None
    assert decode(None, headers) == (None, "empty_value")
    assert decode(b"\xff not json", headers) == (None, "malformed")
    assert decode(*as_kafka(record(), type_="com.example.other")) == (None, "not_feedback")
    assert decode(*as_kafka(record(served=None))) == (None, "no_served_answer")
    # Without CloudEvents headers (an older producer), the value is still read.
    assert decode(record().model_dump_json().encode(), [])[0] is not None


def test_what_each_feedback_counts():
    edited = edit_of(record(edited_hashtags=["#red", "#circle", "#bauhaus"]))  # fields missing: computed
    assert edited.removed == ("#redcircle", "#design") and edited.added == ("#bauhaus",)
    assert edited.contexts == RED_CIRCLE and edited.creator == "c1" and edited.platform == "instagram"
    assert edit_of(record()).kept == ("#redcircle", "#red", "#circle", "#design")  # an upvote keeps all
    assert edit_of(record(rating="down")) is None  # no edit: no hashtag signal
    given = record(edited_hashtags=["#red"], hashtags_kept=["#red"], hashtags_removed=["#circle"])
    assert edit_of(given).removed == ("#circle",)  # the record's own edit fields win
