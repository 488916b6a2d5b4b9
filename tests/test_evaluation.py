"""training/evaluation.py predict: a feedback record is answered as serving answered it."""

from __future__ import annotations

import dataclasses

from PIL import Image

from snap2caption_service.core.contracts import Candidate, CaptionOptions
from snap2caption_service.core.hashtags import as_served, hashtag_pool
from training.caption_metrics import evaluate
from training.datasets import CaptionRecord
from training.evaluation import predict, served_options

# A pool as the demo model writes it: the ranker drops the generic tags and tops up from the alt text.
POOL = ["#redcircle", "#red", "#circle", "#circleart", "#geometricart", "#aesthetic", "#shapes", "#mood"]
ANSWER = Candidate(
    caption="A red circle, just because.",
    hashtags=POOL,
    alt_text="A red circle on a plain gray background.",
    score=-0.1,
)


class FakeCaptioner:
    """Answers every job with ANSWER's pool cut to the count asked for, and notes the counts."""

    def __init__(self):
        self.asked: list[int] = []

    def caption_batch(self, jobs):
        self.asked += [j.num_hashtags for j in jobs]
        return [[ANSWER.model_copy(update={"hashtags": POOL[: j.num_hashtags]})] for j in jobs]


def record(tmp_path, **extra) -> CaptionRecord:
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16), "red").save(image)
    served = as_served(ANSWER, CaptionOptions(num_hashtags=5))
    return CaptionRecord(str(image), ANSWER.caption, tuple(served.hashtags), ANSWER.alt_text, extra=extra)


def test_a_champion_scored_on_what_it_served_scores_full_marks(tmp_path):
    fed_back = record(tmp_path, platform="instagram", num_hashtags=5, hashtags_from="ranker")
    captioner = FakeCaptioner()
    rows = predict(captioner, [fed_back])
    assert captioner.asked == [hashtag_pool(CaptionOptions(num_hashtags=5))]  # the pool serving asks for
    assert evaluate(rows)["hashtag_f1"] == 1.0
    assert not any(t in rows[0].predicted_hashtags for t in ("#aesthetic", "#mood"))


def test_a_dataset_record_is_scored_on_the_models_own_list(tmp_path):
    dataset = record(tmp_path)  # no platform: its hashtags are a reference list, not a ranked answer
    assert served_options(dataset) is None
    rows = predict(FakeCaptioner(), [dataset])
    assert rows[0].predicted_hashtags == tuple(POOL[:5])


def test_served_options_stay_within_the_platforms_cap(tmp_path):
    threads = served_options(record(tmp_path, platform="threads", num_hashtags=5))
    assert threads.platform == "threads" and threads.num_hashtags == 1
    assert served_options(record(tmp_path, platform="myspace")) is None
    # A hand-written manifest's count that is not a count: the record's own list decides.
    odd = dataclasses.replace(record(tmp_path, platform="instagram", num_hashtags="lots"), hashtags=("#a", "#b", "#c"))
    assert served_options(odd).num_hashtags == 3
