"""Two models scored on the same rows, compared with paired tests.

The gate used to compare the challenger's test macro-F1 with the number stored on the champion's
version, which the champion scored on its own (possibly different) split: after retraining on new
data that difference says nothing. Here both predict the same test rows, and the decision uses

- a paired bootstrap confidence interval of macro-F1(challenger) − macro-F1(champion): the rows are
  resampled together, so row difficulty cancels out, and
- McNemar's exact test on the rows where exactly one of the two is right.

Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def macro_f1(y: np.ndarray, pred: np.ndarray, n_labels: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Macro-F1 over ``n_labels`` classes; with ``weights`` (B × n row counts) one value per row of
    weights, i.e. per bootstrap resample, in a few matrix products. Classes absent from both truth and
    prediction are left out, as scikit-learn leaves them out when ``labels`` is not given."""
    y, pred = np.asarray(y), np.asarray(pred)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    onehot_true = (y[:, None] == np.arange(n_labels)[None, :]).astype(np.float64)
    onehot_pred = (pred[:, None] == np.arange(n_labels)[None, :]).astype(np.float64)
    tp = w @ (onehot_true * onehot_pred)
    denom = w @ onehot_true + w @ onehot_pred
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    out = f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return out if weights is not None else out[0]


@dataclass
class PairedComparison:
    n: int
    challenger_macro_f1: float
    champion_macro_f1: float
    diff: float
    """challenger − champion, macro-F1 on the same rows."""
    ci_low: float
    ci_high: float
    confidence: float
    bootstrap_samples: int
    only_champion_right: int
    only_challenger_right: int
    mcnemar_p: float
    """Exact two-sided McNemar p-value: could the disagreements split this way by chance?"""

    def to_dict(self) -> dict:
        return asdict(self)


def compare_paired(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, n_labels: int,
                   n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """Paired bootstrap CI of the macro-F1 difference and McNemar's exact test, on one set of rows."""
    from scipy.stats import binomtest

    y, a, b = (np.asarray(v) for v in (y, challenger, champion))
    if not (len(y) == len(a) == len(b)) or len(y) == 0:
        raise ValueError(f"need the same non-empty rows for both models; got {len(y)}, {len(a)}, {len(b)}")
    n = len(y)
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n_boot, 250):  # 250 resamples at a time: memory stays at 250 × n row counts
        k = min(250, n_boot - start)
        picks = rng.integers(0, n, size=(k, n)) + (np.arange(k) * n)[:, None]
        weights = np.bincount(picks.ravel(), minlength=k * n).reshape(k, n)
        diffs.append(macro_f1(y, a, n_labels, weights) - macro_f1(y, b, n_labels, weights))
    diffs = np.concatenate(diffs)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    only_b = int(np.sum((b == y) & (a != y)))
    only_a = int(np.sum((a == y) & (b != y)))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    fa, fb = float(macro_f1(y, a, n_labels)), float(macro_f1(y, b, n_labels))
    return PairedComparison(n=n, challenger_macro_f1=fa, champion_macro_f1=fb, diff=fa - fb, ci_low=float(low),
                            ci_high=float(high), confidence=confidence, bootstrap_samples=n_boot,
                            only_champion_right=only_b, only_challenger_right=only_a, mcnemar_p=p)
