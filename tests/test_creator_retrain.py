"""Per-creator adapters in `snap2caption retrain` (training/creator_retrain.py).

Unit tests: who is selected (N new records since their last judged run, a changed champion),
grouping by creator, the champion-version rule for starting from a served adapter, one
creator's failure isolated from the others, creator_id carried from feedback into snapshots.
Integration (real Kafka + MLflow + the demo model, small numbers): creators' feedback ->
retrain -> per-creator versions with their tags and aliases, the champion trained on the
feedback of no creator only; a refused creator run keeps that creator's alias.
"""

from __future__ import annotations

import json
import uuid

import pytest

from snap2caption_service.core.registry import CHAMPION_VERSION_TAG, CREATOR_TAG, VersionInfo, creator_alias
from training.creator_retrain import (
    RECORDS_TAG,
    CreatorOutcome,
    CreatorPlan,
    group_by_creator,
    run_creators,
    select,
)
from training.datasets import CaptionRecord


def rec(n: int, creator: str | None = None) -> CaptionRecord:
    extra = {"request_id": f"{n:032x}", "feedback_id": f"fb{n}"}
    if creator:
        extra["creator_id"] = creator
    return CaptionRecord(
        image=f"images/{n}.png", caption=f"Caption {n}.", hashtags=("#a",), image_id=f"{n}", extra=extra
    )


def version(v: int, creator: str, records: int, champion: str, decision: str = "promoted") -> VersionInfo:
    tags = {CREATOR_TAG: creator, RECORDS_TAG: str(records), CHAMPION_VERSION_TAG: champion, "gate_decision": decision}
    return VersionInfo(name="m-creators", version=str(v), run_id=None, source="", tags=tags)


def by_creator(plans: list[CreatorPlan]) -> dict[str, CreatorPlan]:
    return {p.creator_id: p for p in plans}


def test_group_by_creator_keeps_feedback_of_no_creator_out():
    records = [rec(1, "ann"), rec(2), rec(3, "bob"), rec(4, "ann")]
    groups = group_by_creator(records)
    assert {k: [r.image_id for r in v] for k, v in groups.items()} == {"ann": ["1", "4"], "bob": ["3"]}
    assert records[1].creator_id is None and records[0].creator_id == "ann"


def test_selection_needs_n_new_records_since_the_last_judged_run():
    groups = {
        "fresh": [rec(i, "fresh") for i in range(50)],  # no run yet, exactly N
        "few": [rec(i, "few") for i in range(49)],  # no run yet, one short
        "grown": [rec(i, "grown") for i in range(110)],  # 60 at the last run: 50 new
        "same": [rec(i, "same") for i in range(100)],  # 60 at the last run: 40 new
        "retry": [rec(i, "retry") for i in range(55)],  # its last version failed: not a run
    }
    versions = [
        version(1, "grown", 60, "3"),
        version(2, "same", 60, "3", decision="challenger"),
        version(3, "retry", 55, "3", decision="failed"),
    ]
    plans = by_creator(select(groups, versions, {}, "3", 50))
    assert {c: p.train for c, p in plans.items()} == {
        "fresh": True,
        "few": False,
        "grown": True,
        "same": False,
        "retry": True,
    }
    assert plans["grown"].new_records == 50 and plans["same"].new_records == 40
    assert "< 50" in plans["same"].reason and "in all" in plans["few"].reason


def test_a_served_adapter_is_resumed_only_on_the_champion_it_was_trained_on():
    groups = {c: [rec(i, c) for i in range(120)] for c in ("same-champion", "old-champion", "base-era")}
    versions = [
        version(4, "same-champion", 60, "7"),
        version(5, "old-champion", 60, "6"),
        version(6, "base-era", 60, "base"),
    ]
    aliases = {creator_alias(c): v.version for c, v in zip(groups, versions)}
    plans = by_creator(select(groups, versions, aliases, "7", 50))
    assert plans["same-champion"].resume is not None and plans["same-champion"].resume.version == "4"
    assert plans["old-champion"].resume is None  # a mismatched pair: start fresh on champion 7
    assert plans["base-era"].resume is None


def test_a_changed_champion_retrains_a_creator_without_new_feedback():
    groups = {"ann": [rec(i, "ann") for i in range(60)], "tiny": [rec(i, "tiny") for i in range(20)]}
    versions = [version(1, "ann", 60, "2"), version(2, "tiny", 20, "2")]
    plans = by_creator(select(groups, versions, {creator_alias("ann"): "1"}, "3", 50))
    assert plans["ann"].train and "champion is now 3" in plans["ann"].reason
    assert plans["ann"].resume is None
    assert not plans["tiny"].train  # never had enough to be trained in the first place
    # Once retrained on champion 3 (even if held), no more runs until N new records arrive.
    versions.append(version(3, "ann", 60, "3", decision="challenger"))
    assert not by_creator(select(groups, versions, {creator_alias("ann"): "1"}, "3", 50))["ann"].train


