"""Each new task through the whole flow on a small dataset built here (targets from known rules): the model
beats the trivial baseline on the task's primary metric, the registered pyfunc loads where torch cannot be
imported and answers in the task's columns, `forgeline serve` answers the task's JSON, and a worse second
run stays challenger."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from forgeline.bench.loadtest import run_load
from forgeline.pipeline.flows import training_flow
from tests.conftest import NEG, POS, THINGS, flow_overrides
from tests.inference.test_isolation import LOAD_BLOCKED, SRC
from tests.serving.conftest import Server

TECH = {"the app", "the service", "this update"}


def rows(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Unique sentences ``<thing> is <w1> and <w2> #k``: a positive or a negative pair of words."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        positive = len(out) % 2 == 0
        words = POS if positive else NEG
        thing = rng.choice(THINGS)
        text = f"{thing} is {rng.choice(words)} and {rng.choice(words)} #{rng.randint(0, 9999)}"
        if text not in seen:
            seen.add(text)
            out.append({"text": text, "positive": positive, "thing": thing})
    return pd.DataFrame(out).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def regression_rows() -> pd.DataFrame:
    """target = 4 for positive sentences, 1 for negative ones, plus N(0, 0.25) noise."""
    df = rows()
    noise = np.random.default_rng(0).normal(0, 0.25, len(df))
    return pd.DataFrame({"text": df["text"], "label": np.where(df["positive"], 4.0, 1.0) + noise})


def multi_label_rows() -> pd.DataFrame:
    """labels = the sentiment, plus ``tech`` when the sentence is about the app, the service or an update
    (one or two labels per row), as a ``|``-delimited CSV cell."""
    df = rows()
    labels = [("positive" if p else "negative") + ("|tech" if t in TECH else "") for p, t in zip(df["positive"], df["thing"])]
    return pd.DataFrame({"text": df["text"], "label": labels})


def pair_rows() -> pd.DataFrame:
    """Single-label on text pairs: a neutral question as the text, the sentence as the pair; the label is
    the pair's sentiment (the model must read the second segment). Columns as Hugging Face names them
    (``text``, ``text_pair``): the run takes them as `forgeline run --data` infers them."""
    df = rows()
    rng = random.Random(1)
    questions = [f"what do people say about {t}? #{rng.randint(0, 9)}" for t in df["thing"]]  # texts repeat
    return pd.DataFrame({"text": questions, "text_pair": df["text"],
                         "label": np.where(df["positive"], "positive", "negative")})


def inferred(data: Path) -> list[str]:
    """The columns and task `forgeline run --data FILE` infers for ``data``."""
    import argparse

    from forgeline.cli import data_overrides

    sets = data_overrides(argparse.Namespace(data=str(data), config=None, overrides=[], text_column=None,
                                             label_column=None, text_pair_column=None, pairs=True))
    return [s for s in sets if s.split("=")[0] in ("data.text_column", "data.text_pair_column", "data.label_column",
                                                   "task.type")]


CASES = {
    "regression": (regression_rows, ["task.type=regression", "data.labels=null", "compress.student=true",
                                     "compress.student_layers=1", "compress.fp16=true"]),
    "multi_label": (multi_label_rows, ["task.type=multi_label", "data.labels=null", "data.label_delimiter='|'",
                                       "compress.student=true", "compress.student_layers=1"]),
    "pairs": (pair_rows, []),  # the pair columns as --data infers them (below)
}
PROBE = ["the ride is wonderful and amazing", "the app is awful and dreadful"]


def predict_where_torch_is_blocked(uri: str, frame: str, tmp_path: Path) -> dict:
    """``models:/e2e@champion`` loaded and asked to predict ``frame`` (Python source of a DataFrame) in a
    process where importing torch fails: the columns and rows it returned."""
    script = LOAD_BLOCKED + f"""
import mlflow.pyfunc
import pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
out = mlflow.pyfunc.load_model("models:/e2e@champion", dst_path=sys.argv[3]).predict({frame})
print(json.dumps({{"columns": list(out.columns), "rows": json.loads(out.to_json(orient="records")),
                   "torch": "torch" in sys.modules}}))
