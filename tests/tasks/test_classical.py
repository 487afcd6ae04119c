"""The run's classical baselines (TF-IDF + a linear model, tasks/classical.py) on sets with known rules:
each learns its rule, chooses its setting on validation, answers in its task's output form, and a fit
that cannot be made is a ClassicalError."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forgeline.tasks import get_task
from forgeline.tasks.classical import ClassicalError, TextRows
from tests.tasks.test_task_flows import multi_label_rows, pair_rows, regression_rows, rows


def thirds(frame: pd.DataFrame) -> tuple[TextRows, TextRows, TextRows]:
    n = len(frame) // 3
    return TextRows.of(frame.iloc[:n]), TextRows.of(frame.iloc[n: 2 * n]), TextRows.of(frame.iloc[2 * n:])


def single_label_rows() -> pd.DataFrame:
    df = rows()
    return pd.DataFrame({"text": df["text"], "label": np.where(df["positive"], "positive", "negative")})


@pytest.mark.parametrize("name, build, labels", [("single_label", single_label_rows, ["negative", "positive"]),
                                                 ("pairs", pair_rows, ["negative", "positive"]),
                                                 ("multi_label", multi_label_rows, ["negative", "positive", "tech"]),
                                                 ("regression", regression_rows, ["label"])])
def test_each_baseline_learns_its_rule_and_answers_in_its_tasks_form(name, build, labels):
    frame = build()
    if name == "multi_label":
        frame["label"] = frame["label"].map(lambda v: tuple(sorted(v.split("|"))))
    task = get_task("single_label" if name == "pairs" else name)
    train, val, test = thirds(frame)
    spec = task.output_spec(labels, train.targets, name == "pairs")
    fit = task.fit_classical(spec, train, val)
    outputs = fit.predict(test)
    assert outputs.shape == (len(test.texts), spec.width)
    metrics = task.metrics(task.y(test.targets, fit.spec), outputs, fit.spec)
    if name == "regression":
        assert "ridge (alpha=" in fit.name
        assert metrics["rmse"] < 0.6 * float(np.std(test.targets)), metrics  # the mean scores one std
    else:
        assert "logistic regression (C=" in fit.name and metrics["macro_f1"] > 0.9, metrics
    if name == "multi_label":
        assert fit.spec.thresholds is not None and len(fit.spec.thresholds) == 3  # tuned on validation
    assert set(fit.val_metrics) == set(task.metrics(task.y(val.targets, fit.spec), fit.predict(val), fit.spec))


def test_a_baseline_that_cannot_be_fitted_says_why_and_token_tags_have_none_yet():
    task = get_task("single_label")
    frame = single_label_rows()
    one_class = frame[frame["label"] == "positive"]
    train, val, _ = thirds(one_class)
    with pytest.raises(ClassicalError, match="one class"):
        task.fit_classical(task.output_spec(["negative", "positive"], train.targets, False), train, val)
    empty = TextRows(["!", "?"] * 10, None, pd.Series(["negative", "positive"] * 10))
    with pytest.raises(ClassicalError, match="no features"):
        task.fit_classical(task.output_spec(["negative", "positive"], empty.targets, False), empty, empty)
    token = get_task("token_classification")
    assert token.fit_classical(None, empty, empty) is None
