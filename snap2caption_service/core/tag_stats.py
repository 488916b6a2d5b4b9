"""What creators keep, remove and add per hashtag: a small durable table the ranker learns from.

``stream/tag_stats_consumer.py`` (``snap2caption tag-stats``) is its one writer: it counts each
hashtag edit on the training topic (``caption.feedback``) per platform, per creator (and ``*``,
all creators) and per context word (what the answer said the image shows, ``hashtags.context_words``;
and ``*``, any image). The API process reads it (``TagStatsReader``) to rank hashtags.

Exactly once: the counts and the consumer's next offset per partition are written in the same
SQLite transaction, and a restarted consumer seeks to the offsets stored here, so a record is
either counted and passed, or neither. Kafka's group offsets are only for lag monitoring.
Feedback that supersedes earlier feedback on the same request (a creator who edits twice) first
takes back what the earlier one counted, as the training snapshot keeps only the latest; "latest"
is by received_at, so the result does not depend on which partition is read first.

Smoothing (``score``): per context word, removed / (kept + removed + PRIOR) sinks a tag and
added / (events + PRIOR) raises it, so one creator's single edit moves a tag by at most
1 / (1 + PRIOR) (0.09, well below hashtags.LEARNED_VERDICT), while a consistent habit of dozens
of creators nears -1 or +1. A creator's own edits count CREATOR_WEIGHT times for that creator.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("snap2caption.tag_stats")

ANY = "*"  # every creator, or any image
PRIOR = 10.0  # pseudo-events of "kept, nothing added" behind every rate
CREATOR_WEIGHT = 3.0
MAX_TAGS_PER_ANSWER = 64  # adjustments() returns at most this many tags (the strongest)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tag_counts (
    platform TEXT NOT NULL, creator TEXT NOT NULL, context TEXT NOT NULL, tag TEXT NOT NULL,
    kept INTEGER NOT NULL DEFAULT 0, removed INTEGER NOT NULL DEFAULT 0, added INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (platform, creator, context, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS context_events (
    platform TEXT NOT NULL, creator TEXT NOT NULL, context TEXT NOT NULL, events INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (platform, creator, context)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied (
    request_id TEXT PRIMARY KEY, received_at TEXT NOT NULL, contribution TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Edit:
    """One feedback's hashtag signal, as counted: where, for whom, about what, and the edit."""

    platform: str
    creator: str | None
    contexts: tuple[str, ...]
    kept: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()

    def as_json(self) -> str:
        return json.dumps([self.platform, self.creator, self.contexts, self.kept, self.removed, self.added])

    @classmethod
    def from_json(cls, text: str) -> Edit:
        platform, creator, contexts, kept, removed, added = json.loads(text)
        return cls(platform, creator, tuple(contexts), tuple(kept), tuple(removed), tuple(added))


