"""A real PostgreSQL server (Debian's postgresql package) behind a real `mlflow server` with proxied
artifacts, and a real `prefect server` on the same PostgreSQL: the stack docker/compose.yaml runs."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import QUICK, flow_overrides, sentiment_rows
from tests.pipeline.test_deploy import BIN, free_port, start, stop

PASSWORD = "pg-test-0123456789abcdef"

pytestmark = pytest.mark.e2e


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture(scope="module")
def postgres():
    """host:port of a PostgreSQL server with databases ``mlflow``, ``prefect`` and ``optuna``, user ``forgeline``
    with a password (scram-sha-256 over TCP, as a real deployment)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql; .ci/run does)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="forgeline-pg-"))
    (root / "pw").write_text(PASSWORD)
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(root / "data"), "-U", "forgeline", f"--pwfile={root / 'pw'}",
        "--auth-host=scram-sha-256", "--auth-local=trust")
    run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        for db in ("mlflow", "prefect", "optuna"):
            run(str(bindir / "createdb"), "-h", str(root), "-p", str(port), "-U", "forgeline", db)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_pipeline_and_deploy_against_mlflow_and_prefect_servers_on_postgresql(postgres, tmp_path, tiny):
    import psycopg2

    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    port = free_port()
    # the driver named: SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3
    backend = f"postgresql+psycopg2://forgeline:{PASSWORD}@{postgres}/mlflow"
    mlflow_server = start([str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--serve-artifacts",
                           "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                           "--port", str(port), "--workers", "1"],
                          tmp_path / "mlflow.log", env, f"http://127.0.0.1:{port}/health")
    prefect_port = free_port()
    prefect_url = f"http://127.0.0.1:{prefect_port}/api"
    prefect_env = env | {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": prefect_url,
                         "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                         "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://forgeline:{PASSWORD}@{postgres}/prefect"}
    prefect_server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                           tmp_path / "prefect.log", prefect_env, f"{prefect_url}/health")
    try:
        data = tmp_path / "data.csv"
        sentiment_rows().to_csv(data, index=False)
        uri = f"http://127.0.0.1:{port}"
        overrides = flow_overrides(tmp_path, data, f"tracking.tracking_uri={uri}", *tiny, *QUICK)
        cmd = [str(BIN / "forgeline"), "run", "--config", "tiny"] + [a for o in overrides for a in ("--set", o)]
        out = subprocess.run(cmd, env=prefect_env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

        client = MlflowClient(uri, uri)
        champion = client.get_model_version_by_alias("e2e", "champion")
        assert champion.tags["forgeline.complete"] == "true"
        # the records are in PostgreSQL, the files went through the server (proxied) into its store
        with psycopg2.connect(backend.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
            cur.execute("SELECT name, version FROM model_versions")
            assert cur.fetchall() == [("e2e", int(champion.version))]
            cur.execute("SELECT status FROM runs")
            assert [s for (s,) in cur.fetchall()] == ["FINISHED"]
        assert client.get_run(champion.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
        assert any((tmp_path / "artifacts").rglob("model*.onnx")), "the registered variants, whichever were bundled"
        assert not (tmp_path / "state" / "mlflow.db").exists(), "nothing went to the local SQLite default"

        # the flow run was recorded by the Prefect server, which keeps its state in PostgreSQL too
        deploy = [str(BIN / "forgeline"), "deploy", "--config", "tiny", "--name", "pg", "--pool", "pg-pool"]
        out = subprocess.run(deploy + [a for o in overrides for a in ("--set", o)], env=prefect_env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        with httpx.Client(base_url=prefect_url, timeout=30) as api:
            assert api.get("/deployments/name/forgeline-retraining/pg").json()["work_pool_name"] == "pg-pool"
            runs = api.post("/flow_runs/filter", json={"limit": 10}).json()
            assert [r["state"]["type"] for r in runs if r["name"]] == ["COMPLETED"]
        with psycopg2.connect(f"postgresql://forgeline:{PASSWORD}@{postgres}/prefect") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM deployment")
            assert cur.fetchone()[0] == 1
    finally:
        stop(prefect_server)
        stop(mlflow_server)


def test_two_tuning_workers_share_one_study_on_postgresql(postgres, prefect_api, tiny, tmp_path, sentiment_csv):
    """The study in PostgreSQL (as for workers on several machines): the advisory lock keeps the total exact."""
    from tests.pipeline.test_tuning import two_workers_share_a_study

    two_workers_share_a_study(tmp_path, tiny, sentiment_csv,
                              f"tune.storage=postgresql+psycopg2://forgeline:{PASSWORD}@{postgres}/optuna")
