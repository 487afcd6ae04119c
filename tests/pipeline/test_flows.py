"""End to end: the Prefect flow against a real (temporary) Prefect API and a real MLflow SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from forgeline.errors import DataValidationError
from forgeline.pipeline.flows import training_flow
from tests.conftest import QUICK, flow_overrides, sentiment_rows


@pytest.mark.e2e
def test_pipeline_end_to_end(prefect_api, tmp_path):
    data = tmp_path / "data.csv"
    df = sentiment_rows()
    # a few bad rows: quarantined, below the failure threshold
    bad = pd.DataFrame({"text": ["", "ok", df.loc[0, "text"].upper()], "label": ["positive", "negative", "negative"]})
    pd.concat([df, bad], ignore_index=True).to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    first = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data))
    assert first["promoted"] and first["version"] == "1"
    assert first["metrics"]["test_macro_f1"] >= 0.8

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    champion = mlflow.pyfunc.load_model("models:/e2e@champion")
    out = champion.predict(pd.DataFrame({"text": ["the ride is wonderful and excellent", "the app is awful and dreadful"]}))
    assert list(out["label"]) == ["positive", "negative"]
    assert out["probabilities"].map(len).eq(2).all()

    client = MlflowClient(uri, uri)
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["data.quarantined_rows"] == 3
    # the data is a run input (the MLflow UI's Datasets column): file, digest, row counts
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == "data.csv" and run.data.tags["data.fingerprint"].startswith(used.dataset.digest)
    assert mlflow.data.get_source(used).to_dict() == {"uri": data.resolve().as_uri()}
    assert json.loads(used.dataset.profile)["quarantined_rows"] == 3
    assert {t.key: t.value for t in used.tags} == {"mlflow.data.context": "training"}
    for key in ("test_accuracy", "test_macro_precision", "test_macro_recall", "test_macro_f1", "test_roc_auc_ovr",
                "variant.int8.size_bytes", "variant.int8.accuracy_delta", "parity.max_abs_prob_diff", "val_macro_f1"):
        assert key in run.data.metrics, key
    # the classical baseline on the same split: logged, weighed in gate.json, on the card
    assert run.data.tags["baseline.model"].startswith("TF-IDF + logistic regression (C=")
    assert run.data.metrics["baseline.test_macro_f1"] > 0.8 and "baseline.val_macro_f1" in run.data.metrics
    gate = json.loads(Path(client.download_artifacts(first["run_id"], "gate.json", str(tmp_path))).read_text())
    assert gate["classical"]["name"] == run.data.tags["baseline.model"]
    assert gate["classical"]["champion_value"] == pytest.approx(run.data.metrics["baseline.test_macro_f1"])
    assert "classical baseline (TF-IDF + logistic regression" in client.get_model_version("e2e", "1").description
    artifacts = {a.path for a in client.list_artifacts(first["run_id"])}
    assert {"data", "eval", "summary.md", "gate.json", "config.json", "checkpoint", "onnx", "compression"} <= artifacts
    assert {a.path for a in client.list_artifacts(first["run_id"], "eval")} >= {"eval/test_confusion_matrix.png"}
    quarantine = client.download_artifacts(first["run_id"], "data/quarantine.csv", str(tmp_path))
    assert len(pd.read_csv(quarantine)) == 3
    version = client.get_model_version("e2e", "1")
    for tag in ("data_fingerprint", "config_hash", "git_commit", "metric.test_macro_f1", "gate.reason"):
        assert version.tags.get(tag), tag

    # a worse model: registered, stays challenger, reason logged
    second = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, "train.learning_rate=1.0e-12", "train.epochs=1"))
    assert not second["promoted"] and second["version"] == "2"
    assert str(client.get_model_version_by_alias("e2e", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("e2e", "challenger").version) == "2"
    reason = client.get_run(second["run_id"]).data.tags["gate.reason"]
    assert "vs champion v1" in reason and "may be worse than the champion" in reason  # scored on the same rows
    same = client.get_model_version("e2e", "2").tags
    first_test_rows = int(client.get_run(first["run_id"]).data.metrics["split.test"])
    assert int(same["gate.same_data_rows"]) == first_test_rows and float(same["gate.macro_f1_diff"]) < 0

    # the summary is a Prefect markdown artifact, read back through the Prefect REST API
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"key": {"any_": ["forgeline-e2e"]}}, "flow_runs": {}, "task_runs": {}, "limit": 10,
            "offset": 0, "sort": "CREATED_DESC"}
    resp = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30)
    resp.raise_for_status()
    found = [SimpleNamespace(**a) for a in resp.json()]
    assert found and "kept as challenger" in (found[0].data or "")

    # forgeline bench on the champion: every CPU engine on the same inputs, logged to the version's run
    from forgeline.cli import main

    out_json = tmp_path / "bench.json"
    assert main(["bench", "-m", "e2e@champion", "--tracking-uri", uri, "--quick", "--data", str(data),
                 "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    ok = {(r["engine"], r["seq"]) for r in result["inference"] if "error" not in r}
    assert {("torch_eager_fp32_cpu", "16"), ("ort_fp32_cpu", "real"), ("pyfunc_registry", "real"),
            ("pyfunc_registry_model", "real")} <= ok
    # every CPU variant the version bundles is timed; which ones are bundled depends on latency measured
    # on this (shared, noisy) machine: int8 of the 1-layer model is sometimes dominated by fp32
    from forgeline.inference.contract import RUNS_ON

    bundled = client.get_model_version("e2e", "1").tags["variants"].split(",")
    assert {(f"ort_{v}_cpu", "real") for v in bundled if "cpu" in RUNS_ON[v]} <= ok
    assert ("pyfunc_registry", "16") not in ok
    assert result["targets"]["fused_attention_nodes>=6"] == {"value": 1, "met": False}  # the tiny preset has 1 layer
    assert [t["seq"] for t in result["training"]] == [16, "real"]
    assert [a.path for a in client.list_artifacts(first["run_id"], "bench")]


@pytest.mark.e2e
def test_bad_dataset_fails_before_training_and_registers_nothing(prefect_api, tmp_path):
    data = tmp_path / "bad.csv"
    df = sentiment_rows(30)
    bad = pd.DataFrame({"text": ["   "] * 30, "label": ["positive"] * 30})
    pd.concat([df, bad], ignore_index=True).to_csv(data, index=False)
    with pytest.raises(DataValidationError, match="above data.max_invalid_fraction"):
        training_flow(config="tiny", overrides=flow_overrides(tmp_path, data))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    assert client.search_registered_models() == []
    runs = client.search_runs([client.get_experiment_by_name("forgeline").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["validation.passed"] == "false"
    assert [d.dataset.name for d in runs[0].inputs.dataset_inputs] == ["bad.csv"]  # which data failed
    assert "train.steps" not in runs[0].data.metrics
    assert "data/quarantine.csv" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "data")}


SIGTERM_HIDDEN = """
from prefect.exceptions import TerminationSignal
def fake_stage(*args, **kwargs):  # Prefect's crash handler failing with the signal only in __context__
    try:
        raise TerminationSignal(15)
    except TerminationSignal:
        raise ValueError('Task run is not set')
