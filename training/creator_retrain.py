"""Per-creator adapters, the second half of `snap2caption retrain` (issue 17).

Feedback on a caption requested with a ``creator_id`` is that creator's house style: it trains
their own LoRA, never everyone's champion (training/retrain.py keeps it out of the champion's
data). After the champion step, in the same invocation:

1. Group the feedback history (every snapshot, one record per request) by creator.
2. Select who to train (``select``): a creator with at least ``min_new`` records more than
   their last judged run saw (the ``creator_records`` tag of their newest promoted or held
   version), or one whose last run was on another champion and who has ``min_new`` records.
3. Load the base model with the champion merged in ONCE (core/captioner.load_merged) and, per
   creator, attach a LoRA to it (their served adapter when it was trained on this champion,
   else a fresh one), train it on their records only, and ``unload()`` it again.
4. Score candidate (merged champion + creator adapter) and baseline (merged champion) on that
   creator's held-out records (split by image) with the same evaluation and gate as the
   champion; register the version in ``creators_model_name()`` with the creator and champion
   tags; only a promotion moves ``creator_alias(id)``, and only if the champion is still the
   one the adapter was trained on.

A creator adapter is valid only with its ``champion_version`` tag (``NO_CHAMPION`` when it was
trained on the bare base); serving falls back to the champion for a mismatched pair. One
creator's failure is logged and reported; the others still run, and that creator's alias
stays where it was.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from snap2caption_service.core.registry import CHAMPION_VERSION_TAG, CREATOR_TAG, VersionInfo, creator_alias
from training.datasets import CaptionRecord

log = logging.getLogger(__name__)

# On each creator version: the creator's feedback records when the run started ("new since
# their last run" counts from here) and the newest snapshot they came from.
RECORDS_TAG = "creator_records"
SNAPSHOT_TAG = "creator_snapshot"


@dataclass
class CreatorPlan:
    """What ``select`` decided for one creator."""

    creator_id: str
    records: list[CaptionRecord]
    new_records: int
    train: bool
    reason: str
    resume: VersionInfo | None = None  # their served adapter, trained on the current champion


@dataclass
class CreatorOutcome:
    creator_id: str
    status: str  # promoted | held | skipped | failed
    reason: str
    records: int = 0
    new_records: int = 0
    version: str | None = None
    started_from: str = ""
    train_records: int = 0
    eval_records: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    candidate: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict:
        out = {
            "creator_id": self.creator_id,
            "status": self.status,
            "reason": self.reason,
            "version": self.version,
            "records": self.records,
            "new_records": self.new_records,
        }
        if self.started_from:
            out.update(
                started_from=self.started_from,
                train_records=self.train_records,
                eval_records=self.eval_records,
                candidate=self.candidate,
                champion=self.champion,
            )
        out["timings_s"] = {k: round(v, 1) for k, v in self.timings_s.items()}
        return out


@dataclass
class CreatorSettings:
    config: str
    min_new: int
    min_eval_records: int
    overrides: list[str] | None = None


def group_by_creator(records: list[CaptionRecord]) -> dict[str, list[CaptionRecord]]:
    """Each creator's records, in feedback order; records of no creator are not here."""
    groups: dict[str, list[CaptionRecord]] = {}
    for r in records:
        if r.creator_id:
            groups.setdefault(r.creator_id, []).append(r)
    return groups


