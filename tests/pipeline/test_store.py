"""Several processes starting on one new SQLite store at once (two `forgeline run` started together)."""

from __future__ import annotations

import subprocess
import sys

from mlflow.tracking import MlflowClient

from tests.serving.conftest import ROOT

SCRIPT = """
import sys
from forgeline.config.schema import TrackingConfig
from forgeline.pipeline.tracking import ensure_experiment, open_client
uri, workdir = sys.argv[1], sys.argv[2]
client = open_client(uri)
exp = ensure_experiment(client, TrackingConfig(workdir=workdir, experiment="forgeline"), uri)
client.set_terminated(client.create_run(exp).info.run_id)
"""


def test_processes_starting_together_on_a_new_sqlite_store_all_succeed(tmp_path):
    """Before, MLflow's schema migration ran in each and the losers died with
    `sqlite3.OperationalError: duplicate column name: step` (or the experiment already existed)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, uri, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0] * 4, [err[-2000:] for rc, err in results if rc]
    client = MlflowClient(uri)
    experiments = [e for e in client.search_experiments() if e.name == "forgeline"]
    assert len(experiments) == 1
    assert len(client.search_runs([experiments[0].experiment_id])) == 4
