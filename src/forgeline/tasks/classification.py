"""Single-label test metrics: accuracy, macro P/R/F1, ROC-AUC (one-vs-rest), per-class report, confusion PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from forgeline.tasks.base import EvalResult


def compute_metrics(y_true: np.ndarray, proba: np.ndarray, labels: list[str]) -> EvalResult:
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    pred = proba.argmax(axis=1)
    ids = list(range(len(labels)))
    p, r, f1, _ = precision_recall_fscore_support(y_true, pred, labels=ids, average="macro", zero_division=0)
    metrics: dict[str, float] = {
        "accuracy": float(accuracy_score(y_true, pred)),
        "macro_precision": float(p),
        "macro_recall": float(r),
        "macro_f1": float(f1),
    }
    present = np.unique(y_true)
    if len(present) == len(labels):
        if len(labels) == 2:
            metrics["roc_auc_ovr"] = float(roc_auc_score(y_true, proba[:, 1]))
        else:
            norm = proba / proba.sum(axis=1, keepdims=True)
            metrics["roc_auc_ovr"] = float(roc_auc_score(y_true, norm, multi_class="ovr", labels=ids))
    report: dict[str, Any] = classification_report(
        y_true, pred, labels=ids, target_names=labels, output_dict=True, zero_division=0
    )
    per_class = {lab: {k: float(v) for k, v in report[lab].items()} for lab in labels}
    cm = confusion_matrix(y_true, pred, labels=ids).tolist()
    return EvalResult(metrics=metrics, per_class=per_class, confusion=cm)


def plot_confusion(confusion: list[list[int]], labels: list[str], path: Path, title: str = "Confusion matrix") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(labels), 1.2 + 1.0 * len(labels)), dpi=110)
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > peak / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_probabilities(y_true: np.ndarray, proba: np.ndarray, labels: list[str], out_dir: Path,
                           name: str = "test") -> EvalResult:
    """Metrics plus report files (per-class JSON, confusion PNG) under ``out_dir``."""
    import json

    result = compute_metrics(y_true, proba, labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / f"{name}_classification_report.json"
    report_path.write_text(json.dumps({"metrics": result.metrics, "per_class": result.per_class,
                                       "confusion_matrix": result.confusion, "labels": labels}, indent=2))
    png = plot_confusion(result.confusion, labels, out_dir / f"{name}_confusion_matrix.png", f"Confusion matrix ({name})")
    result.artifacts = [report_path, png]
    return result
