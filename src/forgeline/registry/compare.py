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
from typing import Any

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


def _resamples(n: int, n_boot: int, seed: int):
    """Bootstrap resamples of n rows as row-count weights, 250 at a time (memory: 250 × n counts)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, 250):
        k = min(250, n_boot - start)
        picks = rng.integers(0, n, size=(k, n)) + (np.arange(k) * n)[:, None]
        yield np.bincount(picks.ravel(), minlength=k * n).reshape(k, n)


def macro_f1_ci(y: np.ndarray, pred: np.ndarray, n_labels: int, n_boot: int = 2000, confidence: float = 0.95,
                seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of one model's macro-F1 on these rows (for the model card)."""
    y, pred = np.asarray(y), np.asarray(pred)
    values = np.concatenate([macro_f1(y, pred, n_labels, w) for w in _resamples(len(y), n_boot, seed)])
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


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
    diffs = np.concatenate([macro_f1(y, a, n_labels, w) - macro_f1(y, b, n_labels, w)
                            for w in _resamples(n, n_boot, seed)])
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    only_b = int(np.sum((b == y) & (a != y)))
    only_a = int(np.sum((a == y) & (b != y)))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    fa, fb = float(macro_f1(y, a, n_labels)), float(macro_f1(y, b, n_labels))
    return PairedComparison(n=n, challenger_macro_f1=fa, champion_macro_f1=fb, diff=fa - fb, ci_low=float(low),
                            ci_high=float(high), confidence=confidence, bootstrap_samples=n_boot,
                            only_champion_right=only_b, only_challenger_right=only_a, mcnemar_p=p)


def _class_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    denom = int(np.sum(y == k) + np.sum(pred == k))
    return 2.0 * int(np.sum((y == k) & (pred == k))) / denom if denom else 0.0


def slice_table(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, labels: list[str],
                texts: list[str], columns: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """Both models per slice of the same rows: each class (its F1), text-length tertiles of these rows,
    and each value of the user's ``data.slice_columns`` (accuracy). ``drop`` = champion − challenger
    (positive: the challenger is worse there); None without a champion."""
    y, a = np.asarray(y), np.asarray(challenger)
    b = None if champion is None else np.asarray(champion)
    rows: list[dict[str, Any]] = []

    def add(name: str, mask: np.ndarray, metric: str, score) -> None:
        n = int(mask.sum())
        if n == 0:
            return
        ours = float(score(a))
        theirs = None if b is None else float(score(b))
        rows.append({"slice": name, "n": n, "metric": metric, "challenger": ours, "champion": theirs,
                     "drop": None if theirs is None else theirs - ours})

    for k, label in enumerate(labels):
        add(f"class={label}", y == k, "f1", lambda p, k=k: _class_f1(y, p, k))
    lengths = np.array([len(t) for t in texts])
    q1, q2 = (int(v) for v in np.quantile(lengths, [1 / 3, 2 / 3], method="lower"))  # bounds: real lengths
    for name, mask in ((f"length<={q1}", lengths <= q1), (f"length {q1 + 1}-{q2}", (lengths > q1) & (lengths <= q2)),
                       (f"length>{q2}", lengths > q2)):
        add(name, mask, "accuracy", lambda p, m=mask: float(np.mean(p[m] == y[m])))
    for column, values in (columns or {}).items():
        vals = np.array(["<missing>" if v is None else str(v) for v in values], dtype=object)
        for value in sorted(set(vals)):
            mask = vals == value
            add(f"{column}={value}", mask, "accuracy", lambda p, m=mask: float(np.mean(p[m] == y[m])))
    return rows


def worst_slice(rows: list[dict[str, Any]], max_drop: float | None, min_rows: int) -> dict[str, Any] | None:
    """The slice (with at least ``min_rows`` rows) that drops most beyond ``max_drop``, if any."""
    if max_drop is None:
        return None
    over = [r for r in rows if r["drop"] is not None and r["n"] >= min_rows and r["drop"] > max_drop]
    return max(over, key=lambda r: r["drop"]) if over else None
