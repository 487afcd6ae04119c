"""Paired comparison of two models on the same rows, on constructed cases with known answers."""

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from forgeline.registry.compare import compare_paired, macro_f1


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
    assert r.challenger_macro_f1 == pytest.approx(0.8, abs=1e-3) and r.champion_macro_f1 == pytest.approx(0.9, abs=1e-3)
    assert r.ci_low < r.diff < r.ci_high < 0  # the interval is entirely below zero


def test_identical_predictions_have_a_zero_width_interval_and_p_one():
    y = np.array([0, 1, 2] * 30)
    pred = np.roll(y, 1)
    r = compare_paired(y, pred, pred, 3)
    assert r.diff == 0 and r.ci_low == 0 and r.ci_high == 0 and r.mcnemar_p == 1.0


def test_rows_must_match():
    with pytest.raises(ValueError, match="same non-empty rows"):
        compare_paired(np.array([0, 1]), np.array([0]), np.array([0, 1]), 2)
