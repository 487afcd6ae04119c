"""The embedded SQLite store: several processes starting on a new one at once (two `forgeline run` started
together), and a workdir copied or moved elsewhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
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


def test_a_copied_workdir_is_refused_until_relocated_and_never_writes_or_deletes_in_the_original(tmp_path, capsys,
                                                                                                 monkeypatch):
    """The reliability probe: the SQLite store records absolute artifact paths, so after `cp -a wdA wdB` runs
    in wdB wrote into wdA, and `forgeline gc` in wdB deleted wdA's version files."""
    import shutil

    from mlflow.tracking import MlflowClient

    from forgeline.cli import main
    from forgeline.config.schema import TrackingConfig
    from forgeline.errors import ConfigError
    from forgeline.pipeline.tracking import ensure_experiment

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the CLI then finds the store in the workdir
    wd_a, wd_b = tmp_path / "wdA", tmp_path / "wdB"
    uri_a = f"sqlite:///{wd_a / 'mlflow.db'}"
    client = MlflowClient(uri_a, uri_a)
    exp = ensure_experiment(client, TrackingConfig(workdir=str(wd_a)), uri_a)
    run = client.create_run(exp)
    client.log_text(run.info.run_id, "weights", "checkpoint/model.bin")
    client.set_terminated(run.info.run_id, "FAILED")
    shutil.copytree(wd_a, wd_b)

    uri_b = f"sqlite:///{wd_b / 'mlflow.db'}"
    client_b = MlflowClient(uri_b, uri_b)
    with pytest.raises(ConfigError, match="copied or moved.*forgeline doctor --relocate"):
        ensure_experiment(client_b, TrackingConfig(workdir=str(wd_b)), uri_b)
    sets = ["--config", "tiny", "--set", f"tracking.workdir={wd_b}", "--set", "tracking.tracking_uri=null"]
    assert main(["gc", *sets, "--keep-versions", "0"]) == 2 and "--relocate" in capsys.readouterr().err
    assert (wd_a / "mlartifacts").exists() and list((wd_a / "mlartifacts").rglob("model.bin")), "wdA untouched"

    assert main(["doctor", "--relocate", *sets]) == 0
    assert f"-> {(wd_b / 'mlartifacts').resolve().as_uri()}" in capsys.readouterr().out
    assert ensure_experiment(client_b, TrackingConfig(workdir=str(wd_b)), uri_b) == exp
    assert client_b.get_run(run.info.run_id).info.artifact_uri.startswith((wd_b / "mlartifacts").resolve().as_uri())
    shutil.rmtree(wd_a)  # the original may go: the copy reads its own files
    assert (Path(client_b.download_artifacts(run.info.run_id, "checkpoint/model.bin", str(tmp_path)))).read_text() == "weights"
    # gc in the relocated copy collects the failed run's artifacts there, and only there
    assert main(["gc", *sets, "--set", "tracking.keep_failed_runs=0"]) == 0
    assert f"deleted the artifacts of run {run.info.run_id}" in capsys.readouterr().out
    assert not list((wd_b / "mlartifacts").rglob("model.bin"))