def test_one_creators_failure_leaves_the_others_running(tmp_path):
    plans = [
        CreatorPlan("ann", [rec(1, "ann")], 1, True, "new"),
        CreatorPlan("bob", [rec(2, "bob")], 1, True, "new"),
        CreatorPlan("cy", [rec(3, "cy")], 1, True, "new"),
        CreatorPlan("dee", [rec(4, "dee")], 1, False, "1 new feedback records in all (< 50)"),
    ]
    ran = []

    def run_one(plan, out):
        ran.append(plan.creator_id)
        if plan.creator_id == "bob":
            raise RuntimeError("tracking server went away")
        return CreatorOutcome(plan.creator_id, "promoted", "better", 1, 1, version="1")

    outcomes = {o.creator_id: o for o in run_creators(plans, tmp_path, run_one)}
    assert ran == ["ann", "bob", "cy"]
    assert {c: o.status for c, o in outcomes.items()} == {
        "ann": "promoted",
        "bob": "failed",
        "cy": "promoted",
        "dee": "skipped",
    }
    assert "tracking server went away" in outcomes["bob"].reason and outcomes["bob"].version is None
    report = outcomes["bob"].report()
    assert report["status"] == "failed" and "total" in report["timings_s"]


def test_snapshot_records_carry_the_creator(tmp_path):
    from snap2caption_service.core.caption_archive import CaptionArchive
    from snap2caption_service.core.contracts import FeedbackRecord, ServedCaption
    from training.feedback_snapshot import records_from_feedback

    archive = CaptionArchive(str(tmp_path / "archive"))
    events = []
    for n, creator in enumerate(["ann", None]):
        served = ServedCaption(
            request_id=f"{n:032x}",
            image_sha256=f"{n:064x}",
            tone="funny",
            audience="personal",
            caption="A red circle.",
            hashtags=["#red"],
            alt_text="A red circle.",
            model_version="demo-x",
            creator_id=creator,
        )
        archive.put(served, b"png")
        events.append(
            FeedbackRecord(
                request_id=served.request_id,
                creator_id=creator,
                rating="down",
                edited_caption="Keep it simple: a red circle.",
                feedback_id=uuid.uuid4().hex,
                received_at="2026-12-01T00:00:00Z",
                served=served,
            )
        )
    records, _ = records_from_feedback(events, archive, tmp_path)
    assert [r.creator_id for r in records] == ["ann", None]
    assert json.loads(json.dumps(records[0].to_json()))["creator_id"] == "ann"


def test_feedback_history_follows_the_snapshot_chain(tmp_path):
    from dataclasses import asdict

    from training.datasets import write_manifest
    from training.feedback_snapshot import SnapshotInfo, feedback_history, mark_consumed

    root = tmp_path / "snapshots"
    previous = None
    chain = [[rec(1, "ann"), rec(2, "bob")], [rec(3, "ann"), rec(1, "ann")]]  # request 1 again: the later wins
    for i, records in enumerate(chain):
        folder = root / f"fb-{i}"
        (folder / "images").mkdir(parents=True)
        write_manifest(records, folder / "records.jsonl")
        info = SnapshotInfo(f"fb-{i}", f"{i}", str(folder), "t", {"0": [0, 1]}, previous=previous)
        (folder / "snapshot.json").write_text(json.dumps(asdict(info)))
        previous = info.id
    mark_consumed(str(root), info)
    history = feedback_history(str(root), None)
    assert sorted(r.image_id for r in history) == ["1", "2", "3"]
    assert len(group_by_creator(history)["ann"]) == 2


# --- integration: real broker, tracking server and demo model ---------------------------------

from stream_support import bootstrap  # noqa: E402,F401  (fixture)


