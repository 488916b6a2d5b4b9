"""Proof that per-creator adapters learn each creator's house style, and only theirs.

    python -m training.prove_creators [--events 160] [--held-out 150] [--json-out FILE]

1. Three creators edit every caption they are shown, each in their own consistent way
   (``STYLES``: one prepends a phrase, one appends a sign-off, one prepends another phrase),
   ``events`` feedback events each, as the service records them: the caption archive holds the
   photo and what was shown (the scene's own answer), the feedback event names the creator and
   goes to the caption.feedback topic (real Kafka). Two more creators give no feedback.
2. ``retrain`` (real MLflow): the champion step has nothing of its own to learn (every edit
   names a creator); each styled creator gets an adapter on the champion, gated per creator.
3. On held-out scenes, each creator's captions come from what serves them: their alias's
   adapter when its champion_version is the current champion's (loaded with peft on the
   merged champion), else the champion. Checked: each styled creator's style in >= 80% of
   their captions; no creator's style in > 5% of another's (the champion's included); creators
   without an adapter get exactly the champion's answers; colour+shape accuracy of every
   adapter within 2 points of the champion's.

``run_proof`` is what tests/test_prove_creators.py calls (with fewer events); the command line
starts Kafka and MLflow itself (infra/kafka.sh, infra/mlflow.sh).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training import synthetic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Style:
    """A house style: a fixed phrase before and/or after the caption, checked by string ends.

    Words the demo model already writes (see prove_loop.PHRASE), in no order its own captions use,
    and word pieces it already writes too (tests/test_creator_retrain.py checks): the demo's
    tokenizer learnt its vocabulary from the generator's captions, so a word outside them ("Stay":
    S-ta-y) is spelt from fragments it never wrote, and 80 edits teaching it to spell one cost
    4-9 points of colour+shape (docs/notes/retraining-gate.md). A real checkpoint's tokenizer
    writes any English word; the proof is about adapters, not the demo's spelling."""

    prefix: str = ""
    suffix: str = ""

    def apply(self, caption: str) -> str:
        return f"{self.prefix}{caption}{self.suffix}"

    def shows_in(self, caption: str) -> bool:
        c = caption.strip()
        return (not self.prefix or c.startswith(self.prefix.strip())) and (
            not self.suffix or c.endswith(self.suffix.strip())
        )


STYLES = {
    "creator-keep": Style(prefix="Keep it simple: "),
    "creator-bold": Style(suffix=" Every day, for you."),
    "creator-weekend": Style(prefix="My notes: "),
}
QUIET = ("creator-quiet-1", "creator-quiet-2")  # give no feedback at all
FEEDBACK_SEED, HELD_OUT_SEED = 7100, 42424
REPO = Path(__file__).resolve().parent.parent


@dataclass
class CreatorCheck:
    creator_id: str
    adapter: str  # the version serving them, or "champion"
    adoption: float | None  # own style (styled creators)
    leakage: float  # worst share of another creator's style in their captions
    accuracy: float
    same_as_champion: float  # share of answers identical to the champion's


@dataclass
class ProofReport:
    events_per_creator: int
    retrain: dict
    champion_accuracy: float
    champion_leakage: float
    checks: list[CreatorCheck] = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)

    def failures(self) -> list[str]:
        out = []
        statuses = {c["creator_id"]: c["status"] for c in self.retrain.get("creators", [])}
        for c in self.checks:
            if c.creator_id in STYLES:
                if statuses.get(c.creator_id) != "promoted":
                    out.append(f"{c.creator_id}: retrain {statuses.get(c.creator_id)}, not promoted")
                if c.adoption is None or c.adoption < 0.80:
                    out.append(f"{c.creator_id}: adoption {c.adoption} < 80%")
                if round(self.champion_accuracy - c.accuracy, 6) > 0.02:
                    out.append(f"{c.creator_id}: accuracy {c.accuracy:.3f} vs champion {self.champion_accuracy:.3f}")
            elif c.same_as_champion < 1.0 or c.adapter != "champion":
                out.append(f"{c.creator_id}: not the champion's answers ({c.same_as_champion:.1%}, {c.adapter})")
            if c.leakage > 0.05:
                out.append(f"{c.creator_id}: another creator's style in {c.leakage:.1%} of captions")
        if self.champion_leakage > 0.05:
            out.append(f"champion: a creator's style in {self.champion_leakage:.1%} of captions")
        return out

    def passed(self) -> bool:
        return not self.failures()

    def table(self) -> str:
        statuses = {c["creator_id"]: c for c in self.retrain.get("creators", [])}
        lines = [
            f"{'creator':<17} {'retrain':<9} {'serves':<10} {'adoption':>8} {'leakage':>8} "
            f"{'colour+shape':>12} {'= champion':>10} {'train s':>8}",
        ]
        for c in self.checks:
            r = statuses.get(c.creator_id, {})
            lines.append(
                f"{c.creator_id:<17} {r.get('status', '-'):<9} {c.adapter:<10} "
                f"{'-' if c.adoption is None else f'{c.adoption:.1%}':>8} {c.leakage:>8.1%} "
                f"{c.accuracy:>12.1%} {c.same_as_champion:>10.1%} {r.get('timings_s', {}).get('train', 0):>8.0f}"
            )
        lines.append(
            f"{'(champion)':<17} {self.retrain.get('status', '-'):<9} {'champion':<10} {'-':>8} "
            f"{self.champion_leakage:>8.1%} {self.champion_accuracy:>12.1%}"
        )
        lines.append("targets: adoption >= 80%, leakage <= 5%, colour+shape >= champion - 2 pts, quiet = champion")
        lines += [f"FAIL: {f}" for f in self.failures()] or ["PASS"]
        return "\n".join(lines)


