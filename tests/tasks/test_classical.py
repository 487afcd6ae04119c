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
    untagged = TextRows(["nothing to see here"] * 6, None, pd.Series([()] * 6))
    with pytest.raises(ClassicalError, match="tags no entity"):
        token.fit_classical(token.output_spec(["LOC"], untagged.targets, False), untagged, untagged)


def city_rows(n: int = 90, seed: int = 0) -> TextRows:
    """``<name> flew to <City> on <day>``: the city (capitalised, after "to") is a LOC span, the name a PER."""
    import random

    rng = random.Random(seed)
    names, cities = ["anna", "omar", "li", "sven", "maria", "kofi"], ["Lisboa", "Oslo", "Quito", "Lagos", "Hanoi", "Perth"]
    texts, targets = [], []
    for _ in range(n):
        who, where, day = rng.choice(names), rng.choice(cities), rng.choice(["monday", "friday", "sunday"])
        text = f"{who} flew to {where} on {day}"
        at = text.index(where)
        texts.append(text)
        targets.append(((0, len(who), "PER"), (at, at + len(where), "LOC")))
    return TextRows(texts, None, pd.Series(targets))


def test_token_tags_baseline_is_a_crf_answering_per_word_tags_that_survive_the_cache():
    from forgeline.inference.tokens import Tagged
    from forgeline.pipeline.stages import _frame, _outputs

    task = get_task("token_classification")
    train, val, test = city_rows(60, 0), city_rows(30, 1), city_rows(30, 2)
    spec = task.output_spec(["LOC", "PER"], train.targets, False)
    fit = task.fit_classical(spec, train, val)
    assert fit.name.startswith("CRF on word features (c1=") and not hasattr(fit, "weights")  # no ONNX form
    outputs = fit.predict(test)
    assert isinstance(outputs[0], Tagged) and outputs[0].probs.shape == (6, 5)  # words, O + B/I per type
    assert np.allclose(outputs[0].probs.sum(axis=1), 1.0, atol=1e-5)
    assert task.metrics(task.y(test.targets, spec), outputs, spec)["micro_f1"] > 0.95
    back = _outputs(_frame(outputs))  # as the baseline stage's cache entry stores and restores them
    assert [t.words for t in back] == [t.words for t in outputs]
    assert all(np.allclose(a.probs, b.probs) for a, b in zip(back, outputs))


@pytest.mark.parametrize("name, build, labels", [("single_label", single_label_rows, ["negative", "positive"]),
                                                 ("pairs", pair_rows, ["negative", "positive"]),
                                                 ("multi_label", multi_label_rows, ["negative", "positive", "tech"]),
                                                 ("regression", regression_rows, ["label"])])
def test_the_onnx_graph_of_each_baseline_answers_as_scikit_learn_does(tmp_path, name, build, labels):
    """skl2onnx's graph (strings in, the task's logits out) on held-out rows, through the runtime the
    pyfunc uses: within the ``tfidf`` parity tolerance, the same decisions."""
    from forgeline.export.classical import classical_parity, export_classical
    from forgeline.inference.runtime import create_session, predict_proba_texts

    frame = build()
    if name == "multi_label":
        frame["label"] = frame["label"].map(lambda v: tuple(sorted(v.split("|"))))
    task = get_task("single_label" if name == "pairs" else name)
    train, val, test = thirds(frame)
    # non-ASCII words, punctuation and latin-1 mojibake with U+0085 (whitespace to str.split) tokenise alike
    odd = "itâ\x80\x99s ça\x85va\x85bien très-bien, [Ünïcode] ok"
    train.texts[:3] = [f"{odd} {t}" for t in train.texts[:3]]
    test.texts[0] = odd
    fit = task.fit_classical(task.output_spec(labels, train.targets, name == "pairs"), train, val)
    path = export_classical(fit, tmp_path / "model.classical.onnx", name == "pairs")
    parity = classical_parity(fit, path, test)
    assert parity["ok"] and parity["argmax_agreement"] == 1.0 and parity["mean_abs_prob_diff"] < 0.01, parity
    session = create_session(path, device="cpu")
    served = predict_proba_texts(session, test.texts, test.pairs, batch_size=7, activate=fit.spec.activate)
    assert served.shape == (len(test.texts), fit.spec.width)
    assert fit.spec.agreement(served, fit.predict(test)) == 1.0


@pytest.mark.e2e
def test_family_auto_registers_the_classical_model_where_the_encoder_is_no_better_and_serves_it(prefect_api, tiny,
                                                                                               tmp_path):
    """A tiny encoder trained one epoch against a baseline that learns the rule: ``model.family=auto``
    registers the classical graph alone (no tokenizer), the card says why, and the pyfunc where torch
    cannot be imported, ``forgeline serve`` and ``forgeline score`` (with drift) answer with it."""
    import httpx
    from mlflow.tracking import MlflowClient

    from forgeline.pipeline.flows import training_flow
    from forgeline.scoring.flow import score, score_config
    from tests.conftest import flow_overrides
    from tests.serving.conftest import Server
    from tests.tasks.test_task_flows import PROBE, predict_where_torch_is_blocked

    data = tmp_path / "sentiment.csv"
    single_label_rows().to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, "train.epochs=1",
                                                                   "model.family=auto", "registry.beat_classical=true"))
    assert result["promoted"] and result["version"] == "1", result
    client = MlflowClient(uri, uri)
    version = client.get_model_version("e2e", "1")
    assert version.tags["model.family"] == "classical" and version.tags["variants"] == "classical", version.tags
    assert "## Model family" in version.description and "not significantly worse and faster" in version.description
    run = client.get_run(version.run_id)
    assert run.data.metrics["baseline.parity.ok"] == 1.0 and "baseline.cpu_p50_b32_ms" in run.data.metrics
    files = {f.path for f in client.list_artifacts(version.run_id, "drift")}
    assert "drift/predictions.classical.json" in files

    loaded = predict_where_torch_is_blocked(uri, f"pd.DataFrame({{'text': {PROBE!r}}})", tmp_path)
    assert [r["label"] for r in loaded["rows"]] == ["positive", "negative"], loaded
    server = Server(uri, "e2e@champion", log=tmp_path / "serve.log")
    try:
        info = httpx.get(f"{server.url}/v1/model", timeout=10).json()
        assert info["variant"] == "classical", info
        answer = httpx.post(f"{server.url}/v1/predict", json={"texts": PROBE}, timeout=30)
        assert answer.status_code == 200, answer.text
        preds = answer.json()["predictions"]
        assert httpx.post(f"{server.url}/v1/predict", json={"texts": [""]}, timeout=30).status_code == 422
    finally:
        assert server.stop() == 0
    assert [p["label"] for p in preds] == ["positive", "negative"]

    pd.DataFrame({"text": PROBE}).to_json(tmp_path / "probe.jsonl", orient="records", lines=True)
    job = score(score_config({"model": "e2e/1", "input": str(tmp_path / "probe.jsonl"), "output": str(tmp_path / "scored"),
                              "tracking_uri": uri}, [f"tracking.workdir={tmp_path / 'work'}"]))
    assert job.drift["checked"], job.drift
    scored = pd.read_parquet(tmp_path / "scored").sort_values("row")
    assert scored.label.tolist() == ["positive", "negative"]
