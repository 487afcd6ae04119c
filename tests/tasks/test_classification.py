import numpy as np
import pytest

from forgeline.tasks.classification import compute_metrics, evaluate_probabilities


def test_metrics_match_hand_computed_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.1, .7, .2], [.1, .1, .8], [.2, .1, .7]])
    r = compute_metrics(y, proba, ["a", "b", "c"])
    assert r.metrics["accuracy"] == pytest.approx(5 / 6)
    # a: P=1 R=.5, b: P=2/3 R=1, c: P=1 R=1
    assert r.metrics["macro_precision"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert r.metrics["macro_recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert r.confusion == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]
    assert 0.5 < r.metrics["roc_auc_ovr"] <= 1.0
    assert r.per_class["b"]["recall"] == pytest.approx(1.0)


def test_binary_auc_uses_positive_class():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[.9, .1], [.6, .4], [.3, .7], [.45, .55]])
    assert compute_metrics(y, proba, ["neg", "pos"]).metrics["roc_auc_ovr"] == pytest.approx(1.0)


def test_auc_skipped_when_a_class_is_absent():
    r = compute_metrics(np.array([0, 0]), np.array([[.9, .1], [.8, .2]]), ["neg", "pos"])
    assert "roc_auc_ovr" not in r.metrics


def test_report_files_written(tmp_path):
    y = np.array([0, 1, 1, 0])
    proba = np.array([[.9, .1], [.2, .8], [.6, .4], [.7, .3]])
    r = evaluate_probabilities(y, proba, ["neg", "pos"], tmp_path, "test")
    png = tmp_path / "test_confusion_matrix.png"
    assert png in r.artifacts and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "test_classification_report.json").exists()
