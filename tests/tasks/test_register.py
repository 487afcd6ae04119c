"""Registration and the champion gate against a real MLflow SQLite store."""

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from config.schema import RegistryConfig
from tasks.register import ChampionInfo, decide_promotion, register_and_gate


@pytest.mark.parametrize(
    "candidate,parity,champion,promote,needle",
    [
        (0.70, True, None, True, "no champion yet"),
        (0.70, False, None, False, "parity"),
        (0.80, False, ChampionInfo("1", 0.50), False, "parity"),
        (0.795, True, ChampionInfo("1", 0.80), True, "promoted"),
        (0.60, True, ChampionInfo("1", 0.80), False, "below champion v1"),
        (0.90, True, ChampionInfo("3", 0.80), True, "promoted"),
        (0.10, True, ChampionInfo("2", None), True, "no macro-F1"),
    ],
)
def test_gate(candidate, parity, champion, promote, needle):
    d = decide_promotion(candidate, parity, champion, tolerance=0.01)
    assert d.promote is promote and needle in d.reason


def test_gate_refuses_worse_model_just_beyond_tolerance():
    assert decide_promotion(0.7899, True, ChampionInfo("1", 0.80), 0.01).promote is False
    assert decide_promotion(0.7901, True, ChampionInfo("1", 0.80), 0.01).promote is True


@pytest.fixture
def bundle(tmp_path, trained, exported):
    import shutil

    _, _, result = trained
    d = tmp_path / "bundle"
    d.mkdir()
    shutil.copy(exported, d / "model.onnx")
    shutil.copy(result.checkpoint_dir / "tokenizer.json", d / "tokenizer.json")
    return {"fp32": d / "model.onnx", "tokenizer": d / "tokenizer.json"}, result.labels


def _register(client, bundle, labels, f1, parity_ok=True):
    exp = client.get_experiment_by_name("t") or client.get_experiment(client.create_experiment("t"))
    run = client.create_run(exp.experiment_id)
    files, _ = bundle
    meta = {"labels": labels, "max_length": 32, "variants": ["fp32"]}
    reg = register_and_gate(client, run.info.run_id, RegistryConfig(model_name="m", f1_tolerance=0.01), files, meta,
                            {"test_macro_f1": f1, "test_accuracy": f1}, {"data_fingerprint": "abc", "config_hash": "h"},
                            parity_ok, ["great ride", "awful trip"])
    client.set_terminated(run.info.run_id)
    return reg, run.info.run_id


def test_champion_moves_only_through_the_gate(mlflow_uri, bundle):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    files, labels = bundle

    first, _ = _register(client, bundle, labels, 0.80)
    assert first.version == "1" and first.aliases == ["champion"]

    worse, worse_run = _register(client, bundle, labels, 0.60)
    assert worse.aliases == ["challenger"] and not worse.decision.promote
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("m", "challenger").version) == "2"
    tags = client.get_model_version("m", "2").tags
    assert tags["gate.decision"] == "kept_challenger" and "below champion v1" in tags["gate.reason"]
    assert tags["data_fingerprint"] == "abc" and tags["metric.test_macro_f1"] == "0.600000"
    run_tags = client.get_run(worse_run).data.tags
    assert "below champion v1" in run_tags["gate.reason"]
    assert "gate.json" in [a.path for a in client.list_artifacts(worse_run)]

    broken, _ = _register(client, bundle, labels, 0.99, parity_ok=False)
    assert not broken.decision.promote
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"

    better, _ = _register(client, bundle, labels, 0.85)
    assert better.aliases == ["champion"]
    assert str(client.get_model_version_by_alias("m", "champion").version) == better.version


def test_registered_champion_predicts_labels_and_probabilities(mlflow_uri, bundle):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    _register(client, bundle, labels, 0.8)
    model = mlflow.pyfunc.load_model("models:/m@champion")
    out = model.predict(pd.DataFrame({"text": ["this car is wonderful and amazing", "the trip is awful and horrible"]}))
    assert list(out["label"]) == ["positive", "negative"]
    assert all(abs(sum(p) - 1) < 1e-5 for p in out["probabilities"])
    assert {"proba_negative", "proba_positive", "confidence"} <= set(out.columns)
    pinned = mlflow.pyfunc.load_model("models:/m@champion", model_config={"variant": "fp32", "device": "cpu"})
    assert pinned.unwrap_python_model().variant == "fp32"
