"""The task seam: what a task declares, and what every stage asks of it.

A task (``forgeline.tasks.single_label`` and its siblings) is one subclass of ``Task``: its targets and
their quarantine rules, how the split is stratified, its loss and distillation loss, its metrics with
one primary metric and its direction, the primary metric per bootstrap resample (the gate's paired
test), its trivial and classical baselines, its slices, its target-drift profile and its options. The
torch-free half of a task, how a registered model reads its logits, is its ``OutputSpec`` subclass
(``forgeline.inference.tasks``, the ``outputs`` attribute), built here by ``output_spec`` and shipped in
the bundle. Stages call these methods instead of assuming labels and
macro-F1 (docs/architecture.md: how to add a task).
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast

import numpy as np
import pandas as pd
from pydantic import ValidationError

from forgeline.config.section import Section
from forgeline.inference.tasks import OutputSpec


@dataclass
class EvalResult:
    """A model's test metrics (``metrics``) and, for tasks with classes, per-class numbers and the
    confusion matrix; ``artifacts``: the report files."""

    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)


class Problem:
    """A target cell that cannot be used: its quarantine ``reason`` (a key of the task's ``reasons``). Not a
    ``str`` subclass: pandas turns a column of strings into its string dtype and the marker would be lost."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return self.reason == (other.reason if isinstance(other, Problem) else other)

    def __hash__(self) -> int:
        return hash(self.reason)

    def __repr__(self) -> str:
        return f"Problem({self.reason!r})"


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool = True
    relative_drop: bool = False
    """Drops (compression budgets, slices) measured as a fraction of the reference value: RMSE has the
    target's units, which no fixed number fits."""

    def worse_by(self, new: float, reference: float) -> float:
        """How much worse ``new`` is than ``reference`` (negative: better), in this metric's units or,
        with ``relative_drop``, as a fraction of ``reference``."""
        drop = (reference - new) if self.higher_is_better else (new - reference)
        if self.relative_drop:
            return drop / abs(reference) if reference else (0.0 if drop == 0 else float("inf") * np.sign(drop))
        return drop

    def best(self, values: list[float]) -> int:
        return int(np.argmax(values) if self.higher_is_better else np.argmin(values))

    @property
    def title(self) -> str:
        """The name as messages write it."""
        return TITLES.get(self.name, self.name)

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


TITLES = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "samples_f1": "samples-F1", "rmse": "RMSE", "mae": "MAE",
          "subset_accuracy": "subset accuracy"}


class TaskOptions(Section):
    """A task's own options (``task.<name>`` keys), declared beside its class; a task with none keeps this."""


S = TypeVar("S", bound=OutputSpec)
"""A task's ``OutputSpec`` class: its methods take and return that class (its fields are typed)."""


