"""`forgeline ui`: the MLflow UI on the store `forgeline run` wrote, and a clear error when there is none."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from forgeline.cli import main
from tests.pipeline.test_deploy import free_port, start, stop

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}


def test_ui_without_a_store_is_an_error_and_creates_none(tmp_path, monkeypatch, capsys):
    """mlflow ui would create an empty store and show an empty UI: a wrong directory looked like lost runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["ui", "--set", f"tracking.workdir={tmp_path / 'wd'}"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and "forgeline run" in err and "tracking.workdir" in err
    assert not (tmp_path / "wd" / "mlflow.db").exists()


@pytest.mark.e2e  # a real tracking or UI server, started for this test
def test_ui_serves_the_runs_of_the_workdir_store(tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("forgeline")
    run = client.create_run(exp)
    client.set_terminated(run.info.run_id)
    port = free_port()
    proc = start([sys.executable, "-m", "forgeline.cli", "ui", "--port", str(port), "--set", f"tracking.workdir={workdir}"],
                 tmp_path / "ui.log", _env() | {"PYTHONPATH": str(ROOT)}, f"http://127.0.0.1:{port}/health")
    try:
        body = {"experiment_ids": [exp], "max_results": 10}
        resp = httpx.post(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", json=body, timeout=30)
        assert resp.status_code == 200, resp.text
        assert [r["info"]["run_id"] for r in resp.json()["runs"]] == [run.info.run_id]
    finally:
        stop(proc)
