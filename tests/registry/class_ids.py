"""The gate's comparisons for callers that hold single-label class ids (the tests' constructed cases)."""

from __future__ import annotations

from typing import Any

import numpy as np

from forgeline.inference.tasks import SingleLabelOutputs
from forgeline.registry.compare import PairedComparison, compare_outputs, slice_rows
from forgeline.tasks import get_task


def _onehot(pred: np.ndarray, n_labels: int) -> np.ndarray:
    return np.eye(n_labels, dtype=np.float32)[np.asarray(pred, dtype=np.int64)]


def compare_paired(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, n_labels: int,
                   n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """``compare_outputs`` of single-label predictions: macro-F1 and McNemar."""
    spec = SingleLabelOutputs(tuple(str(i) for i in range(n_labels)))
    return compare_outputs(get_task("single_label"), spec, np.asarray(y), _onehot(challenger, n_labels),
                           _onehot(champion, n_labels), n_boot, confidence, seed)


def slice_table(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, labels: list[str],
                texts: list[str], columns: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """``slice_rows`` of single-label predictions."""
    k = len(labels)
    return slice_rows(get_task("single_label"), SingleLabelOutputs(tuple(labels)), np.asarray(y), _onehot(challenger, k),
                      None if champion is None else _onehot(champion, k), texts, columns)
