"""Paired comparison of two models on the same rows, on constructed cases with known answers."""

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from forgeline.tasks.metrics import macro_f1
from tests.registry.class_ids import compare_paired


def test_macro_f1_matches_scikit_learn_and_weights_are_resamples():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    assert macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, average="macro"))
    idx = rng.integers(0, 300, 300)
    weights = np.bincount(idx, minlength=300)[None, :]
    assert macro_f1(y, p, 4, weights)[0] == pytest.approx(f1_score(y[idx], p[idx], average="macro"))


def test_a_clearly_worse_challenger_on_the_same_rows():
    y = np.array([0, 1] * 100)
    champion = y.copy()
    champion[:20] = 1 - champion[:20]  # wrong on rows 0-19
    challenger = y.copy()
    challenger[20:60] = 1 - challenger[20:60]  # wrong on rows 20-59
    r = compare_paired(y, challenger, champion, 2, n_boot=4000, seed=1)
    assert (r.only_champion_right, r.only_challenger_right, r.n) == (40, 20, 200)
    assert r.mcnemar_p == pytest.approx(binomtest(20, 60, 0.5).pvalue) and r.mcnemar_p < 0.05
    assert r.challenger_value == pytest.approx(0.8, abs=1e-3) and r.champion_value == pytest.approx(0.9, abs=1e-3)
    assert r.ci_low < r.diff < r.ci_high < 0  # the interval is entirely below zero


def test_identical_predictions_have_a_zero_width_interval_and_p_one():
    y = np.array([0, 1, 2] * 30)
    pred = np.roll(y, 1)
    r = compare_paired(y, pred, pred, 3)
    assert r.diff == 0 and r.ci_low == 0 and r.ci_high == 0 and r.mcnemar_p == 1.0


def test_rows_must_match():
    with pytest.raises(ValueError, match="same non-empty rows"):
        compare_paired(np.array([0, 1]), np.array([0]), np.array([0, 1]), 2)


def test_slice_table_on_a_constructed_case():
    """120 rows, two classes; the challenger is wrong on every long `neg` text from source "forum",
    the champion always right: the table names exactly those slices, with the known scores."""
    from forgeline.registry.compare import worst_slice
    from tests.registry.class_ids import slice_table

    y = np.array([0, 1] * 60)
    texts = ["short"] * 40 + ["a medium text"] * 40 + ["a rather long text, as forum posts are"] * 40
    source = ["shop"] * 80 + ["forum"] * 40
    champion = y.copy()
    challenger = y.copy()
    challenger[80:][y[80:] == 0] = 1  # 20 long negatives wrong
    rows = {r["slice"]: r for r in slice_table(y, challenger, champion, ["neg", "pos"], texts, {"source": source})}
    assert set(rows) == {"class=neg", "class=pos", "length<=5", "length 6-13", "length>13", "source=forum", "source=shop"}
    assert rows["source=forum"] == {"slice": "source=forum", "n": 40, "metric": "accuracy", "challenger": 0.5,
                                    "champion": 1.0, "drop": 0.5}
    assert rows["source=shop"]["drop"] == 0.0 and rows["length<=5"]["drop"] == 0.0
    assert rows["class=neg"]["challenger"] == pytest.approx(2 * 40 / (60 + 40))  # tp 40, 60 true, 40 predicted
    assert worst_slice(list(rows.values()), 0.1, 30)["slice"] in {"source=forum", "length>13"}
    assert worst_slice(list(rows.values()), 0.1, 41) is not None  # class=neg has 60 rows and drops 0.2
    assert worst_slice(list(rows.values()), 0.6, 30) is None and worst_slice(list(rows.values()), None, 1) is None
    alone = slice_table(y, challenger, None, ["neg", "pos"], texts)
    assert all(r["champion"] is None and r["drop"] is None for r in alone) and len(alone) == 5