"""
SIGINT_SWALLOWED = """
import signal, time
from forgeline.errors import DataLoadError
def fake_stage(*args, **kwargs):  # pandas' C reader turning Ctrl-C into a read error, no chain left
    swallowed = False
    try:  # raise_signal: to this thread; os.kill's signal could land on another thread and leave sleep running
        signal.raise_signal(signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        swallowed = True
    if swallowed:
        raise DataLoadError('cannot read d.csv as csv: Calling read(nbytes) on source failed')
"""


@pytest.mark.e2e
@pytest.mark.faults
@pytest.mark.parametrize("fake, rc, error", [(SIGTERM_HIDDEN, -15, "TerminationSignal"),
                                             (SIGINT_SWALLOWED, -2, "KeyboardInterrupt")], ids=["SIGTERM", "SIGINT"])
def test_a_signal_hidden_behind_another_error_still_marks_the_run_killed(prefect_api, tmp_path, fake, rc, error):
    """Seen in CI: a SIGTERM landing while Prefect created a task run ended the run FAILED (exit 1), and
    a Ctrl-C landing inside pandas' CSV reader ended it as "cannot read" (exit 2). In a subprocess: the
    flow engine ends its process with the signal (Python's KeyboardInterrupt exit is -SIGINT)."""
    import os
    import signal
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    data = tmp_path / "d.csv"
    sentiment_rows(30).to_csv(data, index=False)
    script = (fake + "from forgeline.pipeline import stages\nfrom forgeline.pipeline.flows import training_flow\n"
              "stages.load_and_validate = fake_stage\n"
              f"training_flow(config='tiny', overrides={flow_overrides(tmp_path, data)!r})\n")
    log = tmp_path / "flow.log"
    with log.open("w") as f:  # a file, not a pipe: nothing left holding a pipe open can stall the test
        # SIGINT at its default, as under a terminal: a suite started in the background (`cmd &` in a
        # script) runs with SIGINT ignored, which children inherit, and then no Ctrl-C exists to test
        code = subprocess.run([sys.executable, "-c", script], stdout=f, stderr=subprocess.STDOUT, timeout=300,
                              env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)).returncode
    assert code == rc, log.read_text()[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name("forgeline").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert runs[0].data.tags["forgeline.error"].startswith(error)


@pytest.mark.e2e
def test_cached_rerun_skips_stages_and_registers_nothing_new(prefect_api, tmp_path, tiny):
    data = tmp_path / "data.csv"
    sentiment_rows().to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)

    first = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, *QUICK))
    assert first["cached_stages"] == [] and first["version"] == "1"

    # unchanged: every stage comes from the cache, registration is idempotent
    again = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, *QUICK))
    assert again["cached_stages"] == ["validate", "split", "baseline", "train", "evaluate", "export", "compress", "register"]
    assert again["version"] == "1" and len(client.search_model_versions("name='e2e'")) == 1
    tags = client.get_run(again["run_id"]).data.tags
    assert tags["cache.train"] == "hit" and tags["gate.decision"] == "unchanged"
    assert again["metrics"] == first["metrics"]
    assert "test_macro_f1" in client.get_run(again["run_id"]).data.metrics  # the cached run still reports

    # a compression change: upstream stages reused, compression and registration run again
    changed = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, *QUICK,
                                                                    "compress.prune_amount=0.1"))
    assert changed["cached_stages"] == ["validate", "split", "baseline", "train", "evaluate", "export"]
    assert changed["version"] == "2"

    # new data: everything downstream of validation runs again
    sentiment_rows(seed=5).to_csv(data, index=False)
    fresh = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, *QUICK))
    assert fresh["cached_stages"] == [] and fresh["version"] == "3"

    # a failing run (parity outside tolerance) leaves the registry as it was
    from forgeline.errors import ParityError

    champion_before = str(client.get_model_version_by_alias("e2e", "champion").version)
    with pytest.raises(ParityError):
        training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, *QUICK, "export.parity_atol=1e-12"))
    assert len(client.search_model_versions("name='e2e'")) == 3
    assert str(client.get_model_version_by_alias("e2e", "champion").version) == champion_before