def select(
    groups: dict[str, list[CaptionRecord]],
    versions: list[VersionInfo],
    aliases: dict[str, str],
    champion_tag: str,
    min_new: int,
) -> list[CreatorPlan]:
    """Who trains now, and from what. Pure: ``versions`` is the creators' registered model's
    listing, ``aliases`` its alias -> version map, ``champion_tag`` the current champion as
    CHAMPION_VERSION_TAG writes it."""
    from training.registry import JUDGED

    by_number = {v.version: v for v in versions}
    last: dict[str, VersionInfo] = {}
    for v in versions:
        creator = v.tags.get(CREATOR_TAG)
        if creator and v.tags.get("gate_decision") in JUDGED:
            if creator not in last or int(v.version) > int(last[creator].version):
                last[creator] = v
    plans = []
    for creator, records in sorted(groups.items()):
        previous = last.get(creator)
        seen = int(previous.tags.get(RECORDS_TAG, "0")) if previous else 0
        new = max(0, len(records) - seen)
        served = by_number.get(aliases.get(creator_alias(creator), ""))
        # Their adapter is a LoRA on one champion: on any other it would be a mismatched pair.
        resume = served if served and served.tags.get(CHAMPION_VERSION_TAG) == champion_tag else None
        last_on = previous.tags.get(CHAMPION_VERSION_TAG) if previous else None
        if new >= min_new:
            plan = CreatorPlan(creator, records, new, True, f"{new} new feedback records since their last run")
        elif previous is not None and last_on != champion_tag and len(records) >= min_new:
            reason = f"the champion is now {champion_tag}, their last run was on {last_on}"
            plan = CreatorPlan(creator, records, new, True, reason)
        else:
            why = "since their last run" if previous else "in all"
            plan = CreatorPlan(creator, records, new, False, f"{new} new feedback records {why} (< {min_new})")
        plan.resume = resume if plan.train else None
        plans.append(plan)
    return plans


class SharedBase:
    """The base model with the champion merged in, loaded once per invocation (first use);
    every creator's LoRA is attached to it and unloaded again."""

    def __init__(self, cfg, champion_adapter: str | None):
        self.cfg, self.champion_adapter = cfg, champion_adapter
        self.model = self.processor = self.identity = self.device = self.scene_heads = None
        self.base_ref = ""

    def load(self) -> SharedBase:
        if self.model is not None:
            return self
        from snap2caption_service.core.captioner import base_identity, load_merged, resolve_device
        from snap2caption_service.core.model_loading import resolve_base
        from snap2caption_service.core.scene_heads import SceneHeads
        from snap2caption_service.core.settings import get_settings
        from training.build_demo import ensure_demo_model
        from training.finetune import train_dtype

        t0 = time.perf_counter()
        self.device = resolve_device("auto")
        self.base_ref = resolve_base(self.cfg.base_model, get_settings().data_dir, ensure_demo_model)
        self.model, self.processor = load_merged(
            self.base_ref, self.champion_adapter or "", train_dtype(self.cfg, self.device)
        )
        # The base's identity, as the adapter records it: a LoRA merge leaves the token
        # embeddings it fingerprints untouched, so merged or not it is the base's. Which champion
        # the adapter sits on is the version tag's job, not this one's.
        self.identity = base_identity(self.model)
        self.scene_heads = SceneHeads.load(self.base_ref) if Path(self.base_ref).is_dir() else None
        self.model.to(self.device)
        log.info("base + champion loaded once for the creators in %.1fs", time.perf_counter() - t0)
        return self

    def captioner(self, model, label: str):
        """The champion or a candidate as serving answers with it: with the base's scene heads where
        it ships them (the demo model), as ``Captioner.load`` gives them to the champion's gate
        (train_job) and the service. Without them the gate scored a decoder nobody is served."""
        from snap2caption_service.core.captioner import Captioner, GenerationSettings

        captioner = Captioner(
            model, self.processor, label, GenerationSettings(max_new_tokens=self.cfg.eval.max_new_tokens)
        )
        captioner.scene_heads = self.scene_heads  # loaded once with the base
        return captioner


RunOne = Callable[[CreatorPlan, Path], CreatorOutcome]


