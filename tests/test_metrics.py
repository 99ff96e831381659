"""ROUGE against values computed with Google's rouge-score 0.1.2 (RougeScorer(["rouge1", "rouge2", "rougeL"]), no stemming)."""

import importlib.util
import math

import pytest

from mlxtune.metrics import lcs_length, marker_scores, rouge, rouge_l, rouge_n, rouge_tokens, style_markers

# (prediction, reference, F-measures rouge1/rouge2/rougeL, precisions rouge1/rouge2/rougeL), from rouge-score 0.1.2
KNOWN = [
    ("The cat sat on the mat.", "the cat was sitting on a mat", (0.615384615385, 0.181818181818, 0.615384615385), (0.666666666667, 0.2, 0.666666666667)),
    (
        "Customer: Dana Ortiz (Pro plan). Issue: invoices show the wrong VAT rate. Resolution: rate corrected; credit note issued.",
        "Customer: Dana Ortiz, Pro plan. Issue: wrong VAT rate on invoices since March. Resolution: corrected the rate and issued a credit note.",
        (0.85, 0.421052631579, 0.65),
        (0.944444444444, 0.470588235294, 0.722222222222),
    ),
    ("a b a b a", "b a b", (0.75, 0.666666666667, 0.75), (0.6, 0.5, 0.6)),  # clipped counts; LCS of repeats
    ("Café au lait — déjà vu; naïve résumé!", "cafe au lait deja vu naive resume", (0.352941176471, 0.133333333333, 0.352941176471), (0.3, 0.111111111111, 0.3)),
    ("", "nothing here", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("x y z", "x y z", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    ("1,000 users on 3.2.1", "1000 users on version 3 2 1", (0.714285714286, 0.5, 0.714285714286), (0.714285714286, 0.5, 0.714285714286)),
]


@pytest.mark.parametrize("prediction,reference,f,p", KNOWN)
def test_rouge_matches_rouge_score(prediction, reference, f, p):
    scores = (rouge_n(prediction, reference, 1), rouge_n(prediction, reference, 2), rouge_l(prediction, reference))
    assert [s.fmeasure for s in scores] == pytest.approx(f, abs=1e-11)
    assert [s.precision for s in scores] == pytest.approx(p, abs=1e-11)


def test_tokens_and_lcs():
    assert rouge_tokens("Don't STOP-now, 3.5x!") == ["don", "t", "stop", "now", "3", "5x"]
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example
    assert lcs_length([], ["a"]) == 0


def test_mean_over_pairs():
    out = rouge(["x y z", "a b a b a"], ["x y z", "b a b"])
    assert out == pytest.approx({"rouge1": (1 + 0.75) / 2, "rouge2": (1 + 2 / 3) / 2, "rougeL": (1 + 0.75) / 2})
    with pytest.raises(ValueError):
        rouge(["a"], [])


@pytest.mark.skipif(importlib.util.find_spec("rouge_score") is None, reason="rouge-score not installed (the frozen values above still run)")
def test_random_texts_against_rouge_score():
    import random

    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rng = random.Random(0)
    words = "the a cat dog sat ran on under mat rug quickly 42 x-ray Zoë".split()
    for _ in range(200):
        pred = " ".join(rng.choice(words) for _ in range(rng.randint(0, 15)))
        ref = " ".join(rng.choice(words) for _ in range(rng.randint(0, 15)))
        theirs = scorer.score(ref, pred)
        assert rouge_n(pred, ref, 1).fmeasure == pytest.approx(theirs["rouge1"].fmeasure, abs=1e-12)
        assert rouge_n(pred, ref, 2).fmeasure == pytest.approx(theirs["rouge2"].fmeasure, abs=1e-12)
        assert rouge_l(pred, ref).fmeasure == pytest.approx(theirs["rougeL"].fmeasure, abs=1e-12)


def test_style_markers_are_the_shared_phrases():
    answers = [
        "Hey friends,\nBees dance to share where flowers are.\nQuick tip: plant lavender.\nStay curious,\nMira",
        "Hey friends,\nTides rise twice a day.\nQuick tip: check a tide table.\nStay curious,\nMira",
        "Hey friends,\nPencils hold graphite, not lead.\nStay curious,\nMira",
        "Hello there. The moon is not made of cheese.",
    ]
    markers = style_markers(answers, min_share=0.5)
    assert markers == ["hey friends", "stay curious mira", "quick tip"]  # most shared first; 'the', 'to' are not markers
    scores = marker_scores(["Hey friends! Quick tip: stay curious, Mira.", "Dear all, stay tuned.", ""], markers)
    assert scores == [1.0, 0.0, 0.0]
    assert marker_scores(["Hey friendship"], ["hey friends"]) == [0.0]  # whole words only
    assert style_markers(["the cat", "a dog"], min_share=0.6) == []  # nothing in common
    assert math.isnan(marker_scores(["x"], [])[0])
