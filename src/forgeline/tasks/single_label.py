"""Single-label classification: one class per text (softmax, cross-entropy). forgeline's first task;
its numbers (macro-F1 primary, McNemar beside the bootstrap, chance = 1/K) are those of the pipeline
before tasks existed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forgeline.inference.tasks import SingleLabelOutputs
from forgeline.tasks.metrics import macro_f1
from forgeline.tasks.base import EvalResult, Metric, Problem, Task, as_text, is_listlike


class SingleLabel(Task[SingleLabelOutputs]):
    type = "single_label"
    metrics_known = {"macro_f1": Metric("macro_f1"), "accuracy": Metric("accuracy")}
    default_primary = "macro_f1"
    reasons = {"list_label": "the label cell holds a list; a single-label task takes one label per row"}
    paired_test = "McNemar"
    outputs = SingleLabelOutputs
    problem_type = "single_label_classification"
    transfer_rows = True

    @classmethod
    def inferred_problem(cls, cells: pd.Series) -> str | None:
        from forgeline.tasks.regression import REGRESSION_MIN_DISTINCT

        distinct = cells.map(str).nunique()
        if distinct >= REGRESSION_MIN_DISTINCT and distinct > 0.5 * len(cells):
            return (f"holds {distinct} distinct values in {len(cells)} rows: too many to be classes (each needs rows to "
                    "learn from). Name the target with --label-column; for numbers with a few non-numeric cells, clean "
                    "them (a numeric column trains regression)")
        return None

    def parse_target(self, value: Any, delimiter: str | None) -> Any:
        if is_listlike(value):
            return Problem("list_label")
        text = as_text(value)
        return None if text is None else text.strip() or None

    def column_problem(self, raw: pd.Series, column: Any) -> str | None:
        cells = raw.dropna()
        if len(cells) and cells.map(is_listlike).mean() > 0.5:
            return (f"column {column!r} holds lists of labels, but task.type is single_label (one label per row): "
                    "set task.type=multi_label")
        return None

    def labels_from(self, targets: pd.Series, declared: list[str] | None) -> list[str]:
        return list(declared) if declared else sorted({str(t) for t in targets})

    def rows_per_class(self, targets: pd.Series, labels: list[str]) -> dict[str, int]:
        return {str(k): int(v) for k, v in targets.value_counts().sort_index().items()}

    def strata(self, targets: pd.Series, labels: list[str], rows_needed: int, why: str = "the split") -> np.ndarray:
        """The label; a class with fewer than ``rows_needed`` rows cannot be split (validation checks this
        first, ``load_and_validate(split=...)``; kept for direct callers)."""
        from forgeline.errors import DataValidationError

        counts = targets.value_counts()
        tiny = counts[counts < rows_needed]
        if len(tiny):
            raise DataValidationError(
                f"{len(tiny)} class(es) have fewer than the {rows_needed} rows that {why} need for a stratified "
                "split: " + ", ".join(f"{lab!r} has {int(n)}" for lab, n in tiny.items())
                + ". Add rows of those classes, or raise split.val_fraction / split.test_fraction")
        return np.asarray(targets)

    def fit_classical(self, spec, train, val):
        from forgeline.tasks.classical import fit_logistic

        return fit_logistic(self, spec, train, val)

    def logits_of(self, outputs: np.ndarray, spec: SingleLabelOutputs):
        import torch

        return torch.from_numpy(np.log(np.clip(np.asarray(outputs, dtype=np.float64), 1e-12, None)))

    def y(self, targets, spec: SingleLabelOutputs) -> np.ndarray:
        index = {lab: i for i, lab in enumerate(spec.labels)}
        return np.array([index[t] for t in targets], dtype=np.int64)

    def loss(self, logits, y, reduction: str = "mean"):
        import torch

        return torch.nn.functional.cross_entropy(logits.float(), y, reduction=reduction)

    def distill_loss(self, student_logits, teacher_logits, y, temperature: float, alpha: float):
        """alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student, y) (Hinton et al. 2015)."""
        import torch

        t = temperature
        soft = torch.nn.functional.kl_div(torch.log_softmax(student_logits / t, -1), torch.log_softmax(teacher_logits / t, -1),
                                          reduction="batchmean", log_target=True) * (t * t)
        return alpha * soft + (1 - alpha) * torch.nn.functional.cross_entropy(student_logits, y)

    def metrics(self, y: np.ndarray, outputs: np.ndarray, spec: SingleLabelOutputs) -> dict[str, float]:
        from forgeline.tasks.classification import compute_metrics

        return compute_metrics(y, outputs, list(spec.labels)).metrics

    def evaluate(self, y, outputs, spec: SingleLabelOutputs, out_dir: Path, name: str = "test") -> EvalResult:
        from forgeline.tasks.classification import evaluate_probabilities

        return evaluate_probabilities(y, outputs, list(spec.labels), out_dir, name)

    def resampled(self, y, outputs, spec: SingleLabelOutputs, weights: np.ndarray) -> np.ndarray:
        pred = np.asarray(outputs).argmax(axis=1)
        if self.primary.name == "accuracy":
            w = np.asarray(weights, dtype=np.float64)
            return (w @ (pred == np.asarray(y)).astype(np.float64)) / np.maximum(w.sum(axis=1), 1)
        return macro_f1(y, pred, len(spec.labels), weights)

    def correct(self, y, outputs, spec: SingleLabelOutputs) -> np.ndarray:
        return np.asarray(outputs).argmax(axis=1) == np.asarray(y)

    def baseline(self, y, spec: SingleLabelOutputs) -> tuple[float, str]:
        """Macro-F1 1/K: guessing at random by the class frequencies (each class scores F1 = its
        frequency); always predicting the most frequent class, or guessing uniformly, scores less."""
        k = len(spec.labels)
        if self.primary.name == "accuracy":
            counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=k)
            return float(counts.max() / max(counts.sum(), 1)), "always the most frequent class"
        return 1.0 / k, "chance"

    def prior_baseline(self, spec: SingleLabelOutputs) -> tuple[float, str] | None:
        return self.baseline(np.zeros(0, dtype=np.int64), spec)

    def budget(self, cfg: Any) -> list[tuple[Metric, float]]:
        """``max_accuracy_drop`` and ``max_macro_f1_drop`` (or ``max_metric_drop`` on the primary metric,
        when set)."""
        if cfg.max_metric_drop is not None:
            return [(self.primary, cfg.max_metric_drop)]
        return [(Metric("accuracy"), cfg.max_accuracy_drop), (Metric("macro_f1"), cfg.max_macro_f1_drop)]

    def metrics_table(self, metrics: dict[str, float]) -> list[str]:
        m = metrics
        return ["| accuracy | macro P | macro R | macro F1 | ROC-AUC (OvR) |", "|---:|---:|---:|---:|---:|",
                f"| {m['accuracy']:.4f} | {m['macro_precision']:.4f} | {m['macro_recall']:.4f} | {m['macro_f1']:.4f} | "
                f"{m.get('roc_auc_ovr', float('nan')):.4f} |"]

    def group_slices(self, y, spec: SingleLabelOutputs):
        y = np.asarray(y)

        def class_f1(k: int):
            def score(outputs: np.ndarray, m=None) -> float:
                pred = np.asarray(outputs).argmax(axis=1)
                denom = int(np.sum(y == k) + np.sum(pred == k))
                return 2.0 * int(np.sum((y == k) & (pred == k))) / denom if denom else 0.0
            return score

        return [(f"class={label}", y == k, "f1", class_f1(k)) for k, label in enumerate(spec.labels)]

    def subset_score(self, y, outputs, spec: SingleLabelOutputs, mask: np.ndarray) -> float:
        """Accuracy on the rows (as the slice table always reported it)."""
        return float(np.mean(np.asarray(outputs)[mask].argmax(axis=1) == np.asarray(y)[mask]))

    subset_metric = "accuracy"

    def target_profile(self, targets: pd.Series, labels: list[str]) -> dict[str, Any]:
        counts = targets.value_counts()
        return {"label_distribution": {lab: float(counts.get(lab, 0) / max(len(targets), 1)) for lab in labels}}

    def describe_targets(self) -> str:
        return "one label per row (a string or an integer)"
