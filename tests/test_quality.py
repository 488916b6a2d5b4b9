"""The demo model's quality bar (issue: >= 95% colour+shape in caption and alt text)."""

import pytest

pytestmark = pytest.mark.quality


def test_demo_model_meets_quality_bar(demo_model_dir):
    from snap2caption_service.core.captioner import Captioner
    from training.evaluate_demo import THRESHOLDS, evaluate

    report = evaluate(Captioner.load(str(demo_model_dir)), num_scenes=300, seed=9001)
    print(report.table())
    assert report.caption_and_alt_correct >= THRESHOLDS["caption_and_alt_correct"], report.table()
    assert report.hashtags_have_color_and_shape >= THRESHOLDS["hashtags_have_color_and_shape"], report.table()
    assert report.tone_changes_wording >= THRESHOLDS["tone_changes_wording"], report.table()


def test_demo_model_left_padded_batch_matches_single(demo_model_dir):
    """Batching must not change answers: each item captioned alone equals it in a batch."""
    from snap2caption_service.core.captioner import Captioner, CaptionJob
    from training import synthetic

    cap = Captioner.load(str(demo_model_dir))
    ex = synthetic.make_examples(6, 4242)
    jobs = [CaptionJob(synthetic.render_scene(e.scene), e.tone, e.audience) for e in ex]
    batched = [c[0].caption for c in cap.caption_batch(jobs)]
    single = [cap.caption_batch([j])[0][0].caption for j in jobs]
    assert batched == single


def test_demo_model_metadata(demo_model_dir):
    import json

    meta = json.loads((demo_model_dir / "snap2caption_demo.json").read_text())
    assert meta["version"] == demo_model_dir.name
    assert meta["train_wall_s"] <= 15 * 60


def test_checker_reads_colour_and_shape():
    from training.evaluate_demo import first_color_and_shape, first_pair

    assert first_color_and_shape("Odd, bold and totally purple: the star drop is here.") == ("purple", "star")
    assert first_color_and_shape("Weekend vibes with a red circle.") == ("red", "circle")
    assert first_color_and_shape("Weekend vibes.") is None
    assert first_pair("A large red circle at the top and a small blue star, on gray.") == ("red", "circle")
