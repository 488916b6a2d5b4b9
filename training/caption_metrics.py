"""Caption evaluation: BLEU-4, ROUGE-L, CIDEr-D, hashtag precision/recall/F1, caption length
statistics, the alt-text lint pass rate, and the predictions table saved with every evaluation.

Pure Python (no MLflow, no numpy), so the retrain gate's numbers can be recomputed anywhere.

The three caption metrics follow the MS-COCO caption evaluation code (coco-caption, packaged
as pycocoevalcap) exactly, quirks included, and tests check them against it on the same
tokens:
- BLEU-4: corpus-level, "closest" reference length for the brevity penalty, the same 1e-15 /
  1e-9 smoothing (so a corpus without any 4-gram match scores ~0 instead of failing).
- ROUGE-L: per caption the LCS F-measure (beta 1.2) against the best-matching reference's
  precision and recall, averaged over captions.
- CIDEr-D: n-grams 1..4, tf-idf with document frequencies taken from the references of the
  evaluated set (coco-caption's "corpus" mode) or, with ``idf_documents``, from those plus a
  background corpus (the role of coco-caption's precomputed "coco-val-df"), candidate counts clipped at the reference's, a Gaussian length penalty with
  sigma 6, averaged over references and n, times 10. Like coco-caption, the length entering
  the penalty is the number of bigrams (words - 1): it only differs from a word count for an
  empty or one-word caption.

Tokenisation, the same for all three (coco-caption runs Stanford's PTB tokenizer, a Java
program; this is the plain-Python equivalent for our captions): Unicode NFKC, lowercase;
apostrophes inside a word are dropped ("don't" -> "dont", "creator's" -> "creators"); every
other character that is not a letter or digit (punctuation, '#', emoji, whitespace)
separates words and is dropped. So "Sunset vibes!! #GoldenHour" -> ["sunset", "vibes",
"goldenhour"].
"""

from __future__ import annotations

import csv
import math
import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from snap2caption_service.core.alt_text import pass_rate as alt_text_pass_rate
from snap2caption_service.core.hashtags import normalize_hashtag

MAX_N = 4
CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2
_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9

_APOSTROPHES = re.compile(r"(?<=[^\W_])['\u2019](?=[^\W_])")
_WORDS = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """The words of a caption as every metric here sees them (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _WORDS.findall(_APOSTROPHES.sub("", text))


# --- input checks -------------------------------------------------------------------------


def _check_corpus(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> list[tuple[list[str], list[list[str]]]]:
    """Tokenised (prediction, references) pairs; a clear error for anything unscorable."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be lists (one entry per image), not a string")
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} reference lists; they must pair up one to one"
        )
    if not predictions:
        raise ValueError("cannot score an empty set: no predictions were given")
    pairs = []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise TypeError(f"prediction {i} is {type(pred).__name__}, expected str")
        if isinstance(refs, str):
            raise TypeError(f"references of item {i} must be a list of strings, got a string")
        tokenised_refs = [tokenize(r) for r in refs]
        tokenised_refs = [r for r in tokenised_refs if r]
        if not tokenised_refs:
            raise ValueError(f"item {i} has no non-empty reference caption; every item needs at least one")
        pairs.append((tokenize(pred), tokenised_refs))
    return pairs


def _ngrams(words: list[str], n_max: int = MAX_N) -> Counter:
    counts: Counter = Counter()
    for n in range(1, n_max + 1):
        for i in range(len(words) - n + 1):
            counts[tuple(words[i : i + n])] += 1
    return counts


# --- BLEU-4 -------------------------------------------------------------------------------


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus-level BLEU-4 in [0, 1], as coco-caption computes it."""
    pairs = _check_corpus(predictions, references)
    guess, correct = [0] * MAX_N, [0] * MAX_N
    test_len = ref_len = 0
    for pred, refs in pairs:
        max_ref_counts: dict[tuple, int] = {}
        for ref in refs:
            for gram, count in _ngrams(ref).items():
                max_ref_counts[gram] = max(max_ref_counts.get(gram, 0), count)
        for gram, count in _ngrams(pred).items():
            correct[len(gram) - 1] += min(max_ref_counts.get(gram, 0), count)
        for k in range(MAX_N):
            guess[k] += max(0, len(pred) - k)
        test_len += len(pred)
        # "closest": the reference length nearest the prediction's, the shorter on a tie.
        ref_len += min((abs(len(r) - len(pred)), len(r)) for r in refs)[1]
    product = 1.0
    for k in range(MAX_N):
        product *= (correct[k] + _BLEU_TINY) / (guess[k] + _BLEU_SMALL)
    score = product ** (1.0 / MAX_N)
    ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return score


# --- ROUGE-L ------------------------------------------------------------------------------


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def _rouge_l_one(pred: list[str], refs: list[list[str]]) -> float:
    if not pred:
        return 0.0
    lcs = [_lcs(r, pred) for r in refs]
    prec = max(l / len(pred) for l in lcs)
    rec = max(l / len(r) for l, r in zip(lcs, refs))
    if prec == 0 or rec == 0:
        return 0.0
    return (1 + ROUGE_BETA**2) * prec * rec / (rec + ROUGE_BETA**2 * prec)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean per-caption ROUGE-L F-measure (beta 1.2) in [0, 1], as coco-caption computes it."""
    pairs = _check_corpus(predictions, references)
    return sum(_rouge_l_one(p, r) for p, r in pairs) / len(pairs)


