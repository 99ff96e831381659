"""Text metrics for ``mlxtune eval``: ROUGE for summaries, style markers for style.

ROUGE follows Google's ``rouge-score`` package with its defaults (no
stemming): text is lower-cased, every run of characters other than a-z and
0-9 separates tokens (so accented letters and other scripts are dropped, as
there), ROUGE-N counts clipped n-gram overlaps, ROUGE-L is the longest common
subsequence over the whole text (``rougeL``, not the per-line ``rougeLsum``),
and each is reported as an F-measure. tests/test_metrics.py holds these
functions to values computed with rouge-score 0.1.2.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenizer: lower case, split on anything but a-z and 0-9."""
    return [t for t in _NON_ALNUM.sub(" ", text.lower()).split() if t]


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    fmeasure: float


def _score(overlap: float, predicted: int, reference: int) -> Score:
    p = overlap / predicted if predicted else 0.0
    r = overlap / reference if reference else 0.0
    return Score(p, r, 2 * p * r / (p + r) if p + r else 0.0)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(prediction: str, reference: str, n: int) -> Score:
    """ROUGE-N: clipped n-gram overlap between a prediction and its reference."""
    pred, ref = _ngrams(rouge_tokens(prediction), n), _ngrams(rouge_tokens(reference), n)
    overlap = sum(min(c, ref[g]) for g, c in pred.items())
    return _score(overlap, sum(pred.values()), sum(ref.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len a * len b) time, O(len b) memory)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diag = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, 1):
            up = row[j]
            row[j] = diag + 1 if x == y else max(row[j], row[j - 1])
            diag = up
    return row[-1]


def rouge_l(prediction: str, reference: str) -> Score:
    """ROUGE-L: longest common subsequence of the token sequences."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    return _score(lcs_length(pred, ref), len(pred), len(ref))


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over pairs (as rouge-score's users average them)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {"rouge1": math.nan, "rouge2": math.nan, "rougeL": math.nan}
    n = len(predictions)
    return {
        "rouge1": sum(rouge_n(p, r, 1).fmeasure for p, r in zip(predictions, references)) / n,
        "rouge2": sum(rouge_n(p, r, 2).fmeasure for p, r in zip(predictions, references)) / n,
        "rougeL": sum(rouge_l(p, r).fmeasure for p, r in zip(predictions, references)) / n,
    }


# ------------------------------------------------------------------ style

# Words too common to mark a style on their own: a marker must hold at least one other word.
STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been it its this that these those "
    "i you he she we they me him her us them my your his our their not no so do does did have has had will would can "
    "could should there here what which who when where how all any some more most than then too very just also s t".split()
)


def style_markers(answers: list[str], min_share: float = 0.5, max_n: int = 4) -> list[str]:
    """The word n-grams (1..max_n, ROUGE tokens) that at least ``min_share`` of ``answers`` contain.

    An n-gram made of stopwords alone is not a marker, and neither is one
    contained in a longer marker found in as many answers (so "stay curious
    mira" stands for "stay curious" and "mira"). For a voice with a greeting,
    a sign-off and pet phrases these are exactly those; for answers with
    nothing in common the list is empty.
    """
    if not answers:
        return []
    df: Counter = Counter()
    for text in answers:
        tokens = rouge_tokens(text)
        df.update({" ".join(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1)})
    need = min_share * len(answers)
    frequent = {g: c for g, c in df.items() if c >= need and not all(w in STOPWORDS for w in g.split())}
    maximal = [g for g, c in frequent.items() if not any(o != g and frequent[o] == c and f" {g} " in f" {o} " for o in frequent)]
    return sorted(maximal, key=lambda g: (-frequent[g], g))


def marker_scores(texts: list[str], markers: list[str]) -> list[float]:
    """For each text, the share of ``markers`` it contains (as whole words)."""
    if not markers:
        return [math.nan] * len(texts)
    out = []
    for text in texts:
        padded = " " + " ".join(rouge_tokens(text)) + " "
        out.append(sum(f" {m} " in padded for m in markers) / len(markers))
    return out
