"""Caption metrics: BLEU-4, ROUGE-L and CIDEr-D against pycocoevalcap (the MS-COCO reference
code) on the same tokens; hashtag P/R/F1 and length statistics on hand-computed values."""

from __future__ import annotations

import csv
import math
import random

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from training.caption_metrics import (
    PredictionRow,
    bleu4,
    cider_d,
    evaluate,
    hashtag_prf,
    length_stats,
    rouge_l,
    tokenize,
    write_predictions_table,
)


def coco(predictions, references):
    """pycocoevalcap's three scores on our tokens (it expects space-joined, pre-tokenised text)."""
    gts = {i: [" ".join(tokenize(r)) for r in refs if tokenize(r)] for i, refs in enumerate(references)}
    res = {i: [" ".join(tokenize(p))] for i, p in enumerate(predictions)}
    return {
        "cider_d": Cider().compute_score(gts, res)[0],
        "bleu4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        "rouge_l": Rouge().compute_score(gts, res)[0],
    }


def ours(predictions, references):
    return {
        "cider_d": cider_d(predictions, references),
        "bleu4": bleu4(predictions, references),
        "rouge_l": rouge_l(predictions, references),
    }


CAPTIONS = [
    (
        "Golden hour at the beach, feeling grateful!",
        ["Golden hour on the beach and I'm grateful.", "Sunset at the beach, so grateful", "Beach sunset glow"],
    ),
    ("A red circle on a blue background.", ["A red circle sits on a blue background", "Red circle, blue backdrop"]),
    (
        "Coffee first, questions later ☕ #MondayMood",
        [
            "Coffee first. Questions later.",
            "Monday means coffee first",
            "But first, coffee!",
            "coffee before questions",
        ],
    ),
    (
        "Our new spring collection drops Friday.",
        ["New spring collection drops this Friday!", "Spring collection: out Friday"],
    ),
    ("", ["An empty prediction still has references"]),
    (
        "Figure 2: the measured spectrum of the sample.",
        ["Figure 2 shows the measured spectrum of the sample", "The sample's measured spectrum"],
    ),
    ("Don't stop believing", ["don't stop believing", "never stop believing"]),
]


def random_corpus(seed: int, size: int):
    rng = random.Random(seed)
    vocab = (
        "a the red blue green yellow circle square star triangle on in with background sunny "
        "beach coffee friends weekend vibes golden hour new drop"
    ).split()
    base = [[rng.choice(vocab) for _ in range(rng.randint(3, 14))] for _ in range(size)]
    # Predictions that share real n-grams with their references, so BLEU-4 is not ~0.
    preds = [
        " ".join(w[: rng.randint(1, len(w))] + [rng.choice(vocab) for _ in range(rng.randint(0, 4))]) for w in base
    ]
    refs = [[" ".join(w)] + [" ".join(rng.sample(w, len(w))) for _ in range(rng.randint(0, 4))] for w in base]
    return preds, refs


@pytest.mark.parametrize("case", ["captions", "random-1", "random-2", "random-3", "single-ref", "two-items"])
def test_matches_pycocoevalcap(case):
    if case == "captions":
        preds, refs = [p for p, _ in CAPTIONS], [r for _, r in CAPTIONS]
    elif case.startswith("random"):
        preds, refs = random_corpus(int(case[-1]), 40)
    elif case == "single-ref":
        preds, refs = random_corpus(7, 25)
        refs = [r[:1] for r in refs]
    else:
        preds, refs = ["a red circle", "a blue square on green"], [["a red circle"], ["blue square", "green"]]
    expected, got = coco(preds, refs), ours(preds, refs)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-6, rel=1e-6), name
    if case.startswith("random"):
        # The cases must exercise the metrics, not compare zeros.
        assert got["bleu4"] > 0.05 and got["cider_d"] > 0.1 and got["rouge_l"] > 0.1


