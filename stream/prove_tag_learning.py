"""The proof that the hashtag ranker learns from what creators keep (issue 16, part 3).

Against a real broker:

1. Creators are shown hashtags for photos of a red circle, ranked as the service ranks them
   (core/hashtags.py rank_answer), and each of them edits the tags the same way: removes
   ``--removed`` (#design) and adds ``--added`` (#bauhaus), keeping the rest.
2. Those feedback records go to a fresh training topic exactly as the service's feedback
   publisher sends them (CloudEvents, key feedback_id).
3. The tag-stats consumer (stream/tag_stats_consumer.py) counts them into a fresh table.
4. New red-circle answers (other backgrounds, sizes, tones, model orders) are ranked before and
   after, with the table read as the service reads it; the table printed shows how often the
   removed tag is gone, the added tag is there, and the colour and shape tags are kept.

Exit 0 when the removed tag is dropped and the added tag included in at least ``--min-rate`` of
the new answers and no colour or shape tag is lost; else 1.

    python -m stream.prove_tag_learning --bootstrap-servers 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

from snap2caption_service.core import cloudevents
from snap2caption_service.core.contracts import (
    EVENT_TYPE_FEEDBACK,
    CaptionOptions,
    FeedbackRecord,
    ModelAnswer,
    ServedCaption,
)
from snap2caption_service.core.hashtags import hashtag_edit, rank_answer
from snap2caption_service.core.settings import KafkaSettings
from snap2caption_service.core.tag_stats import TagStatsReader
from stream.tag_stats_consumer import TagStatsConsumer, TagStatsSettings
from stream.topics import ensure_topics

COLOR, SHAPE = "red", "circle"
BACKGROUNDS = ("gray", "beige", "teal", "pink", "brown")
SIZES = ("large", "medium", "small")
POSITIONS = ("in the center", "in the top left", "at the bottom", "on the right")
CAPTIONS = (
    "Weekend vibes with a {c} {s}.",
    "Just a {c} {s} living its best little life on {bg}.",
    "A {c} {s}, quietly holding its place against {bg}.",
    "Quick look at a {c} {s} for today's geometry notes.",
    "Be the {c} {s} in a {bg} world.",
)
# What a model writes besides the colour and shape tags: topical but not about this photo, and
# generic tags the ranker drops.
OTHER_TAGS = ("#art", "#geometry", "#shapes", "#minimalart", "#colorful", "#aesthetic", "#mood")


def model_answer(rng: random.Random, removed: str) -> ModelAnswer:
    """A pool of 8 tags as the model writes it (serving/pipeline.py asks for n + 3): colour, shape
    and both first, then the removed tag and the others in a random order."""
    bg, size, where = rng.choice(BACKGROUNDS), rng.choice(SIZES), rng.choice(POSITIONS)
    caption = rng.choice(CAPTIONS).format(c=COLOR, s=SHAPE, bg=bg)
    alt = f"A {size} {COLOR} {SHAPE} {where}, on a plain {bg} background."
    others = rng.sample(OTHER_TAGS, 4)
    others.insert(rng.randrange(2), removed)  # the model likes it: first or second after colour/shape
    return ModelAnswer(caption=caption, hashtags=[f"#{COLOR}", f"#{SHAPE}", f"#{COLOR}{SHAPE}", *others], alt_text=alt)


def feedback_records(n: int, seed: int, removed: str, added: str, creators: int = 30) -> list[FeedbackRecord]:
    """n creators' edits of what they were shown (ranked as served, before any learning)."""
    rng = random.Random(seed)
    options = CaptionOptions()
    out = []
    for i in range(n):
        answer = model_answer(rng, removed)
        shown = rank_answer(answer, options)
        creator = f"creator-{i % creators}"
        edited = [t for t in shown if t != removed] + [added]
        kept, dropped, new = hashtag_edit(shown, edited)
        request_id = uuid.UUID(int=rng.getrandbits(128)).hex
        served = ServedCaption(
            request_id=request_id,
            image_sha256=hashlib.sha256(f"{seed}-{i}".encode()).hexdigest(),
            tone="casual",
            audience="personal",
            num_hashtags=options.num_hashtags,
            platform=options.platform,
            caption=answer.caption,
            hashtags=shown,
            alt_text=answer.alt_text,
            model_version="proof",
            creator_id=creator,
        )
        out.append(
            FeedbackRecord(
                request_id=request_id,
                rating="up",
                edited_hashtags=edited,
                creator_id=creator,
                feedback_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                received_at="2026-12-01T00:00:00+00:00",
                served=served,
                hashtags_kept=kept,
                hashtags_removed=dropped,
                hashtags_added=new,
            )
        )
    return out