@pytest.mark.kafka
@pytest.mark.mlflow
@pytest.mark.quality
@pytest.mark.timeout(1800)
def test_creators_get_versions_tags_and_aliases_and_a_refusal_keeps_the_alias(
    tmp_path, bootstrap, mlflow_uri, demo_model_dir, monkeypatch
):
    from snap2caption_service.core.settings import get_settings
    from training.prove_creators import STYLES, send_feedback
    from training.prove_loop import wait_for_topic
    from training.registry import CreatorRegistry, Registry
    from training.retrain import RetrainSettings, retrain

    tag = uuid.uuid4().hex[:8]
    topic = f"creators-{tag}.feedback"
    for k, v in {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SNAP2CAPTION_TOPIC_FEEDBACK": topic,
        "SNAP2CAPTION_REGISTERED_MODEL": f"creators-{tag}",
    }.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    snapshots, archive = str(tmp_path / "snapshots"), str(tmp_path / "archive")
    # Plumbing, not quality (training/prove_creators.py is the quality proof): few steps and
    # scenes, and a gate that promotes any candidate the first time round.
    quick = ["steps=4", "eval.guard_scenes=10", "eval.max_records=8", "eval.idf_corpus.0.scenes=50"]

    def settings(run: str, creator_rule: list[str]) -> RetrainSettings:
        return RetrainSettings(
            config="training/configs/demo-retrain.yaml",
            snapshots=snapshots,
            archive=archive,
            output_dir=str(tmp_path / run),
            creator_overrides=quick + creator_rule,
            creator_min_events=20,
            creator_min_eval_records=3,
        )

    sent = send_feedback(bootstrap, topic, archive, events=24)
    wait_for_topic(snapshots, bootstrap, topic, sent)
    first = retrain(settings("run-1", ["registration_rule.min_improvement=-1000", "registration_rule.guarded={}"]))
    # Every edit named a creator: nothing for the champion, and it stays unregistered.
    assert first["status"] == "nothing_new" and first["champion_records"] == 0, first
    creators = {c["creator_id"]: c for c in first["creators"]}
    assert set(creators) == set(STYLES)
    assert all(c["status"] == "promoted" for c in creators.values()), first["creators"]

    registry = CreatorRegistry()
    assert Registry().champion() is None
    for creator, c in creators.items():
        info = registry.by_alias(creator_alias(creator))
        assert info is not None and info.version == c["version"]
        assert info.tags[CREATOR_TAG] == creator and info.tags[CHAMPION_VERSION_TAG] == "base"
        assert info.tags[RECORDS_TAG] == "24" and info.tags["gate_decision"] == "promoted"

    # Nothing new: no creator is trained again.
    again = retrain(settings("run-2", []))
    assert [c["status"] for c in again["creators"]] == ["skipped"] * 3, again

    # More feedback from all three, judged by a gate no candidate passes: held, aliases unchanged.
    sent = send_feedback(bootstrap, topic, archive, events=24, seed=900)
    wait_for_topic(snapshots, bootstrap, topic, sent)
    refused = retrain(settings("run-3", ["registration_rule.min_improvement=1000"]))
    assert refused["status"] == "nothing_new", refused
    for c in refused["creators"]:
        assert c["status"] == "held" and "not enough improvement" in c["reason"], c
        assert c["started_from"].startswith("creator v")  # their served adapter, same champion (none)
        held = registry.version(c["version"])
        assert held.tags["gate_decision"] == "challenger" and held.tags[RECORDS_TAG] == "48"
        assert registry.by_alias(creator_alias(c["creator_id"])).version == creators[c["creator_id"]]["version"]
    get_settings.cache_clear()


def test_proof_styles_are_spelt_from_whole_words_the_demo_model_knows():
    # The demo tokenizer learnt its vocabulary from the generator's captions: a style word outside
    # them ("Stay": S-ta-y) is spelt from fragments the model never wrote, and learning to spell it
    # from 80 edits cost the adapters 4-9 points of colour+shape (prove_creators.Style).
    from training.demo_model import DemoArchitecture, train_tokenizer
    from training.prove_creators import STYLES

    tok = train_tokenizer(DemoArchitecture().vocab_size)

    def fragments(phrase: str) -> list[str]:
        words = [t for t in tok.tokenize(phrase.rstrip()) if any(c.isalnum() for c in t)]
        return words if len(words) != len(phrase.split()) else []

    for creator, style in STYLES.items():
        for phrase in filter(None, (style.prefix, style.suffix)):
            assert not fragments(phrase), f"{creator}: {phrase!r} is spelt from fragments: {fragments(phrase)}"
    assert fragments(" Stay bold, friends.")  # the check can fail


@pytest.mark.quality
def test_the_creator_gate_scores_through_the_scene_heads_as_serving_does(demo_model_dir):
    """The creator gate scored the decoder alone, while the champion's gate (Captioner.load) and
    the service answer through the demo model's scene heads: on generator 9's model that scored
    a champion 2.5 points below what it serves (docs/notes/demo-model.md, session 22). Champion and
    candidate (peft-wrapped, as it trains) now answer as serving answers."""
    from snap2caption_service.core.captioner import Captioner, CaptionJob
    from training import synthetic
    from training.config import load_config
    from training.creator_retrain import SharedBase
    from training.finetune import attach_lora

    cfg = load_config("training/configs/demo-creator.yaml")
    base = SharedBase(cfg, None).load()
    assert base.base_ref == str(demo_model_dir)
    scenes = synthetic.make_examples(4, 9001)
    jobs = [CaptionJob(synthetic.render_scene(e.scene), e.tone, e.audience, 5, 1) for e in scenes]

    def answers(captioner):
        return [(c[0].caption, c[0].hashtags, c[0].alt_text, c[0].corrections) for c in captioner.caption_batch(jobs)]

    served = answers(Captioner.load(str(demo_model_dir)))

    champion = base.captioner(base.model, "champion")
    assert champion.scene_heads is not None
    assert answers(champion) == served
    model = attach_lora(base.model, cfg, None, base.base_ref, base.identity, base.device)
    try:
        candidate = base.captioner(model, "candidate")  # a fresh LoRA: the champion's answers
        assert answers(candidate) == served
    finally:
        base.model = model.unload()