@dataclass
class Batch:
    """What one transaction applies: edits as (request id, received_at, edit), skipped records by
    reason, and each partition's next offset."""

    topic: str
    edits: list[tuple[str, str, Edit]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a committed batch (counts + offsets) survives power loss
        conn.executescript(_SCHEMA)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class TagStats:
    """The writer (one process: the tag-stats consumer)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn = _connect(self.path, readonly=False)

    def close(self) -> None:
        self._conn.close()

    def offsets(self, topic: str) -> dict[int, int]:
        """Next offset to read per partition, as of the last committed batch."""
        rows = self._conn.execute("SELECT partition, next_offset FROM offsets WHERE topic = ?", (topic,))
        return dict(rows.fetchall())

    def totals(self) -> dict[str, int]:
        return dict(self._conn.execute("SELECT name, count FROM totals").fetchall())

    def apply(self, batch: Batch) -> None:
        """Counts, skips and offsets of one batch, all in one transaction (or none of them)."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for request_id, received_at, edit in batch.edits:
                row = c.execute(
                    "SELECT received_at, contribution FROM applied WHERE request_id = ?", (request_id,)
                ).fetchone()
                if row is not None:
                    self._bump("superseded", 1)
                    # The latest feedback on a request counts, whichever partition is read first.
                    if row[0] > received_at:
                        continue
                    self._count(Edit.from_json(row[1]), -1)
                self._count(edit, +1)
                c.execute(
                    "INSERT INTO applied (request_id, received_at, contribution) VALUES (?, ?, ?) "
                    "ON CONFLICT (request_id) DO UPDATE SET received_at = excluded.received_at, "
                    "contribution = excluded.contribution",
                    (request_id, received_at, edit.as_json()),
                )
            self._bump("edits_applied", len(batch.edits))
            for reason, n in batch.skipped.items():
                self._bump(f"skipped_{reason}", n)
            c.executemany(
                "INSERT INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(batch.topic, p, o) for p, o in batch.next_offsets.items()],
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _bump(self, name: str, n: int) -> None:
        if n:
            self._conn.execute(
                "INSERT INTO totals (name, count) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET count = count + excluded.count",
                (name, n),
            )

    def _count(self, edit: Edit, sign: int) -> None:
        creators = [ANY] + ([edit.creator] if edit.creator else [])
        contexts = [ANY, *edit.contexts]
        keys = [(edit.platform, who, ctx) for who in creators for ctx in contexts]
        self._conn.executemany(
            "INSERT INTO context_events (platform, creator, context, events) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO UPDATE SET events = events + excluded.events",
            [(*k, sign) for k in keys],
        )
        rows = []
        for column, tags in (("kept", edit.kept), ("removed", edit.removed), ("added", edit.added)):
            rows += [(*k, tag, column) for k in keys for tag in tags]
        for platform, creator, context, tag, column in rows:
            self._conn.execute(
                f"INSERT INTO tag_counts (platform, creator, context, tag, {column}) VALUES (?, ?, ?, ?, ?) "
                f"ON CONFLICT DO UPDATE SET {column} = {column} + excluded.{column}",
                (platform, creator, context, tag, sign),
            )

    def counts(self) -> list[tuple]:
        """Every count row, sorted (for comparing two tables)."""
        return sorted(
            self._conn.execute(
                "SELECT platform, creator, context, tag, kept, removed, added FROM tag_counts "
                "WHERE kept OR removed OR added"
            ).fetchall()
        )


def score(kept: float, removed: float, added: float, events: float) -> float:
    """-1..1: how much creators add (rise) less how much they remove (sink), smoothed."""
    return added / (events + PRIOR) - removed / (kept + removed + PRIOR)


class TagStatsReader:
    """The read side, in the API process: read-only, never blocks the writer (WAL), and sees each
    committed batch at once; a missing table means no adjustments until it appears."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection | None:
        """The open table; reopened when the file was replaced (a restore), None while there is none."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            identity = None
        else:
            identity = (st.st_dev, st.st_ino)
        if identity != self._identity and self._conn is not None:
            self._conn.close()
            self._conn = None
        self._identity = identity
        if self._conn is None and identity is not None:
            try:
                self._conn = _connect(self.path, readonly=True)
            except sqlite3.Error as exc:
                log.warning("tag stats %s cannot be opened (%s); ranking without them", self.path, exc)
        return self._conn

    def adjustments(self, platform: str, creator_id: str | None, context_words: Iterable[str]) -> dict[str, float]:
        """tag -> -1..1 for an answer about ``context_words`` (the mean over those words and any
        image, so the more an image shares with the ones edited, the more their edits count)."""
        contexts = [ANY, *dict.fromkeys(context_words)]
        creators = [ANY] + ([creator_id] if creator_id else [])
        with self._lock:
            conn = self._connection()
            if conn is None:
                return {}
            try:
                events, tags = self._rows(conn, platform, creators, contexts)
            except sqlite3.Error as exc:  # no schema yet (the writer is creating it), a damaged file
                log.warning("tag stats %s unreadable (%s); ranking without them", self.path, exc)
                return {}
        return _combine(events, tags, creator_id, len(contexts))

    @staticmethod
    def _rows(conn, platform: str, creators: list[str], contexts: list[str]):
        marks_w, marks_c = ",".join("?" * len(creators)), ",".join("?" * len(contexts))
        where = f"platform = ? AND creator IN ({marks_w}) AND context IN ({marks_c})"
        args = (platform, *creators, *contexts)
        conn.execute("BEGIN")  # one snapshot for both reads
        try:
            events = conn.execute(f"SELECT creator, context, events FROM context_events WHERE {where}", args).fetchall()
            tags = conn.execute(
                f"SELECT creator, context, tag, kept, removed, added FROM tag_counts WHERE {where}", args
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        return events, tags


def _combine(events: list[tuple], tags: list[tuple], creator_id: str | None, n_contexts: int) -> dict[str, float]:
    def weight(creator: str) -> float:
        # The creator's own rows are also in ANY's: CREATOR_WEIGHT - 1 more makes CREATOR_WEIGHT in all.
        return 1.0 if creator == ANY else CREATOR_WEIGHT - 1.0

    per_context_events: dict[str, float] = {}
    for creator, context, n in events:
        per_context_events[context] = per_context_events.get(context, 0.0) + weight(creator) * n
    sums: dict[tuple[str, str], list[float]] = {}
    for creator, context, tag, kept, removed, added in tags:
        s = sums.setdefault((context, tag), [0.0, 0.0, 0.0])
        w = weight(creator)
        s[0] += w * kept
        s[1] += w * removed
        s[2] += w * added
    out: dict[str, float] = {}
    for (context, tag), (kept, removed, added) in sums.items():
        out[tag] = out.get(tag, 0.0) + score(kept, removed, added, per_context_events.get(context, 0.0)) / n_contexts
    strongest = sorted(out.items(), key=lambda kv: -abs(kv[1]))[:MAX_TAGS_PER_ANSWER]
    return {tag: round(v, 4) for tag, v in strongest if v}