def publish(bootstrap: str, topic: str, records: list[FeedbackRecord | bytes]) -> None:
    """As stream/feedback_producer.py sends them: one CloudEvent each, key feedback_id. Raw bytes
    go out as they are (a record the consumer must skip)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    try:
        for record in records:
            if isinstance(record, bytes):
                producer.send(topic, key=b"junk", value=record)
                continue
            event = cloudevents.new_event(
                EVENT_TYPE_FEEDBACK, "urn:snap2caption:proof", record, subject=record.request_id, id=record.feedback_id
            )
            value, headers = cloudevents.to_kafka(event)
            producer.send(topic, key=record.feedback_id.encode(), value=value, headers=headers)
        producer.flush(timeout=60)
    finally:
        producer.close()


def count_into(bootstrap: str, topic: str, table: Path, group: str) -> dict[str, int]:
    """Run the tag-stats consumer over the whole topic into ``table``."""
    settings = TagStatsSettings(kafka_bootstrap_servers=bootstrap, topic_feedback=topic, tag_stats_group=group)
    return TagStatsConsumer(settings, table).run(until_end=True)


def measure(answers: list[ModelAnswer], stats: TagStatsReader | None, removed: str, added: str) -> dict[str, float]:
    options = CaptionOptions()
    n = len(answers)
    shown = [rank_answer(a, options, stats) for a in answers]
    relevant = (f"#{COLOR}", f"#{SHAPE}", f"#{COLOR}{SHAPE}")
    return {
        "removed tag dropped": 100 * sum(removed not in s for s in shown) / n,
        "added tag included": 100 * sum(added in s for s in shown) / n,
        "colour+shape tags kept": 100 * sum(all(t in s for t in relevant) for s in shown) / n,
        "hashtags per answer": sum(len(s) for s in shown) / n,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stream.prove_tag_learning", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap-servers", default=None, help="[KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092]")
    p.add_argument("--events", type=int, default=300, help="feedback events to publish (default 300)")
    p.add_argument("--new-answers", type=int, default=200, help="new answers ranked before/after (default 200)")
    p.add_argument("--removed", default="#design", help="the tag creators remove (default #design)")
    p.add_argument("--added", default="#bauhaus", help="the tag creators add (default #bauhaus)")
    p.add_argument("--min-rate", type=float, default=80.0, help="pass mark, percent (default 80)")
    p.add_argument("--table", type=Path, help="the tag-stats table to write (default: a new temp file)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    kafka = KafkaSettings(**({"kafka_bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}))
    bootstrap = kafka.kafka_bootstrap_servers
    topic = f"caption.feedback.proof-{uuid.uuid4().hex[:8]}"  # a fresh topic: nothing else counted
    table = args.table or Path(tempfile.mkdtemp(prefix="snap2caption-tag-proof-")) / "tag-stats.sqlite"
    ensure_topics(kafka, [topic])

    t0 = time.monotonic()
    publish(bootstrap, topic, feedback_records(args.events, args.seed, args.removed, args.added))
    totals = count_into(bootstrap, topic, table, f"snap2caption-tag-proof-{uuid.uuid4().hex[:8]}")
    rng = random.Random(args.seed + 1)
    answers = [model_answer(rng, args.removed) for _ in range(args.new_answers)]
    before = measure(answers, None, args.removed, args.added)
    stats = TagStatsReader(table)
    after = measure(answers, stats, args.removed, args.added)
    stats.close()

    print(f"{args.events} feedback events on {topic}: {totals} ({time.monotonic() - t0:.1f} s); table {table}")
    print(f"{args.new_answers} new {COLOR}-{SHAPE} answers, {args.removed} removed and {args.added} added by creators:")
    print(f"  {'':26} {'before':>8} {'after':>8}")
    for name in before:
        unit = "" if name == "hashtags per answer" else " %"
        print(f"  {name:26} {before[name]:>6.1f}{unit:2} {after[name]:>6.1f}{unit:2}")
    ok = (
        totals.get("edits_applied", 0) == args.events
        and after["removed tag dropped"] >= args.min_rate
        and after["added tag included"] >= args.min_rate
        and after["colour+shape tags kept"] >= before["colour+shape tags kept"]
    )
    print("PASS" if ok else f"FAIL: below {args.min_rate:.0f}% or colour/shape tags lost")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