def send_feedback(bootstrap: str, topic: str, archive_dir: str, events: int, seed: int = FEEDBACK_SEED) -> int:
    """Each styled creator edits ``events`` captions in their style: archive + feedback events, as the
    service writes them. Returns the events sent."""
    from kafka import KafkaProducer

    from snap2caption_service.core.caption_archive import CaptionArchive
    from snap2caption_service.core.contracts import FeedbackRecord, ServedCaption

    archive = CaptionArchive(archive_dir)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    sent = 0
    try:
        for i, (creator, style) in enumerate(STYLES.items()):
            for ex in synthetic.make_examples(events, seed + i):
                buf = io.BytesIO()
                synthetic.render_scene(ex.scene).save(buf, "PNG")
                served = ServedCaption(
                    request_id=uuid.uuid4().hex,
                    image_sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
                    tone=ex.tone,
                    audience=ex.audience,
                    caption=synthetic.caption(ex.scene, ex.tone, ex.audience),
                    hashtags=synthetic.hashtags(ex.scene, ex.num_hashtags),
                    alt_text=synthetic.alt_text(ex.scene),
                    model_version="prove-creators",
                    creator_id=creator,
                )
                archive.put(served, buf.getvalue())
                feedback = FeedbackRecord(
                    request_id=served.request_id,
                    creator_id=creator,
                    rating="down",
                    edited_caption=style.apply(served.caption),
                    feedback_id=uuid.uuid4().hex,
                    received_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    served=served,
                )
                producer.send(topic, key=feedback.feedback_id.encode(), value=feedback.model_dump_json().encode())
                sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent


def held_out_answers(captioner, examples, adapter: str | None = None) -> list:
    """The best answer per example, every row with ``adapter`` (None: the champion)."""
    return mixed_answers(captioner, examples, [adapter])[0]


