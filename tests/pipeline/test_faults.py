"""Fault matrix, registration part: a run SIGKILLed inside register leaves no aliased or reusable
half-version, `forgeline doctor` cleans up, and the next run registers normally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from mlflow.tracking import MlflowClient

from forgeline.cli import main
from forgeline.registry.client import COMPLETE_TAG
from forgeline.settings import FAILPOINT_ENV
from tests.conftest import small_overrides


def forgeline_run(tmp_path, data, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    args = sum((["--set", o] for o in small_overrides(tmp_path, data, "registry.model_name=faults")), [])
    env = dict(os.environ, **env_extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "forgeline", "run", "--config", "tiny", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_sigkill_inside_register_leaves_nothing_aliased_or_reused_and_is_cleaned_up(tmp_path, sentiment_csv, capsys,
                                                                                     monkeypatch):
    # mlflow.set_tracking_uri (earlier tests) exports $MLFLOW_TRACKING_URI; this store is the workdir's
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    killed = forgeline_run(tmp_path, sentiment_csv, {FAILPOINT_ENV: "register.tagged:kill"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    uri = f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    (half,) = client.search_model_versions("name='faults'")
    half = client.get_model_version("faults", half.version)  # search results carry no aliases
    assert half.tags[COMPLETE_TAG] == "false" and not half.aliases, "no alias points at a half-registered version"
    exp = client.get_experiment_by_name("forgeline")
    (stuck,) = client.search_runs([exp.experiment_id])
    assert stuck.info.status == "RUNNING"

    # forgeline doctor: the run is marked KILLED, the half version deleted; a second call finds nothing
    overrides = sum((["--set", o] for o in small_overrides(tmp_path, sentiment_csv)), [])
    assert main(["doctor", "--config", "tiny", *overrides]) == 0
    out = capsys.readouterr().out
    assert f"marked KILLED (its process is gone): run {stuck.info.run_id}" in out
    assert f"deleted incomplete model version faults v{half.version}" in out
    assert client.get_run(stuck.info.run_id).info.status == "KILLED"
    assert client.search_model_versions("name='faults'") == []
    assert main(["doctor", "--config", "tiny", *overrides]) == 0
    assert "nothing to repair" in capsys.readouterr().out

    # killed right after the version is created; the next run, without doctor, marks it and registers anew
    killed = forgeline_run(tmp_path, sentiment_csv, {FAILPOINT_ENV: "register.created:kill"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (second_half,) = client.search_model_versions("name='faults'")
    again = forgeline_run(tmp_path, sentiment_csv, {})
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = sorted(r.info.status for r in client.search_runs([exp.experiment_id]))
    assert statuses == ["FINISHED", "KILLED", "KILLED"], "no run is left RUNNING"
    complete = [mv for mv in client.search_model_versions("name='faults'") if mv.tags.get(COMPLETE_TAG) == "true"]
    assert len(complete) == 1 and complete[0].version not in (half.version, second_half.version)
    assert client.get_model_version("faults", complete[0].version).aliases == ["champion"]