def test_identical_captions_score_high_and_disjoint_score_zero():
    refs = [["a red circle on blue"], ["the green star shines"], ["coffee with friends today"]]
    perfect = ours([r[0] for r in refs], refs)
    assert perfect["bleu4"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["cider_d"] > 5
    disjoint = ours(["zebra xylophone", "quantum", "yodel yodel"], refs)
    assert disjoint["cider_d"] == 0 and disjoint["rouge_l"] == 0 and disjoint["bleu4"] < 1e-6


def test_tokenisation_is_documented_rule():
    assert tokenize("Sunset vibes!! #GoldenHour") == ["sunset", "vibes", "goldenhour"]
    assert tokenize("Don't stop, creator’s café 🌅") == ["dont", "stop", "creators", "café"]
    assert tokenize("snake_case and 3D-printed") == ["snake", "case", "and", "3d", "printed"]
    # Punctuation and case never change a score.
    assert cider_d(["A RED circle!!!"], [["a red circle"]]) == cider_d(["a red circle"], [["a red circle"]])


def test_empty_prediction_scores_zero_not_error():
    refs = [["a red circle"], ["a blue square"]]
    scores = ours(["", "a blue square"], refs)
    assert 0 < scores["rouge_l"] < 1 and scores["cider_d"] >= 0
    assert ours(["", ""], refs) == {"cider_d": 0.0, "bleu4": pytest.approx(0.0, abs=1e-6), "rouge_l": 0.0}


@pytest.mark.parametrize("metric", [bleu4, rouge_l, cider_d])
def test_bad_input_raises_clear_errors(metric):
    with pytest.raises(ValueError, match="empty set"):
        metric([], [])
    with pytest.raises(ValueError, match="pair up"):
        metric(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="no non-empty reference"):
        metric(["a cat"], [["", "!!!"]])
    with pytest.raises(TypeError, match="list of strings"):
        metric(["a cat"], ["a cat"])


def test_hashtag_prf_known_values():
    # Image 1: predicted {sunset, beach, love}, reference {sunset, beach, summer, ocean}: 2 hits.
    # Image 2: predicted {coffee, monday}, reference {coffee}: 1 hit. Duplicate/case/'#' variants
    # of one tag count once.
    got = hashtag_prf(
        [["#Sunset", "beach", "#love", "#sunset"], ["#coffee", "#MONDAY"]],
        [["#sunset", "#beach", "#summer", "#ocean"], ["Coffee"]],
    )
    assert got["precision"] == pytest.approx(3 / 5)
    assert got["recall"] == pytest.approx(3 / 5)
    assert got["f1"] == pytest.approx(3 / 5)
    got = hashtag_prf([["#a1", "#b1"]], [["#a1", "#b1", "#c1", "#d1"]])
    assert (got["precision"], got["recall"]) == (1.0, 0.5)
    assert got["f1"] == pytest.approx(2 / 3)


def test_hashtag_prf_edge_cases():
    assert hashtag_prf([[]], [["#sun"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert hashtag_prf([["#sun"]], [[]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="empty set"):
        hashtag_prf([], [])
    with pytest.raises(ValueError, match="1 predicted hashtag lists but 2"):
        hashtag_prf([["#a"]], [["#a"], ["#b"]])
    with pytest.raises(TypeError, match="list of hashtags"):
        hashtag_prf(["#sunset #beach"], [["#sunset"]])


def test_length_stats_known_values():
    captions = ["one", "one two", "one two three", "one two three four", "one, two, three, four, five!"]
    stats = length_stats(captions)
    assert stats["words_mean"] == 3.0 and stats["words_median"] == 3.0
    assert stats["words_min"] == 1.0 and stats["words_max"] == 5.0
    assert stats["words_p90"] == pytest.approx(4.6)  # numpy.percentile([1,2,3,4,5], 90)
    assert stats["chars_min"] == 3.0 and stats["chars_max"] == len("one, two, three, four, five!")
    assert length_stats([""])["words_max"] == 0.0
    with pytest.raises(ValueError, match="empty list"):
        length_stats([])


def rows():
    return [
        PredictionRow(
            "img-1",
            "Golden hour at the beach!",
            "Golden hour on the beach",
            ("#goldenhour", "#beach"),
            ("#GoldenHour", "#sunset"),
            "A beach at sunset.",
            "The sun sets over a sandy beach.",
            extra_references=("Beach sunset",),
        ),
        PredictionRow(
            "img-2",
            "A red circle on blue.",
            "A red circle on a blue background",
            ("#red", "#circle", "#blue"),
            ("#red", "#circle"),
            "",
            "",
        ),
        PredictionRow(
            "img-3",
            "Coffee first",
            "Coffee first, questions later",
            ("#coffee",),
            ("#coffee", "#monday"),
            "A mug of coffee.",
            "A coffee mug on a desk.",
        ),
    ]


def test_evaluate_returns_flat_named_metrics():
    metrics = evaluate(rows())
    preds = [r.prediction for r in rows()]
    refs = [r.references for r in rows()]
    assert metrics["cider_d"] == pytest.approx(cider_d(preds, refs))
    assert metrics["bleu4"] == pytest.approx(bleu4(preds, refs))
    assert metrics["rouge_l"] == pytest.approx(rouge_l(preds, refs))
    # 4 hits (goldenhour, red, circle, coffee) of 6 predicted and 6 reference tags.
    assert metrics["hashtag_precision"] == pytest.approx(4 / 6)
    assert metrics["hashtag_recall"] == pytest.approx(4 / 6)
    assert metrics["caption_words_mean"] == pytest.approx((5 + 5 + 2) / 3)
    assert metrics["caption_words_max"] == 5.0 and metrics["num_rows"] == 3.0
    # Alt text is scored over the two rows that have a reference alt text.
    assert metrics["alt_text_rouge_l"] == pytest.approx(
        rouge_l(
            ["A beach at sunset.", "A mug of coffee."],
            [["The sun sets over a sandy beach."], ["A coffee mug on a desk."]],
        )
    )
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    with pytest.raises(ValueError, match="empty set"):
        evaluate([])


def test_predictions_table(tmp_path):
    path = write_predictions_table(rows(), tmp_path / "eval" / "predictions.csv")
    with path.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["image_id"] for r in table] == ["img-1", "img-2", "img-3"]
    assert table[0]["prediction"] == "Golden hour at the beach!"
    assert table[0]["reference"] == "Golden hour on the beach"
    assert table[0]["extra_references"] == "Beach sunset"
    assert table[1]["predicted_hashtags"] == "#red #circle #blue"
    # Per-row CIDEr-D uses the set's idf, so the rows average to the corpus score.
    mean = sum(float(r["cider_d"]) for r in table) / 3
    assert mean == pytest.approx(evaluate(rows())["cider_d"], abs=1e-5)


def test_idf_documents_match_pycocoevalcap_with_those_references_as_more_images():
    """Extra idf documents act exactly like more images in coco-caption's df (their own scores
    aside): pycocoevalcap's per-image scores on the original images, with the background
    captions added as images of their own, equal ours with them as ``idf_documents``."""
    preds, refs = random_corpus(11, 30)
    background_preds, background = random_corpus(12, 50)
    gts = {i: [" ".join(tokenize(r)) for r in rs if tokenize(r)] for i, rs in enumerate(refs + background)}
    res = {i: [" ".join(tokenize(p))] for i, p in enumerate(preds + background_preds)}
    _, per_image = Cider().compute_score(gts, res)
    expected = sum(per_image[: len(preds)]) / len(preds)
    assert cider_d(preds, refs, idf_documents=background) == pytest.approx(expected, abs=1e-6, rel=1e-6)
    assert cider_d(preds, refs, idf_documents=[]) == cider_d(preds, refs)
    assert cider_d(preds, refs, idf_documents=background) != pytest.approx(cider_d(preds, refs), abs=1e-3)


def test_a_phrase_every_reference_shares_counts_only_with_a_background_corpus():
    """The retrain proof's situation: creators prefix every caption with one phrase. Scored on
    the references alone that phrase has idf 0, so a model that adopts it gains nothing; with
    captions from the model's usual distribution as background documents it does."""
    scenes = [
        f"a {c} {s} on a {b} background"
        for c in ("red", "blue", "green", "yellow")
        for s in ("circle", "square", "star")
        for b in ("white", "black")
    ]
    refs = [["keep it simple " + s] for s in scenes]
    adopted = ["keep it simple " + s for s in scenes]
    plain = list(scenes)
    background = [[s] for s in scenes * 5]
    without = cider_d(adopted, refs) - cider_d(plain, refs)
    with_corpus = cider_d(adopted, refs, background) - cider_d(plain, refs, background)
    # Without the corpus the copy still wins something (the length penalty, and the n-grams
    # across "simple a ..." are rarer), but the phrase's own words carry no weight.
    assert with_corpus > 2.0 and with_corpus > 2 * without


def test_idf_documents_must_be_lists_of_captions():
    with pytest.raises(TypeError, match="idf_documents"):
        cider_d(["a"], [["a"]], idf_documents="a red circle")
    with pytest.raises(TypeError, match="idf document 0"):
        cider_d(["a"], [["a"]], idf_documents=["a red circle"])
