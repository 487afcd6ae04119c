"""The closed loop on loopback: serve → traffic log → drift says retrain → retraining flow registers →
the gate decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from mlflow.tracking import MlflowClient

from forgeline.pipeline.flows import retraining_flow, training_flow
from tests.conftest import QUICK, flow_overrides, sentiment_rows
from tests.serving.conftest import ROOT, Server


def forgeline(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    return subprocess.run([sys.executable, "-m", "forgeline.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.e2e
def test_served_traffic_drives_drift_retraining_and_the_gate(prefect_api, tmp_path, tiny):
    data = tmp_path / "train.csv"
    sentiment_rows().to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, *QUICK))
    assert first["version"] == "1" and first["aliases"] == ["champion"]

    traffic = tmp_path / "traffic"
    srv = Server(uri, "e2e@champion", f"log_dir={traffic}", log=tmp_path / "server.log", extra=["--log-sample", "1.0"])
    try:
        # what users now send: long texts about another subject than the training data's short reviews
        for i in range(20):
            texts = [f"quarterly earnings call transcript {i}-{j} discussing revenue guidance, operating margins and "
                     f"the outlook for the next fiscal year in considerable detail" for j in range(8)]
            assert httpx.post(f"{srv.url}/v1/predict", json={"texts": texts}, timeout=30).status_code == 200
    finally:
        assert srv.stop() == 0

    overrides = flow_overrides(tmp_path, data, *tiny, *QUICK)
    sets = [a for o in overrides for a in ("--set", o)]
    out = forgeline("drift", "--config", "tiny", *sets, "--traffic", str(traffic))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout[out.stdout.index("{"):])
    assert report["retrain"] and report["rows"] == 160 and report["label_tv"] is None
    assert any(r.startswith("content moved") for r in report["reasons"])
    assert any("label check skipped" in n for n in report["notes"])

    # the scheduled flow reads the same log; it trains on the configured (labelled) data
    sentiment_rows(seed=5).to_csv(data, index=False)
    result = retraining_flow(config="tiny", overrides=[*overrides, f"drift.traffic={traffic}"])
    assert result["retrained"] and result["drift"]["retrain"]
    training = result["training"]
    assert training["version"] == "2" and training["reason"]
    client = MlflowClient(uri, uri)
    v2 = client.get_model_version("e2e", "2")
    assert v2.tags["gate.decision"] in {"promoted", "kept_challenger"} and "gate.same_data_rows" in v2.tags
    drift_runs = client.search_runs([client.get_experiment_by_name("forgeline-drift").experiment_id])
    assert {r.data.tags["drift.current"] for r in drift_runs} == {f"traffic log {traffic}"}
    assert all(r.data.metrics["drift.embedding_p"] < 0.01 for r in drift_runs)


def test_drift_on_a_bad_traffic_log_is_one_clear_message(tmp_path):
    (tmp_path / "traffic").mkdir()
    out = forgeline("drift", "--config", "tiny", "--set", f"tracking.workdir={tmp_path}", "--traffic", str(tmp_path / "traffic"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"forgeline: error: no traffic files (traffic-*.parquet) in {tmp_path / 'traffic'} (`forgeline serve --log-sample 0.1` "
        "writes it under <workdir>/traffic, or where serving.log_dir says)"]
