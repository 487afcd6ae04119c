"""Text regression: one number per text (a rating, a confidence, a priority). The model predicts the
standardised target (MSE or Huber loss); the bundle ships the scale, so scores come out in the
target's units."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import model_validator

from forgeline.inference.tasks import RegressionOutputs
from forgeline.tasks.base import Metric, Problem, Task, TaskOptions, as_text, is_listlike

REGRESSION_MIN_DISTINCT = 20
"""Distinct numbers a target column needs for ``forgeline run --data`` to infer regression (fewer read
as class ids)."""


class RegressionOptions(TaskOptions):
    loss: Literal["mse", "huber"] = "mse"
    """The training loss: mean squared error, or Huber (less pulled by outlying targets)."""
    standardize: bool = True
    """Train on the standardised target (the mean and scale ship in the bundle)."""
    min_value: float | None = None
    """Rows whose target is below this are quarantined (``target_out_of_range``)."""
    max_value: float | None = None
    """Rows whose target is above this are quarantined (``target_out_of_range``)."""

    @model_validator(mode="after")
    def _range(self) -> "RegressionOptions":
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise ValueError("task.min_value must be <= task.max_value")
        return self


class Regression(Task[RegressionOutputs]):
    type = "regression"
    metrics_known = {"rmse": Metric("rmse", higher_is_better=False, relative_drop=True),
                     "mae": Metric("mae", higher_is_better=False, relative_drop=True)}
    default_primary = "rmse"
    reasons = {"target_not_numeric": "the target is not a number",
               "target_not_finite": "the target is NaN or infinite",
               "target_out_of_range": "the target is outside task.min_value … task.max_value"}
    has_classes = False
    outputs = RegressionOutputs
    Options = RegressionOptions
    problem_type = "regression"

    options: RegressionOptions

    def __init__(self, primary: str | None = None, **options: Any) -> None:
        super().__init__(primary, **options)
        o = self.options
        self.loss_kind, self.min_value, self.max_value, self.standardize = o.loss, o.min_value, o.max_value, o.standardize

    @classmethod
    def recognise(cls, cells: pd.Series) -> str | None:
        numbers = pd.to_numeric(cells.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
        distinct = int(numbers.nunique())
        if numbers.notna().mean() > 0.95 and distinct >= REGRESSION_MIN_DISTINCT:
            return f"cells are numbers ({distinct} distinct values)"
        return None

    def parse_target(self, value: Any, delimiter: str | None) -> Any:
        if is_listlike(value) or isinstance(value, bool):
            return Problem("target_not_numeric")
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return None  # a missing cell (pandas reads an empty one as NaN): null_label, as for every task
        text = value if isinstance(value, (int, float)) else as_text(value)
        if text is None or (isinstance(text, str) and not text.strip()):
            return None
        try:
            number = float(text.strip()) if isinstance(text, str) else float(text)
        except (TypeError, ValueError, OverflowError):
            return Problem("target_not_numeric")
        if not math.isfinite(number):
            return Problem("target_not_finite")
        if (self.min_value is not None and number < self.min_value) or (self.max_value is not None and number > self.max_value):
            return Problem("target_out_of_range")
        return number

    def column_problem(self, raw: pd.Series, column: Any) -> str | None:
        cells = raw.dropna()
        if not len(cells):
            return None
        parsed = cells.map(lambda v: self.parse_target(v, None))
        text = parsed.map(lambda v: isinstance(v, Problem) and v.reason == "target_not_numeric").astype(bool)
        if text.mean() > 0.5:
            example = cells[text].iloc[0]
            listed = bool(cells.map(is_listlike).mean() > 0.5)
            return (f"column {column!r} holds " + ("lists" if listed else f"text (e.g. {str(example)[:40]!r})")
                    + ", not numbers, but task.type is regression: point data.label_column at a numeric column, or set "
                    + ("task.type=multi_label" if listed else "task.type=single_label for labels"))
        return None

    def labels_from(self, targets: pd.Series, declared: list[str] | None) -> list[str]:
        return []

    def strata(self, targets: pd.Series, labels: list[str], rows_needed: int, why: str = "the split") -> np.ndarray | None:
        """Quantile bins of the target (as many as keep ``rows_needed`` rows each, at most 10)."""
        values = np.asarray(targets, dtype=np.float64)
        bins = int(min(10, len(values) // max(rows_needed, 1)))
        if bins < 2:
            return None
        return pd.qcut(pd.Series(values).rank(method="first"), bins, labels=False).to_numpy()

    def output_spec(self, labels: list[str], train_targets: pd.Series, pairs: bool) -> RegressionOutputs:
        values = np.asarray(train_targets, dtype=np.float64)
        mean, scale = (float(values.mean()), float(values.std())) if self.standardize else (0.0, 1.0)
        return RegressionOutputs(tuple(labels), mean=mean, scale=scale if scale > 0 else 1.0, pairs=pairs)

    def fit_classical(self, spec, train, val):
        from forgeline.tasks.classical import fit_ridge

        return fit_ridge(self, spec, train, val)

    def logits_of(self, outputs: np.ndarray, spec: RegressionOutputs):
        import torch

        return torch.from_numpy((np.asarray(outputs, dtype=np.float64) - spec.mean) / spec.scale)

    def y(self, targets, spec: RegressionOutputs) -> np.ndarray:
        return np.asarray(list(targets), dtype=np.float64)

    def train_y(self, targets, spec: RegressionOutputs) -> np.ndarray:
        return ((self.y(targets, spec) - spec.mean) / spec.scale).astype(np.float32)

    def loss(self, logits, y, reduction: str = "mean"):
        import torch

        pred = logits.float()[:, 0]
        fn = torch.nn.functional.huber_loss if self.loss_kind == "huber" else torch.nn.functional.mse_loss
        return fn(pred, y.float(), reduction=reduction)

    def distill_loss(self, student_logits, teacher_logits, y, temperature: float, alpha: float):
        """alpha · MSE(student, teacher) + (1 − alpha) · loss(student, y), in standardised units
        (no temperature: there is no distribution to soften)."""
        import torch

        soft = torch.nn.functional.mse_loss(student_logits.float()[:, 0], teacher_logits.float()[:, 0])
        return alpha * soft + (1 - alpha) * self.loss(student_logits, y)

    def metrics(self, y, outputs, spec: RegressionOutputs) -> dict[str, float]:
        from scipy.stats import spearmanr

        y, pred = np.asarray(y, dtype=np.float64), np.asarray(outputs, dtype=np.float64)[:, 0]
        err = pred - y
        sst = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
        out = {"rmse": float(np.sqrt(np.mean(err ** 2))) if len(y) else float("nan"),
               "mae": float(np.mean(np.abs(err))) if len(y) else float("nan"),
               "r2": 1.0 - float((err ** 2).sum()) / sst if sst > 0 else float("nan")}
        if len(y) > 2 and np.ptp(y) > 0 and np.ptp(pred) > 0:
            out["spearman"] = float(spearmanr(y, pred).statistic)
        return out

    def resampled(self, y, outputs, spec: RegressionOutputs, weights: np.ndarray) -> np.ndarray:
        err = np.asarray(outputs, dtype=np.float64)[:, 0] - np.asarray(y, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        n = np.maximum(w.sum(axis=1), 1)
        if self.primary.name == "mae":
            return (w @ np.abs(err)) / n
        return np.sqrt((w @ (err ** 2)) / n)

    def baseline(self, y, spec: RegressionOutputs) -> tuple[float, str]:
        """Predicting the training mean for every row."""
        y = np.asarray(y, dtype=np.float64)
        const = np.full((len(y), 1), spec.mean)
        return float(self.resampled(y, const, spec, np.ones((1, len(y))))[0]), f"the training mean ({spec.mean:.4g}) for every row"

    def target_profile(self, targets: pd.Series, labels: list[str]) -> dict[str, Any]:
        values = np.asarray(targets, dtype=np.float64)
        sample = np.sort(values)[np.linspace(0, len(values) - 1, min(len(values), 2000)).astype(int)] if len(values) else values
        return {"target_sample": [float(v) for v in sample], "target_mean": float(values.mean()) if len(values) else 0.0,
                "target_std": float(values.std()) if len(values) else 0.0}

    def describe_targets(self) -> str:
        return "a number per row"