# --- CIDEr-D ------------------------------------------------------------------------------


def cider_d(
    predictions: Sequence[str], references: Sequence[Sequence[str]], idf_documents: Sequence[Sequence[str]] = ()
) -> float:
    """Corpus CIDEr-D (mean over images; 0 to ~10, higher is better), as coco-caption computes it.

    The idf comes from this set's references, each image's references counting as one
    document, plus ``idf_documents`` (more documents, each a list of captions) when given.
    Scores are comparable only between models evaluated on the same set with the same
    documents: exactly what the registry gate compares.

    Why a background corpus: with the set's own references only, an n-gram that every
    reference shares has idf log(N/N) = 0. A correction creators make to every caption (a
    house phrase) is such an n-gram, so adopting it would earn nothing. Captions from the
    model's usual distribution, added as documents, give it the weight of a rare phrase.
    """
    scores = _cider_scores(_check_corpus(predictions, references), _tokenised_documents(idf_documents))
    return sum(scores) / len(scores)


def _tokenised_documents(documents: Sequence[Sequence[str]]) -> list[list[list[str]]]:
    if isinstance(documents, str):
        raise TypeError("idf_documents must be a list of documents (each a list of captions), not a string")
    out = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            raise TypeError(f"idf document {i} must be a list of captions, got a string")
        out.append([t for t in map(tokenize, doc) if t])
    return out


