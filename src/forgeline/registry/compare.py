"""Two models scored on the same rows, compared with paired tests.

A number stored on the champion's version was scored on its own (possibly different) split, so after
retraining on new data it says nothing about the challenger. Both models predict the same test rows
instead, and the decision uses

- a paired bootstrap confidence interval of the task's primary metric, challenger − champion (macro-F1
  for classification, RMSE for regression: ``Task.resampled``): the rows are resampled together, so row
  difficulty cancels out, and
- where rows are right or wrong (single-label), McNemar's exact test on the rows where exactly one of
  the two is right.

Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from forgeline.inference.tasks import OutputSpec
from forgeline.tasks import Task


def _resamples(n: int, n_boot: int, seed: int):
    """Bootstrap resamples of n rows as row-count weights, 250 at a time (memory: 250 × n counts)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, 250):
        k = min(250, n_boot - start)
        picks = rng.integers(0, n, size=(k, n)) + (np.arange(k) * n)[:, None]
        yield np.bincount(picks.ravel(), minlength=k * n).reshape(k, n)


@dataclass
class PairedComparison:
    n: int
    challenger_value: float
    champion_value: float
    diff: float
    """challenger − champion, the metric on the same rows."""
    ci_low: float
    ci_high: float
    confidence: float
    bootstrap_samples: int
    metric: str = "macro_f1"
    only_champion_right: int | None = None
    only_challenger_right: int | None = None
    mcnemar_p: float | None = None
    """Exact two-sided McNemar p-value: could the disagreements split this way by chance? None where the
    task has no per-row right or wrong (regression)."""

    def to_dict(self) -> dict:
        return asdict(self)


def compare_outputs(task: Task, spec: OutputSpec, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray,
                    n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """Paired bootstrap CI of the difference of the task's primary metric (``Task.resampled``: the rows
    are resampled together, so row difficulty cancels out) and, where the task has per-row correctness,
    McNemar's exact test on the rows where exactly one of the two is right."""
    from scipy.stats import binomtest

    a, b = np.asarray(challenger), np.asarray(champion)
    if not (len(y) == len(a) == len(b)) or len(y) == 0:
        raise ValueError(f"need the same non-empty rows for both models; got {len(y)}, {len(a)}, {len(b)}")
    n = len(y)
    diffs = np.concatenate([task.resampled(y, a, spec, w) - task.resampled(y, b, spec, w)
                            for w in _resamples(n, n_boot, seed)])
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    ones = np.ones((1, n))
    fa, fb = float(task.resampled(y, a, spec, ones)[0]), float(task.resampled(y, b, spec, ones)[0])
    out = PairedComparison(n=n, challenger_value=fa, champion_value=fb, diff=fa - fb, ci_low=float(low),
                           ci_high=float(high), confidence=confidence, bootstrap_samples=n_boot, metric=task.primary.name)
    right_a, right_b = task.correct(y, a, spec), task.correct(y, b, spec)
    if right_a is not None and right_b is not None and task.paired_test:
        only_b, only_a = int(np.sum(right_b & ~right_a)), int(np.sum(right_a & ~right_b))
        out.only_champion_right, out.only_challenger_right = only_b, only_a
        out.mcnemar_p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return out


def metric_ci(task: Task, spec: OutputSpec, y: np.ndarray, outputs: np.ndarray, n_boot: int = 2000, confidence: float = 0.95,
              seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of one model's primary metric on these rows (for the model card)."""
    values = np.concatenate([task.resampled(y, outputs, spec, w) for w in _resamples(len(y), n_boot, seed)])
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def slice_rows(task: Task, spec: OutputSpec, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None,
               texts: list[str], columns: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """Both models per slice of the same rows: the task's target slices (each class's or label's F1),
    text-length tertiles of these rows and each value of the user's ``data.slice_columns`` (the task's
    ``subset_metric``: accuracy for single-label, the primary metric otherwise). ``drop`` = how much worse
    the challenger is there (positive: worse; relative for RMSE/MAE); None without a champion."""
    a = np.asarray(challenger)
    b = None if champion is None else np.asarray(champion)
    rows: list[dict[str, Any]] = []
    higher = task.primary.higher_is_better if task.subset_metric == task.primary.name else True

    def add(name: str, mask: np.ndarray, metric: str, score, higher_is_better: bool = True) -> None:
        n = int(mask.sum())
        if n == 0:
            return
        ours = float(score(a, mask))
        theirs = None if b is None else float(score(b, mask))
        drop = None
        if theirs is not None:
            drop = (theirs - ours) if higher_is_better else ((ours - theirs) / abs(theirs) if theirs else ours - theirs)
        rows.append({"slice": name, "n": n, "metric": metric, "challenger": ours, "champion": theirs, "drop": drop})

    for name, mask, metric, score in task.group_slices(y, spec):
        add(name, mask, metric, lambda out, m, f=score: f(out))
    subset = lambda out, m: task.subset_score(y, out, spec, m)  # noqa: E731
    lengths = np.array([len(t) for t in texts])
    q1, q2 = (int(v) for v in np.quantile(lengths, [1 / 3, 2 / 3], method="lower"))  # bounds: real lengths
    for name, mask in ((f"length<={q1}", lengths <= q1), (f"length {q1 + 1}-{q2}", (lengths > q1) & (lengths <= q2)),
                       (f"length>{q2}", lengths > q2)):
        add(name, mask, task.subset_metric, subset, higher)
    for column, values in (columns or {}).items():
        vals = np.array(["<missing>" if v is None else str(v) for v in values], dtype=object)
        for value in sorted(set(vals)):
            add(f"{column}={value}", vals == value, task.subset_metric, subset, higher)
    return rows


def worst_slice(rows: list[dict[str, Any]], max_drop: float | None, min_rows: int) -> dict[str, Any] | None:
    """The slice (with at least ``min_rows`` rows) that drops most beyond ``max_drop``, if any."""
    if max_drop is None:
        return None
    over = [r for r in rows if r["drop"] is not None and r["n"] >= min_rows and r["drop"] > max_drop]
    return max(over, key=lambda r: r["drop"]) if over else None
