"""A real `prefect server` and `prefect worker` on loopback; a real `mlflow server` on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import QUICK, flow_overrides, sentiment_rows

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path, env: dict[str, str], ready_url: str | None, timeout: float = 180):
    proc = subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    if ready_url is None:
        return proc
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited early:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{args} not ready:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_UI_ENABLED": "false",
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
                        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 home / "server.log", env, f"{url}/health")
    yield url, env, home
    stop(proc)


def test_deploy_trigger_and_worker_registers_a_version(prefect_server, tmp_path, tiny):
    url, env, home = prefect_server
    data = tmp_path / "data.csv"
    sentiment_rows().to_csv(data, index=False)
    overrides = flow_overrides(tmp_path, data, *tiny, *QUICK)
    deploy_cmd = [str(BIN / "forgeline"), "deploy", "--config", "tiny", "--name", "ci", "--pool", "ci-pool",
                  "--cron", "0 3 * * *"]
    for o in overrides:
        deploy_cmd += ["--set", o]
    out = subprocess.run(deploy_cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deployed forgeline-retraining/ci" in out.stdout

    with httpx.Client(base_url=url, timeout=30) as api:
        dep = api.get("/deployments/name/forgeline-retraining/ci").json()
        assert dep["work_pool_name"] == "ci-pool" and dep["global_concurrency_limit"]["limit"] == 1
        assert dep["parameters"]["config"] == "tiny"
        # the worker imports the installed package's flow and runs where `deploy` was called
        assert dep["entrypoint"] == "forgeline.pipeline.flows.retraining_flow"
        assert dep["job_variables"]["working_dir"] == os.getcwd()
        schedules = dep["schedules"]
        assert schedules and schedules[0]["schedule"]["cron"] == "0 3 * * *"
        limit = api.get("/concurrency_limits/tag/gpu").json()
        assert limit["concurrency_limit"] == 1
        for _attempt in range(5):  # the SQLite-backed server answers 5xx now and then on a loaded machine
            created = api.post(f"/deployments/{dep['id']}/create_flow_run", json={})
            if created.is_success:
                break
            time.sleep(2)
        assert created.is_success, created.text
        run = created.json()

        worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "ci-pool", "--type", "process"],
                       tmp_path / "worker.log", env, None)
        try:
            deadline = time.time() + 600
            state = None
            while time.time() < deadline:
                state = api.get(f"/flow_runs/{run['id']}").json()["state"]["type"]
                if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                    break
                time.sleep(2)
        finally:
            stop(worker)
    assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-6000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    versions = client.search_model_versions("name='e2e'")
    assert len(versions) == 1
    assert str(client.get_model_version_by_alias("e2e", "champion").version) == "1"


def test_pipeline_against_a_real_mlflow_server(prefect_api, tmp_path, tiny):
    from forgeline.pipeline.flows import training_flow

    port = free_port()
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "1"], tmp_path / "mlflow.log", env, f"http://127.0.0.1:{port}/health")
    try:
        data = tmp_path / "data.csv"
        rows = sentiment_rows()
        rows["source"] = ["shop", "forum"] * (len(rows) // 2)
        rows.to_csv(data, index=False)
        uri = f"http://127.0.0.1:{port}"
        result = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, f"tracking.tracking_uri={uri}",
                                                                       "data.slice_columns=[source]"))
        client = MlflowClient(uri, uri)
        assert str(client.get_model_version_by_alias("e2e", "champion").version) == result["version"]
        # the model card is what a reviewer reads on the version page: the REST API returns it
        got = httpx.get(f"{uri}/api/2.0/mlflow/model-versions/get", params={"name": "e2e", "version": result["version"]})
        card = got.json()["model_version"]["description"]
        assert card.startswith(f"# e2e v{result['version']}\n\n**Gate: promoted to champion.**")
        for needle in ("## Data", "## Test metrics", "95% CI", "## Slices", "| source=forum |", "| class=positive |",
                       "## Compression variants", "## Limits", "## How to load", "gate.json"):
            assert needle in card, needle
        # artifacts went through the server into its artifact store
        assert any((tmp_path / "artifacts").rglob("model*.onnx")), "the registered variants, whichever were bundled"
        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        (tmp_path / "dl").mkdir()  # not MLflow's default: a temporary folder it never removes
        out = mlflow.pyfunc.load_model("models:/e2e@champion", dst_path=str(tmp_path / "dl")).predict(pd.DataFrame({"text": ["the ride is wonderful"]}))
        assert out.loc[0, "label"] in {"positive", "negative"}
    finally:
        stop(server)


def test_deploy_without_a_server_url_is_an_error_not_a_temporary_deployment(tmp_path):
    """Without PREFECT_API_URL Prefect would deploy to a temporary server that exits with the command."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "forgeline.cli", "deploy"], cwd=Path(__file__).resolve().parents[2],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "PREFECT_API_URL is not set" in out.stderr
    assert "Starting temporary server" not in out.stdout + out.stderr