def run_creators(plans: list[CreatorPlan], out: Path, run_one: RunOne) -> list[CreatorOutcome]:
    """Each planned creator through ``run_one``; an exception fails that creator only."""
    outcomes = []
    for plan in plans:
        if not plan.train:
            outcomes.append(
                CreatorOutcome(plan.creator_id, "skipped", plan.reason, len(plan.records), plan.new_records)
            )
            continue
        t0 = time.perf_counter()
        try:
            outcome = run_one(plan, out / creator_alias(plan.creator_id))
        except Exception as exc:  # noqa: BLE001 - one creator's failure must not stop the others
            log.exception("creator %r: run failed; their served adapter is unchanged", plan.creator_id)
            outcome = CreatorOutcome(
                plan.creator_id, "failed", f"{type(exc).__name__}: {exc}"[:500], len(plan.records), plan.new_records
            )
        outcome.timings_s.setdefault("total", time.perf_counter() - t0)
        log.info("creator %r: %s (%s)", plan.creator_id, outcome.status, outcome.reason)
        outcomes.append(outcome)
    return outcomes


def retrain_creators(
    settings: CreatorSettings,
    snapshots: str,
    head,
    out: Path,
    registered_model: str = "",
    progress: bool = True,
) -> list[dict]:
    """The creators' step of one retrain invocation; ``head``: the newest snapshot (None: latest.json).
    Returns one report per creator with feedback."""
    from snap2caption_service.core.registry import NO_CHAMPION
    from training.config import load_config
    from training.feedback_snapshot import feedback_history
    from training.registry import CreatorRegistry
    from training.train_job import champion_baseline

    groups = group_by_creator(feedback_history(snapshots, head))
    if not groups:
        return []
    cfg = load_config(settings.config, settings.overrides)
    registry = CreatorRegistry(registered_model or None)
    champion = champion_baseline(registry.champions.name, out / "champion")
    champion_tag = champion.champion_version or NO_CHAMPION
    plans = select(groups, registry.all_versions(), registry.aliases(), champion_tag, settings.min_new)
    base = SharedBase(cfg, champion.adapter)
    source = head.location if head is not None else snapshots
    job = _CreatorJob(cfg, settings, registry, champion, champion_tag, base, head, source, progress)
    return [o.report() for o in run_creators(plans, out, job)]


