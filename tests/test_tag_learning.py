"""Learning from what creators keep (issue 16, part 3), against a real broker: the proof
(stream/prove_tag_learning.py) passes, and the tag-stats consumer killed mid-stream and restarted
counts exactly what one uninterrupted run counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from snap2caption_service.core.tag_stats import TagStats
from stream.prove_tag_learning import count_into, feedback_records, main, publish
from stream_support import bootstrap, create_topics, unique, wait_for  # noqa: F401 - the broker fixture

pytestmark = pytest.mark.kafka


def test_the_proof_passes(bootstrap, capsys):  # noqa: F811
    assert main(["--bootstrap-servers", bootstrap, "--events", "120", "--new-answers", "100"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "PASS" in out and "edits_applied': 120" in out, out


def tag_stats_process(bootstrap: str, topic: str, table, group: str, *extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SNAP2CAPTION_TOPIC_FEEDBACK": topic,
        "SNAP2CAPTION_TAG_STATS_FILE": str(table),
        "SNAP2CAPTION_TAG_STATS_GROUP": group,
        "SNAP2CAPTION_TAG_STATS_BATCH_RECORDS": "7",  # many small transactions: a kill lands between some
    }
    return subprocess.Popen(
        [sys.executable, "-m", "snap2caption_service", "tag-stats", *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def applied(table) -> int:
    if not table.exists():
        return 0
    t = TagStats(table)
    try:
        return t.totals().get("edits_applied", 0)
    finally:
        t.close()


def test_a_consumer_killed_mid_stream_counts_each_record_once(bootstrap, tmp_path):  # noqa: F811
    topic = unique("tag-stats") + ".feedback"
    create_topics(bootstrap, {"SNAP2CAPTION_TOPIC_FEEDBACK": topic}, partitions=3)
    records = feedback_records(240, seed=7, removed="#design", added="#bauhaus")
    # Creators who edit again: later feedback on the same requests, which replaces the first.
    again = [
        r.model_copy(update={"feedback_id": f"again-{i}", "received_at": "2026-12-02T00:00:00+00:00"})
        for i, r in enumerate(records[:20])
    ]
    again = [
        r.model_copy(update={"hashtags_removed": [], "hashtags_added": [], "edited_hashtags": None}) for r in again
    ]
    stream = [*records[:120], b"not a feedback record", *records[120:], *again, b"{}"]
    first, rest = stream[:121], stream[121:]

    table = tmp_path / "killed.sqlite"
    publish(bootstrap, topic, first)
    proc = tag_stats_process(bootstrap, topic, table, unique("tag-stats-a"))
    try:
        wait_for(lambda: applied(table) > 0, 60, "the consumer's first batch")
        for i in range(0, len(rest), 20):  # records keep arriving while it counts...
            publish(bootstrap, topic, rest[i : i + 20])
            if i == 40:
                proc.send_signal(signal.SIGKILL)  # ...and it dies between two of its transactions
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    killed_at = applied(table)
    assert 0 < killed_at < len(records) + len(again), f"not killed mid-stream: {killed_at} applied"

    # Restarted in a new group, which has no committed offsets at all: were the group's offsets
    # what it resumed from, it would count everything from the beginning a second time.
    restart = tag_stats_process(bootstrap, topic, table, unique("tag-stats-b"), "--until-end")
    out, _ = restart.communicate(timeout=120)
    assert restart.returncode == 0, out

    once = tmp_path / "once.sqlite"
    count_into(bootstrap, topic, once, unique("tag-stats-once"))
    killed, single = TagStats(table), TagStats(once)
    assert killed.counts() == single.counts() and killed.counts()
    assert (
        killed.totals()
        == single.totals()
        == {
            "edits_applied": len(records) + len(again),
            "superseded": len(again),
            "skipped_malformed": 2,
        }
    )
    assert killed.offsets(topic) == single.offsets(topic)
    assert sum(single.offsets(topic).values()) == len(stream)