def mixed_answers(captioner, examples, adapters: list[str | None]) -> list[list]:
    """Answers per adapter, from mixed batches: each batch holds every adapter's row for the same
    scenes (peft ``adapter_names`` per row, as the service batches creators)."""
    from snap2caption_service.core.captioner import CaptionJob

    answers: list[list] = [[] for _ in adapters]
    per_batch = max(1, 50 // len(adapters))
    for start in range(0, len(examples), per_batch):
        part = examples[start : start + per_batch]
        jobs = [
            CaptionJob(synthetic.render_scene(e.scene), e.tone, e.audience, 10, 1, adapter=a)
            for e in part
            for a in adapters
        ]
        best = [cands[0] for cands in captioner.caption_batch(jobs)]
        for i in range(len(adapters)):
            answers[i] += best[i :: len(adapters)]
    return answers


def _accuracy(examples, answers) -> float:
    from training.evaluate_demo import first_color_and_shape, first_pair

    ok = 0
    for ex, a in zip(examples, answers):
        main = (ex.scene.main.color, ex.scene.main.shape)
        ok += first_color_and_shape(a.caption) == main and first_pair(a.alt_text) == main
    return ok / len(examples)


def _share(answers, styles) -> float:
    """The largest share of ``answers`` showing any one of ``styles``."""
    return max((sum(s.shows_in(a.caption) for a in answers) / len(answers) for s in styles), default=0.0)


def check_creators(workdir: Path, held_out: int, registered_model: str = "") -> tuple[float, float, list[CreatorCheck]]:
    """(champion accuracy, champion leakage, per-creator checks) on ``held_out`` new scenes, through
    the service's own pieces: the merged champion as ``Captioner.load`` serves it, each creator's
    adapter resolved and loaded by core/creator_adapters.py (alias + champion_version rule), and
    all creators' rows in the same batches."""
    from snap2caption_service.core.captioner import Captioner, GenerationSettings
    from snap2caption_service.core.creator_adapters import CreatorRegistry as ServedAdapters
    from snap2caption_service.core.creator_adapters import ResidentAdapters
    from snap2caption_service.core.model_loading import resolve_base
    from snap2caption_service.core.registry import NO_CHAMPION
    from snap2caption_service.core.settings import get_settings
    from training.build_demo import ensure_demo_model
    from training.registry import Registry

    champions = Registry(registered_model or None)
    champion = champions.champion()
    champion_adapter = str(champions.download(champion.version, workdir / "check-champion")) if champion else ""
    base_ref = resolve_base("demo", get_settings().data_dir, ensure_demo_model)
    captioner = Captioner.load(base_ref, champion_adapter, generation=GenerationSettings(max_new_tokens=128))
    examples = synthetic.make_examples(held_out, HELD_OUT_SEED)
    # Before any creator adapter is loaded: the champion exactly as it is served without them.
    champion_answers = held_out_answers(captioner, examples)
    source = ServedAdapters(
        champion.version if champion else NO_CHAMPION, workdir / "adapter-cache", registered_model or None
    )
    resident = ResidentAdapters(captioner, source.lookup, max_resident=len(STYLES) + len(QUIET))
    creators = (*STYLES, *QUIET)
    served = {c: resident.acquire(c) for c in creators}
    try:
        names = [served[c].name if served[c] else None for c in creators]
        resident.adapters_for(names)
        by_creator = dict(zip(creators, mixed_answers(captioner, examples, names)))
    finally:
        resident.release(list(served.values()))
    checks = []
    for creator, answers in by_creator.items():
        own = STYLES.get(creator)
        checks.append(
            CreatorCheck(
                creator_id=creator,
                adapter=served[creator].label.rsplit(":", 1)[-1] if served[creator] else "champion",
                adoption=None if own is None else _share(answers, [own]),
                leakage=_share(answers, [s for c, s in STYLES.items() if c != creator]),
                accuracy=_accuracy(examples, answers),
                same_as_champion=sum(
                    (a.caption, a.hashtags, a.alt_text) == (b.caption, b.hashtags, b.alt_text)
                    for a, b in zip(answers, champion_answers)
                )
                / len(examples),
            )
        )
    return _accuracy(examples, champion_answers), _share(champion_answers, STYLES.values()), checks


def run_proof(
    bootstrap: str,
    topic: str,
    workdir: Path,
    events: int = 160,
    held_out: int = 150,
    creator_overrides: list[str] | None = None,
) -> ProofReport:
    """On running services. Environment: MLFLOW_TRACKING_URI, SNAP2CAPTION_TOPIC_FEEDBACK = ``topic``,
    SNAP2CAPTION_REGISTERED_MODEL (a fresh name: the proof must start with no champion)."""
    from training.prove_loop import wait_for_topic
    from training.retrain import RetrainSettings, retrain

    timings: dict[str, float] = {}
    snapshots = str(workdir / "snapshots")
    archive = str(workdir / "archive")
    t0 = time.perf_counter()
    sent = send_feedback(bootstrap, topic, archive, events)
    wait_for_topic(snapshots, bootstrap, topic, sent)
    timings["feedback"] = time.perf_counter() - t0

    rs = RetrainSettings(
        config=str(REPO / "training" / "configs" / "demo-retrain.yaml"),
        snapshots=snapshots,
        archive=archive,
        min_new_events=1,
        output_dir=str(workdir / "retrain"),
        creator_overrides=creator_overrides,
        creator_min_events=min(events, 50),
    )
    t1 = time.perf_counter()
    report = retrain(rs)
    timings["retrain"] = time.perf_counter() - t1
    log.info("retrain: %s", json.dumps(report))

    t2 = time.perf_counter()
    accuracy, leakage, checks = check_creators(workdir, held_out)
    timings["held_out_check"] = time.perf_counter() - t2
    return ProofReport(events, report, accuracy, leakage, checks, {k: round(v, 1) for k, v in timings.items()})


def main(argv: list[str] | None = None) -> int:
    from training.prove_loop import isolated_proof_env

    p = argparse.ArgumentParser(
        prog="python -m training.prove_creators",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=int, default=160, help="feedback events per styled creator (>= 150)")
    p.add_argument("--held-out", type=int, default=150, help="held-out scenes each creator's captions are checked on")
    p.add_argument(
        "--creator-set", action="append", default=[], metavar="KEY=VALUE", help="override a creator config field"
    )
    p.add_argument("--workdir", type=Path, help="default: a fresh folder under <data_dir>/prove-creators")
    p.add_argument("--json-out", type=Path, help="also write the report as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    workdir = isolated_proof_env("prove-creators", args.workdir)
    report = run_proof(
        os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        os.environ["SNAP2CAPTION_TOPIC_FEEDBACK"],
        workdir,
        args.events,
        args.held_out,
        args.creator_set,
    )
    print(report.table())
    if args.json_out:
        args.json_out.write_text(json.dumps({**asdict(report), "passed": report.passed()}, indent=2))
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