class _CreatorJob:
    """One creator's run: train on the shared base, score, gate, register (a ``RunOne``)."""

    def __init__(
        self, cfg, settings: CreatorSettings, registry, champion, champion_tag: str, base, head, source, progress
    ):
        self.cfg, self.settings, self.registry = cfg, settings, registry
        self.champion, self.champion_tag, self.base = champion, champion_tag, base
        self.head_id = head.id if head is not None else ""
        self.source = source  # where the feedback history is, for the run's dataset input
        self.progress = progress
        self._guard: dict[str, float] | None = None  # the champion's guard metrics: the same for every creator

    def __call__(self, plan: CreatorPlan, out: Path) -> CreatorOutcome:
        from training.finetune import holdout_split
        from training.train_job import headline

        cfg = self.cfg
        train_records, eval_records = holdout_split(plan.records, cfg.eval.holdout_fraction, cfg.seed)
        eval_records = eval_records[: cfg.eval.max_records]
        outcome = CreatorOutcome(plan.creator_id, "held", "", len(plan.records), plan.new_records)
        if len(eval_records) < self.settings.min_eval_records or not train_records:
            outcome.reason = (
                f"only {len(eval_records)} held-out and {len(train_records)} training records "
                f"(needs >= {self.settings.min_eval_records} held out and some to train on): "
                "too few to judge an adapter; not trained"
            )
            return outcome
        out.mkdir(parents=True, exist_ok=True)
        started_from = (
            f"creator v{plan.resume.version}"
            if plan.resume
            else (self.champion.label if self.champion.champion_version else "base")
        )
        log.info(
            "creator %r: %s; training from %s on %d records (%d held out)",
            plan.creator_id,
            plan.reason,
            started_from,
            len(train_records),
            len(eval_records),
        )
        resume = str(self.registry.download(plan.resume.version, out / "resume")) if plan.resume else None
        job = self._tracked(plan, out, train_records, eval_records, resume)
        outcome.status = "promoted" if job.promoted else "held"
        outcome.reason = job.decision.reason
        outcome.version = job.version
        outcome.started_from = started_from
        outcome.train_records, outcome.eval_records = len(train_records), len(eval_records)
        outcome.timings_s = dict(job.timings)
        outcome.candidate, outcome.champion = headline(job.candidate_metrics), headline(job.baseline_metrics)
        return outcome

    def _tracked(self, plan: CreatorPlan, out: Path, train_records, eval_records, resume: str | None):
        from snap2caption_service.core.registry import creator_key
        from training.train_job import DatasetInput, tracked_job

        key = creator_key(plan.creator_id)
        digest = hashlib.sha256("\n".join(r.extra.get("feedback_id", r.image_id) for r in plan.records).encode())
        datasets = [DatasetInput(f"creator-{key}", digest.hexdigest()[:32], self.source, len(plan.records))]
        params = {
            "creator_key": key,
            "resume_adapter": resume or "",
            "train_records": len(train_records),
            "eval_records": len(eval_records),
        }
        tags = {
            CREATOR_TAG: plan.creator_id,
            CHAMPION_VERSION_TAG: self.champion_tag,
            SNAPSHOT_TAG: self.head_id,
            "selected_because": plan.reason,
        }

        def register(outcome, artifact: str) -> None:
            info = self.registry.register(
                outcome.run_id,
                artifact,
                tags={
                    CREATOR_TAG: plan.creator_id,
                    CHAMPION_VERSION_TAG: self.champion_tag,
                    RECORDS_TAG: str(len(plan.records)),
                    SNAPSHOT_TAG: self.head_id,
                    "config": self.cfg.name,
                    "base_model": self.cfg.base_model,
                },
            )
            outcome.version = info.version
            self.registry.apply_creator_gate(
                info.version,
                plan.creator_id,
                outcome.decision,
                outcome.candidate_metrics,
                self.cfg.gate_rule(),
                self.champion.champion_version,
            )
            outcome.promoted = outcome.decision.promote

        return tracked_job(
            self.cfg,
            out,
            f"creator-{key}-{self.head_id or 'latest'}",
            params,
            tags,
            datasets,
            lambda tracking: self._train_and_score(plan, out, train_records, eval_records, resume, tracking),
            register,
        )

    def _train_and_score(self, plan, out: Path, train_records, eval_records, resume, tracking):
        import torch

        from training.evaluation import score
        from training.finetune import attach_lora, train_adapter
        from training.train_job import judge

        cfg, base = self.cfg, self.base.load()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        records_only = cfg.eval.model_copy(update={"guard_scenes": 0})
        champion = base.captioner(base.model, self.champion.label)
        base_metrics, _ = score(champion, eval_records, records_only, out / "baseline_predictions.csv")
        if self._guard is None:
            self._guard = score(champion, [], cfg.eval)[0] if cfg.eval.guard_scenes else {}
        base_metrics.update(self._guard)
        timings["evaluate_champion"] = time.perf_counter() - t0

        torch.manual_seed(cfg.seed)
        try:
            model = attach_lora(base.model, cfg, resume, base.base_ref, base.identity, base.device)
        except Exception:
            base.model = None  # it may hold half an adapter now: the next creator loads a clean one
            raise
        try:
            t1 = time.perf_counter()
            result = train_adapter(
                model,
                base.processor,
                base.identity,
                base.base_ref,
                cfg,
                out,
                train_records,
                eval_records,
                on_log=lambda step, stats: tracking.log_step(stats, step),
                progress=self.progress,
                meta={
                    "creator_id": plan.creator_id,
                    # Trained on the base with this champion merged in: valid with it only.
                    "champion_version": self.champion_tag,
                    "champion_adapter": self.base.champion_adapter,
                    "resumed_from": resume,
                },
            )
            timings["train"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            candidate = base.captioner(model, f"{self.champion.label} + creator {plan.creator_id}")
            cand_metrics, _ = score(candidate, eval_records, cfg.eval, out / "predictions.csv")
            timings["evaluate_candidate"] = time.perf_counter() - t2
        finally:
            # The shared base must come back bare for the next creator, whatever happened.
            base.model = model.unload()
        return judge(cfg, out, result, self.champion, cand_metrics, base_metrics, timings)
