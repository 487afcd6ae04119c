"""Registration and the champion gate against a real MLflow SQLite store (the gate alone: test_gate.py)."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from forgeline.config.schema import RegistryConfig
from forgeline.registry.register import reuse_registration
from tests.conftest import register_version


def test_a_first_model_at_chance_level_is_registered_but_not_champion(mlflow_uri, bundle):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle  # two classes: chance is 0.5
    reg, run_id = register_version(client, bundle, labels, 0.52)
    assert reg.aliases == ["challenger"] and not reg.decision.promote
    with pytest.raises(Exception, match="champion"):
        client.get_model_version_by_alias("m", "champion")
    reason = client.get_model_version("m", reg.version).tags["gate.reason"]
    assert "above chance, 0.5000" in reason and "train.epochs" in reason
    gate = json.loads(Path(client.download_artifacts(run_id, "gate.json")).read_text())
    assert gate["chance_macro_f1"] == 0.5 and gate["min_gain_over_chance"] == 0.05
    # a learned model becomes the first champion; the floor can be turned off
    assert register_version(client, bundle, labels, 0.56)[0].aliases == ["champion"]
    assert register_version(client, bundle, labels, 0.52, name="n", min_gain_over_chance=None)[0].aliases == ["champion"]


def test_champion_moves_only_through_the_gate(mlflow_uri, bundle):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    files, labels = bundle

    first, _ = register_version(client, bundle, labels, 0.80)
    assert first.version == "1" and first.aliases == ["champion"]

    worse, worse_run = register_version(client, bundle, labels, 0.60)
    assert worse.aliases == ["challenger"] and not worse.decision.promote
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("m", "challenger").version) == "2"
    tags = client.get_model_version("m", "2").tags
    assert tags["gate.decision"] == "kept_challenger" and "below champion v1" in tags["gate.reason"]
    assert tags["data_fingerprint"] == "abc" and tags["metric.test_macro_f1"] == "0.600000"
    run_tags = client.get_run(worse_run).data.tags
    assert "below champion v1" in run_tags["gate.reason"]
    assert "gate.json" in [a.path for a in client.list_artifacts(worse_run)]

    broken, _ = register_version(client, bundle, labels, 0.99, parity_ok=False)
    assert not broken.decision.promote
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"

    better, _ = register_version(client, bundle, labels, 0.85)
    assert better.aliases == ["champion"]
    assert str(client.get_model_version_by_alias("m", "champion").version) == better.version


def test_registered_champion_predicts_labels_and_probabilities(mlflow_uri, bundle):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    register_version(client, bundle, labels, 0.8)
    model = mlflow.pyfunc.load_model("models:/m@champion")
    out = model.predict(pd.DataFrame({"text": ["this car is wonderful and amazing", "the trip is awful and horrible"]}))
    assert list(out["label"]) == ["positive", "negative"]
    assert all(abs(sum(p) - 1) < 1e-5 for p in out["probabilities"])
    assert {"proba_negative", "proba_positive", "confidence"} <= set(out.columns)
    # the batch size follows the device at load time (256 on CUDA, 64 on CPU), not the training machine
    assert model.model_config["batch_size"] == "auto"
    impl = model.unwrap_python_model()
    assert impl.batch_size == (256 if impl.device == "cuda" else 64)
    pinned = mlflow.pyfunc.load_model("models:/m@champion", model_config={"variant": "fp32", "device": "cpu"})
    assert pinned.unwrap_python_model().variant == "fp32"


def test_an_unchanged_rerun_runs_the_gate_again_with_the_current_registry_settings(mlflow_uri, bundle):
    """The registry settings are not part of the cache key: relaxing the floor and running again must not
    answer 'unchanged' and leave the identical version stuck as challenger."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    _, labels = bundle
    first, _ = register_version(client, bundle, labels, 0.52)  # 2 classes: not 0.05 above chance
    assert first.aliases == ["challenger"]
    client.set_model_version_tag("m", first.version, "parity_ok", "True")  # as the register stage tags it
    exp = client.get_experiment_by_name("t").experiment_id

    same = reuse_registration(client, client.create_run(exp).info.run_id, RegistryConfig(model_name="m"), first.version, 2)
    assert not same.decision.promote and same.aliases == ["challenger"]
    assert "nothing registered; still not champion" in same.decision.reason and "above chance" in same.decision.reason

    run_id = client.create_run(exp).info.run_id
    relaxed = reuse_registration(client, run_id, RegistryConfig(model_name="m", min_gain_over_chance=None), first.version, 2)
    assert relaxed.decision.promote and relaxed.aliases == ["champion"]
    assert str(client.get_model_version_by_alias("m", "champion").version) == first.version
    assert client.get_run(run_id).data.tags["gate.decision"] == "promoted"
    assert client.get_model_version("m", first.version).tags["gate.decision"] == "promoted"
    assert len(client.search_model_versions("name='m'")) == 1

    again = reuse_registration(client, client.create_run(exp).info.run_id, RegistryConfig(model_name="m"), first.version, 2)
    assert not again.decision.promote and again.aliases == ["champion"]  # a champion stays champion
    assert again.decision.reason.endswith("nothing registered")
