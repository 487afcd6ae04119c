"""Metric functions more than one task, or the gate's resamples, share: numpy only."""

from __future__ import annotations

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