@pytest.mark.e2e
def test_retraining_flow_trains_only_on_drift(prefect_api, tmp_path, tiny):
    from forgeline.pipeline.flows import retraining_flow

    data = tmp_path / "data.csv"
    sentiment_rows().to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    sets = flow_overrides(tmp_path, data, *tiny, *QUICK, "drift.sample_size=64")

    first = retraining_flow(config="tiny", overrides=sets)
    assert first["retrained"] and "no champion" in first["drift"]["reasons"][0]

    # fresh rows from the same distribution: no drift, no training, registry untouched
    sentiment_rows(seed=11).to_csv(data, index=False)
    same = retraining_flow(config="tiny", overrides=sets)
    assert not same["retrained"] and same["drift"]["champion_version"] == "1"
    assert len(client.search_model_versions("name='e2e'")) == 1
    drift_run = client.get_run(same["drift"]["drift_run_id"])
    assert drift_run.data.tags["drift.decision"] == "skip" and "drift.embedding_cosine" in drift_run.data.metrics

    # the label mix moves: retrain
    df = sentiment_rows(seed=12)
    pd.concat([df[df.label == "positive"], df[df.label == "negative"].head(20)]).to_csv(data, index=False)
    moved = retraining_flow(config="tiny", overrides=sets)
    assert moved["retrained"] and any("label distribution" in r for r in moved["drift"]["reasons"])
    assert moved["training"]["version"] == "2"


def test_drift_check_without_a_champion_says_why_the_challenger_is_not_one(tmp_path, mlflow_uri, bundle):
    """"no champion" alone reads as "never trained" when a model was kept below the gate."""
    from forgeline.pipeline.flows import check_drift
    from tests.conftest import register_version, small_config

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    register_version(client, bundle, labels, 0.52)  # two classes: not above chance, stays challenger
    data = tmp_path / "data.csv"
    sentiment_rows().to_csv(data, index=False)
    cfg = small_config(tmp_path, data, f"tracking.tracking_uri={mlflow_uri}", "registry.model_name=m")
    (reason,) = check_drift(cfg)["reasons"]
    assert reason.startswith("no champion of m") and "v1 is challenger: macro-F1 0.5200 is not 0.05" in reason