class Task(Generic[S]):
    type: ClassVar[str]
    """The ``task.type`` name (shadows the builtin inside this class body: ``builtins.type`` below)."""
    outputs: ClassVar[builtins.type[OutputSpec]]
    """The torch-free half: how a registered model's logits are read (``forgeline.inference.tasks``)."""
    Options: ClassVar[builtins.type[TaskOptions]] = TaskOptions
    """The ``task.*`` keys this task takes besides ``type`` and ``primary_metric``."""
    auto_model: ClassVar[str] = "AutoModelForSequenceClassification"
    """The transformers class of its model (one set of logits per text, or per word piece)."""
    problem_type: ClassVar[str | None] = None
    """transformers' ``problem_type`` (its own loss is never used, but a reader of config.json expects it)."""
    transfer_rows: ClassVar[bool] = False
    """Whether ``compress.distill_transfer_rows`` and its siblings (rows outside the sample) apply."""
    file_shape: ClassVar[str] = "table"
    """How its data files are read (``data.load.READERS``): a table of a text and a target per row, or
    ``sentences`` (CoNLL, JSON Lines of tokens and tags or of texts and spans)."""
    metrics_known: ClassVar[dict[str, Metric]]
    """Every metric ``metrics`` returns that can be the primary one (``task.primary_metric``)."""
    default_primary: ClassVar[str]
    reasons: ClassVar[dict[str, str]] = {}
    """Quarantine reasons of this task's targets → what they mean."""
    paired_test: ClassVar[str | None] = None
    """The test on per-row correctness the gate adds to the bootstrap (McNemar), or None where rows
    have no single right or wrong."""
    has_classes: ClassVar[bool] = True
    min_labels: ClassVar[int] = 2
    """Distinct labels the valid rows must hold (one suffices where a row can have none of them)."""

    def __init__(self, primary: str | None = None, **options: Any) -> None:
        from forgeline.errors import ConfigError

        name = primary or self.default_primary
        if name not in self.metrics_known:
            raise ConfigError(f"task.primary_metric {name!r} is not a metric of task {self.type!r}; "
                              f"use one of {sorted(self.metrics_known)}")
        self.primary = self.metrics_known[name]
        try:
            self.options = self.Options(**options)
        except ValidationError as e:
            raise ConfigError(f"task {self.type}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from e

    # --- data ------------------------------------------------------------------------------------
    @classmethod
    def recognise(cls, cells: pd.Series) -> str | None:
        """Why a target column's cells (nulls dropped, at least one) look like this task's targets, or None
        (``forgeline run --data`` infers the task from the first task in ``TASKS`` that says so)."""
        return None

    @classmethod
    def inferred_problem(cls, cells: pd.Series) -> str | None:
        """Why a target column inferred as this task's cannot train it, or None (the message follows
        "the target column 'NAME' ")."""
        return None

    def parse_target(self, value: Any, delimiter: str | None) -> Any:
        """A raw target cell → the target (a label, a tuple of labels, a float) or a ``Problem``.
        None stays None (``null_label``)."""
        raise NotImplementedError

    def column_problem(self, raw: pd.Series, column: Any) -> str | None:
        """A whole target column of the wrong shape for this task (lists for a single label, text for
        regression): the message that says which task fits, or None."""
        return None

    def target_labels(self, target: Any) -> tuple[str, ...]:
        """The class or label names a parsed target holds (``data.labels`` checks these)."""
        return target if isinstance(target, tuple) else (target,)

    def labels_from(self, targets: pd.Series, declared: list[str] | None) -> list[str]:
        """Class or label names (regression: the target's name, set by the caller)."""
        raise NotImplementedError

    def rows_per_class(self, targets: pd.Series, labels: list[str]) -> dict[str, int]:
        """Rows holding each class or label; empty for regression (no classes)."""
        return {}

    def strata(self, targets: pd.Series, labels: list[str], rows_needed: int, why: str = "the split") -> np.ndarray | None:
        """A key per row the split stratifies on (None: a random split); ``why``: what needs
        ``rows_needed`` rows per key, for an error that says so."""
        return None

    # --- model -----------------------------------------------------------------------------------
    def output_spec(self, labels: list[str], train_targets: pd.Series, pairs: bool) -> S:
        return cast(S, self.outputs(labels=tuple(labels), pairs=pairs))

    def logits_of(self, outputs: np.ndarray, spec: S):
        """Back from outputs to the loss's input (a torch tensor), for the validation loss."""
        raise NotImplementedError

    def y(self, targets: pd.Series | list, spec: S) -> np.ndarray:
        """Targets as the metrics take them: class ids, a multi-hot matrix, floats in the target's units."""
        raise NotImplementedError

    def train_y(self, targets: pd.Series | list, spec: S) -> np.ndarray:
        """Targets as the loss takes them (regression: standardised)."""
        return self.y(targets, spec)

    def encode_train(self, tokenizer, texts: list[str], targets, spec: S, max_length: int):
        """(token ids per example, the loss's target per example) for training; token classification
        overrides it with per-piece labels and windows (``None``: the loop encodes texts itself)."""
        return None

    def init_head(self, model, train_y: np.ndarray) -> None:
        """Set the output layer's starting point from the training targets (multi-label: each label's
        prior); most tasks start from the base model's initialisation."""

    def loss(self, logits, y, reduction: str = "mean"):
        """Loss per example, averaged (``mean``) or summed (``sum``, for DDP shares)."""
        raise NotImplementedError

    def distill_loss(self, student_logits, teacher_logits, y, temperature: float, alpha: float):
        raise NotImplementedError

    def tune(self, spec: S, y_val: np.ndarray, outputs_val: np.ndarray) -> S:
        """Decision settings chosen on the validation split (multi-label thresholds); the spec as it is
        for tasks with none."""
        return spec

    # --- evaluation ------------------------------------------------------------------------------
    def metrics(self, y: np.ndarray, outputs: np.ndarray, spec: S) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, y: np.ndarray, outputs: np.ndarray, spec: S, out_dir: Path, name: str = "test") -> EvalResult:
        """Metrics plus a report file under ``out_dir`` (tasks with classes add per-class numbers and plots)."""
        return self.report(EvalResult(metrics=self.metrics(y, outputs, spec)), out_dir, name)

    def report(self, result: EvalResult, out_dir: Path, name: str, **extra: Any) -> EvalResult:
        """``result`` with its ``<name>_report.json`` (the metrics and ``extra`` tables) written to ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}_report.json"
        path.write_text(json.dumps({"task": self.type, "metrics": result.metrics, **extra}, indent=2))
        result.artifacts = [path]
        return result

    def resampled(self, y: np.ndarray, outputs: np.ndarray, spec: S, weights: np.ndarray) -> np.ndarray:
        """The primary metric once per row of ``weights`` (B × n bootstrap row counts)."""
        raise NotImplementedError

    def correct(self, y: np.ndarray, outputs: np.ndarray, spec: S) -> np.ndarray | None:
        """Per row, whether the model got it right (for ``paired_test``); None without such a notion."""
        return None

    def baseline(self, y: np.ndarray, spec: S) -> tuple[float, str]:
        """The primary metric of guessing without reading the text, and what that guess is."""
        raise NotImplementedError

    def fit_classical(self, spec: S, train: Any, val: Any) -> Any:
        """The run's classical baseline (``tasks.classical.ClassicalFit``) fitted on ``train`` with its
        setting chosen on ``val`` (``TextRows``), or None where the task has none yet. Raises
        ``tasks.classical.ClassicalError`` when it cannot be fitted on these rows."""
        return None

    def prior_baseline(self, spec: S) -> tuple[float, str] | None:
        """``baseline`` where no rows are at hand (stored metrics only), or None where it needs rows."""
        return None

    def budget(self, cfg: Any) -> list[tuple[Metric, float]]:
        """The compression budget from a ``CompressConfig``: (metric, largest allowed drop) pairs.
        ``max_metric_drop`` on the primary metric, by default ``max_macro_f1_drop`` for F1-type metrics
        and 5 % for relative ones (RMSE, MAE)."""
        if cfg.max_metric_drop is not None:
            return [(self.primary, cfg.max_metric_drop)]
        return [(self.primary, 0.05 if self.primary.relative_drop else cfg.max_macro_f1_drop)]

    def metrics_table(self, metrics: dict[str, float]) -> list[str]:
        """The test metrics as a Markdown table (the run summary)."""
        return ["| " + " | ".join(metrics) + " |", "|" + "---:|" * len(metrics),
                "| " + " | ".join(f"{v:.4f}" for v in metrics.values()) + " |"]

    def group_slices(self, y: np.ndarray, spec: S) -> list[tuple[str, np.ndarray, str, Any]]:
        """Slices by target: (name, row mask, metric name, score(outputs) -> float)."""
        return []

    @property
    def subset_metric(self) -> str:
        return self.primary.name

    def subset_score(self, y: np.ndarray, outputs: np.ndarray, spec: S, mask: np.ndarray) -> float:
        """The primary metric on the rows of ``mask`` (length and ``data.slice_columns`` slices)."""
        w = mask.astype(np.float64)[None, :]
        return float(self.resampled(y, outputs, spec, w)[0])

    # --- drift -----------------------------------------------------------------------------------
    def target_profile(self, targets: pd.Series, labels: list[str]) -> dict[str, Any]:
        """The training targets' distribution, kept for ``forgeline drift``."""
        raise NotImplementedError

    def target_drift(self, reference: dict[str, Any], current: dict[str, Any], alpha: float, threshold: float) -> dict[str, Any]:
        """Effect size, p-value and reasons of a change in the target's distribution."""
        raise NotImplementedError

    def served_profile(self, decisions: list[str | None], reference: dict[str, Any]) -> dict[str, Any]:
        """What the model's answers on served traffic (the traffic log's ``label`` column) say about the
        target, in ``target_profile``'s keys; empty where answers are no stand-in for targets (a
        classifier's labels are checked on labelled data only)."""
        return {}

    def describe_targets(self) -> str:
        """The target column's shape, for README-style messages."""
        raise NotImplementedError


def as_text(value: Any) -> str | None:
    """A cell as the string it shows (integers without ``.0``), None for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_listlike(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def output_layer(model, width: int):
    """The model's last Linear layer with ``width`` outputs (BERT's ``classifier``, RoBERTa's
    ``classifier.out_proj``), or None."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == width]
    return layers[-1] if layers else None