def _cider_scores(
    pairs: list[tuple[list[str], list[list[str]]]], extra_documents: list[list[list[str]]] = ()
) -> list[float]:
    """Each image's CIDEr-D, with document frequencies from the whole set's references (and
    any extra documents)."""
    doc_freq: Counter = Counter()
    documents = [refs for _, refs in pairs] + list(extra_documents)
    for refs in documents:
        doc_freq.update({gram for ref in refs for gram in _ngrams(ref)})
    log_num_docs = math.log(len(documents))

    def tfidf(words: list[str]):
        vec: list[dict[tuple, float]] = [{} for _ in range(MAX_N)]
        norm = [0.0] * MAX_N
        for gram, tf in _ngrams(words).items():
            n = len(gram) - 1
            w = tf * (log_num_docs - math.log(max(1.0, doc_freq[gram])))
            vec[n][gram] = w
            norm[n] += w * w
        # coco-caption's "length" counts bigrams; kept for identical scores (module docstring).
        return vec, [math.sqrt(x) for x in norm], max(0, len(words) - 1)

    scores = []
    for pred, refs in pairs:
        vec, norm, length = tfidf(pred)
        per_n = [0.0] * MAX_N
        for ref in refs:
            vec_r, norm_r, length_r = tfidf(ref)
            penalty = math.exp(-((length - length_r) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(MAX_N):
                # Clipping: a candidate n-gram earns at most the reference's own weight.
                val = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec[n].items())
                if norm[n] != 0 and norm_r[n] != 0:
                    val /= norm[n] * norm_r[n]
                per_n[n] += val * penalty
        scores.append(sum(per_n) / MAX_N / len(refs) * 10.0)
    return scores


# --- hashtags -----------------------------------------------------------------------------


def _tag_set(tags: Sequence[str], where: str) -> set[str]:
    if isinstance(tags, str):
        raise TypeError(f"{where} must be a list of hashtags, got the string {tags!r}")
    # The product's own rule ('#Red-Circle' == 'redcircle'); tags it would never emit
    # (empty, digits only) are dropped on both sides rather than counted as misses.
    return {t for t in (normalize_hashtag(str(raw)) for raw in tags) if t}


def hashtag_prf(predicted: Sequence[Sequence[str]], reference: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged hashtag precision, recall and F1 over the set.

    Case-insensitive, '#' optional, duplicates within one image counted once. With nothing
    predicted (or nothing to recall) the undefined ratio is 0.0, not an error.
    """
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted hashtag lists but {len(reference)} reference lists")
    if not predicted:
        raise ValueError("cannot score an empty set: no hashtag lists were given")
    hits = n_pred = n_ref = 0
    for i, (pred, ref) in enumerate(zip(predicted, reference)):
        p, r = _tag_set(pred, f"predicted hashtags of item {i}"), _tag_set(ref, f"reference hashtags of item {i}")
        hits += len(p & r)
        n_pred += len(p)
        n_ref += len(r)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# --- length statistics --------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(ordered),
        "median": float(statistics.median(ordered)),
        "p90": _percentile(ordered, 0.9),
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
    }


def length_stats(captions: Sequence[str]) -> dict[str, float]:
    """Caption lengths in words (tokenize()'s words) and in characters (of the stripped text):
    ``{"words_mean", "words_median", "words_p90", "words_min", "words_max", "chars_..."}``."""
    if isinstance(captions, str):
        raise TypeError("length_stats takes a list of captions, not one string")
    if not captions:
        raise ValueError("cannot compute length statistics of an empty list of captions")
    words = _stats([len(tokenize(c)) for c in captions])
    chars = _stats([len(c.strip()) for c in captions])
    return {**{f"words_{k}": v for k, v in words.items()}, **{f"chars_{k}": v for k, v in chars.items()}}


# --- one evaluation over a prediction table ----------------------------------------------


@dataclass(frozen=True)
class PredictionRow:
    """One evaluated image: what the model said and what it should have said."""

    image_id: str
    prediction: str
    reference: str
    predicted_hashtags: tuple[str, ...] = ()
    reference_hashtags: tuple[str, ...] = ()
    predicted_alt_text: str = ""
    reference_alt_text: str = ""
    # More reference captions for the same image (CIDEr-D's consensus is meant for several).
    extra_references: tuple[str, ...] = ()

    @property
    def references(self) -> list[str]:
        return [self.reference, *self.extra_references]


def evaluate(rows: Sequence[PredictionRow], idf_documents: Sequence[Sequence[str]] = ()) -> dict[str, float]:
    """Every metric over a set of predictions, under flat names (what MLflow logs and the gate
    compares): cider_d, bleu4, rouge_l, hashtag_precision, hashtag_recall, hashtag_f1,
    caption_words_{mean,median,p90,min,max}, caption_chars_*, reference_words_mean, num_rows;
    alt_text_lint_pass, the share of predicted alt texts that break no accessibility rule
    (snap2caption_service/core/alt_text.py; every row: it needs no reference); and
    alt_text_cider_d / alt_text_rouge_l / alt_text_bleu4 over the rows that have a reference
    alt text (absent when none has). ``idf_documents`` feed the caption CIDEr-D's
    document frequencies (see ``cider_d``); ``idf_documents`` reports how many there were.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("cannot evaluate an empty set of predictions")
    for i, row in enumerate(rows):
        if not isinstance(row, PredictionRow):
            raise TypeError(f"row {i} is {type(row).__name__}, expected PredictionRow")
    predictions = [r.prediction for r in rows]
    references = [r.references for r in rows]
    metrics = {
        "cider_d": cider_d(predictions, references, idf_documents),
        "bleu4": bleu4(predictions, references),
        "rouge_l": rouge_l(predictions, references),
    }
    tags = hashtag_prf([list(r.predicted_hashtags) for r in rows], [list(r.reference_hashtags) for r in rows])
    metrics.update({f"hashtag_{k}": v for k, v in tags.items()})
    metrics.update({f"caption_{k}": v for k, v in length_stats(predictions).items()})
    metrics["reference_words_mean"] = statistics.fmean(len(tokenize(r.reference)) for r in rows)
    metrics["alt_text_lint_pass"] = alt_text_pass_rate([r.predicted_alt_text for r in rows])
    with_alt = [r for r in rows if tokenize(r.reference_alt_text)]
    if with_alt:
        alt_pred = [r.predicted_alt_text for r in with_alt]
        alt_ref = [[r.reference_alt_text] for r in with_alt]
        metrics.update(
            {
                "alt_text_cider_d": cider_d(alt_pred, alt_ref),
                "alt_text_bleu4": bleu4(alt_pred, alt_ref),
                "alt_text_rouge_l": rouge_l(alt_pred, alt_ref),
            }
        )
    metrics["num_rows"] = len(rows)
    metrics["idf_documents"] = len(idf_documents)
    return {name: float(value) for name, value in metrics.items()}


TABLE_COLUMNS = (
    "image_id",
    "prediction",
    "reference",
    "predicted_hashtags",
    "reference_hashtags",
    "predicted_alt_text",
    "reference_alt_text",
    "extra_references",
    "cider_d",
    "rouge_l",
)


def write_predictions_table(
    rows: Sequence[PredictionRow], path: str | Path, idf_documents: Sequence[Sequence[str]] = ()
) -> Path:
    """The evaluated predictions as CSV with a header, one row per image, with each caption's
    own CIDEr-D and ROUGE-L so the worst captions can be sorted to the top. Hashtags are
    space-separated; extra references are joined with ' ||| '."""
    rows = list(rows)
    if not rows:
        raise ValueError("cannot write a predictions table without rows")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    per_cider = _cider_scores(
        _check_corpus([r.prediction for r in rows], [r.references for r in rows]), _tokenised_documents(idf_documents)
    )
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(TABLE_COLUMNS)
        for row, cider in zip(rows, per_cider):
            rouge = _rouge_l_one(tokenize(row.prediction), [t for t in map(tokenize, row.references) if t])
            writer.writerow(
                [
                    row.image_id,
                    row.prediction,
                    row.reference,
                    " ".join(row.predicted_hashtags),
                    " ".join(row.reference_hashtags),
                    row.predicted_alt_text,
                    row.reference_alt_text,
                    " ||| ".join(row.extra_references),
                    f"{cider:.6f}",
                    f"{rouge:.6f}",
                ]
            )
    return path