"""
    dst = tmp_path / "load"
    dst.mkdir()
    proc = subprocess.run([sys.executable, "-c", script, uri, str(SRC), str(dst)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not loaded["torch"]
    return loaded


@pytest.mark.e2e
@pytest.mark.parametrize("case", list(CASES))
def test_a_task_end_to_end(case, prefect_api, tiny, tmp_path):
    build, sets = CASES[case]
    data = tmp_path / "data.csv"
    build().to_csv(data, index=False)
    if case == "pairs":
        sets = inferred(data)
        assert 'data.text_pair_column="text_pair"' in sets, sets
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = flow_overrides(tmp_path, data, *tiny, "train.epochs=4", *sets)

    first = training_flow(config="tiny", overrides=overrides)
    assert first["promoted"] and first["version"] == "1", first
    client = MlflowClient(uri, uri)
    gate = json.loads(Path(client.download_artifacts(first["run_id"], "gate.json", str(tmp_path))).read_text())
    metric, baseline = gate["metric"], gate["baseline_value"]
    value = first["metrics"][f"test_{metric}"]
    if case == "regression":
        assert metric == "rmse" and not gate["higher_is_better"]
        assert value < 0.6 * baseline, (value, baseline)  # predicting the mean scores ~1.5
    else:
        assert metric == "macro_f1" and value > baseline + 0.2, (value, baseline)
    version = client.get_model_version("e2e", "1")
    assert version.tags["task"] == ("single_label" if case == "pairs" else case)
    run = client.get_run(first["run_id"])
    if case != "pairs":  # the student was made, scored on the task's metric
        assert f"variant.student.{metric}" in run.data.metrics

    # the registered pyfunc, where torch cannot be imported, answers in the task's columns
    frame = (f"pd.DataFrame({{'text': ['how is it?', 'how is it?'], 'text_pair': {PROBE!r}}})" if case == "pairs"
             else f"pd.DataFrame({{'text': {PROBE!r}}})")
    loaded = predict_where_torch_is_blocked(uri, frame, tmp_path)
    if case == "regression":
        assert loaded["columns"] == ["score"]
        high, low = (r["score"] for r in loaded["rows"])
        assert high > low + 1.0
    elif case == "multi_label":
        assert loaded["columns"][:2] == ["labels", "probabilities"]
        assert "positive" in loaded["rows"][0]["labels"] and "negative" in loaded["rows"][1]["labels"]
    else:
        assert [r["label"] for r in loaded["rows"]] == ["positive", "negative"]

    # `forgeline serve` answers the task's JSON; a request of the other shape is a 422 naming the right one
    server = Server(uri, "e2e@champion", log=tmp_path / "serve.log")
    try:
        info = httpx.get(f"{server.url}/v1/model", timeout=10).json()
        assert info["task"] == ("single_label" if case == "pairs" else case)
        if case == "pairs":
            body, wrong = {"pairs": [["how is it?", p] for p in PROBE]}, {"texts": PROBE}
        else:
            body, wrong = {"texts": PROBE}, {"pairs": [["a", "b"]]}
        answer = httpx.post(f"{server.url}/v1/predict", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        preds = answer.json()["predictions"]
        refused = httpx.post(f"{server.url}/v1/predict", json=wrong, timeout=30)
        assert refused.status_code == 422 and ("pairs" if case == "pairs" else "texts") in refused.json()["error"]
        load = run_load(server.url, concurrency=2, requests=20)  # the load generator sends the model's shape
        assert load["statuses"] == {200: 20}, load
    finally:
        assert server.stop() == 0
    if case == "regression":
        assert set(preds[0]) == {"score"} and preds[0]["score"] > preds[1]["score"] + 1.0
    elif case == "multi_label":
        assert set(preds[0]) == {"labels", "probabilities"} and "positive" in preds[0]["labels"]
    else:
        assert [p["label"] for p in preds] == ["positive", "negative"]

    # `forgeline score` writes the same answers in the pyfunc's columns, one row per input row
    from forgeline.scoring.flow import score, score_config

    probe = pd.DataFrame({"text": ["how is it?"] * 2, "text_pair": PROBE} if case == "pairs" else {"text": PROBE})
    probe.to_json(tmp_path / "probe.jsonl", orient="records", lines=True)
    job = score(score_config({"model": "e2e/1", "input": str(tmp_path / "probe.jsonl"), "output": str(tmp_path / "scored"),
                              "tracking_uri": uri}, [f"tracking.workdir={tmp_path / 'work'}"]))
    # the batch's predictions against the same variant's on the validation split, recorded by the run
    assert job.drift["checked"] and job.drift["reference"] == "validation predictions", job.drift
    assert ("score_mean_shift_sd" if case == "regression" else "label_tv" if case == "pairs" else "max_rate_change") in job.drift
    scored = pd.read_parquet(tmp_path / "scored").sort_values("row")
    assert scored.row.tolist() == [0, 1] and set(scored.version) == {"1"}
    assert list(scored.columns[2:-3]) == loaded["columns"]
    if case == "regression":
        assert scored.score.tolist() == pytest.approx([p["score"] for p in preds], abs=1e-5)
    elif case == "multi_label":
        assert [list(x) for x in scored.labels] == [p["labels"] for p in preds]
    else:
        assert scored.label.tolist() == [p["label"] for p in preds]

    # a worse model (no learning): registered, stays challenger (for RMSE: a higher value is worse)
    second = training_flow(config="tiny", overrides=[*overrides, "train.learning_rate=1.0e-12", "train.epochs=1"])
    assert not second["promoted"] and second["version"] == "2"
    assert str(client.get_model_version_by_alias("e2e", "champion").version) == "1"
    reason = client.get_run(second["run_id"]).data.tags["gate.reason"]
    assert "vs champion v1" in reason and "may be worse than the champion" in reason, reason
    if case == "regression":
        assert "McNemar" in reason and "no McNemar" in reason
        assert float(client.get_model_version("e2e", "2").tags["gate.rmse_diff"]) > 0
    mlflow.set_tracking_uri(uri)
