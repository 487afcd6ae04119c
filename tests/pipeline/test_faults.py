"""Fault matrix (docs/faults.md): real `forgeline run` processes killed with SIGKILL inside train,
export and register, two runs at once on one workdir, a real full disk (a small tmpfs), a real
tracking server stopped mid-registration. Each time: a clear end, nothing half-registered or aliased,
and the next run works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from mlflow.tracking import MlflowClient

from forgeline.cli import main
from forgeline.registry.client import COMPLETE_TAG
from forgeline.settings import FAILPOINT_ENV
from tests.conftest import small_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.fixture(autouse=True)
def shared_prefect_api(prefect_api, monkeypatch):
    """The runs here report to this module's Prefect API instead of each starting a temporary server
    (about 8 s a run, 13 runs); what they test is MLflow, the cache and the disk."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())


def run_command(tmp_path, data, tiny, *extra: str) -> list[str]:
    """``forgeline run`` on the tiny BERT: what these tests check does not depend on its weights."""
    args = sum((["--set", o] for o in small_overrides(tmp_path, data, "registry.model_name=faults", *tiny, *extra)), [])
    return [sys.executable, "-m", "forgeline", "run", "--config", "tiny", *args]


def run_env(env_extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, **env_extra)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def forgeline_run(tmp_path, data, tiny, env_extra: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(run_command(tmp_path, data, tiny, *extra), env=run_env(env_extra), capture_output=True, text=True,
                          timeout=600)


def workdir_client(tmp_path) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def test_sigkill_inside_register_leaves_nothing_aliased_or_reused_and_is_cleaned_up(tmp_path, sentiment_csv, tiny, capsys,
                                                                                     monkeypatch):
    # mlflow.set_tracking_uri (earlier tests) exports $MLFLOW_TRACKING_URI; this store is the workdir's
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    killed = forgeline_run(tmp_path, sentiment_csv, tiny, {FAILPOINT_ENV: "register.tagged:kill"})
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
    models = tmp_path / "state" / "mlartifacts" / "models"
    assert not list(models.rglob("*.onnx")), "its logged model's files went with it"
    assert client.search_model_versions("name='faults'") == []
    assert main(["doctor", "--config", "tiny", *overrides]) == 0
    assert "nothing to repair" in capsys.readouterr().out

    # killed right after the version is created; the next run, without doctor, marks it and registers anew
    killed = forgeline_run(tmp_path, sentiment_csv, tiny, {FAILPOINT_ENV: "register.created:kill"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (second_half,) = client.search_model_versions("name='faults'")
    again = forgeline_run(tmp_path, sentiment_csv, tiny, {})
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = sorted(r.info.status for r in client.search_runs([exp.experiment_id]))
    assert statuses == ["FINISHED", "KILLED", "KILLED"], "no run is left RUNNING"
    complete = [mv for mv in client.search_model_versions("name='faults'") if mv.tags.get(COMPLETE_TAG) == "true"]
    assert len(complete) == 1 and complete[0].version not in (half.version, second_half.version)
    assert client.get_model_version("faults", complete[0].version).aliases == ["champion"]


def test_sigkill_in_train_and_in_export_leaves_nothing_behind_that_the_next_run_trips_on(tmp_path, sentiment_csv, tiny,
                                                                                         capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for point in ("train.checkpoint", "export.written"):
        killed = forgeline_run(tmp_path, sentiment_csv, tiny, {FAILPOINT_ENV: f"{point}:kill"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    client = workdir_client(tmp_path)
    exp = client.get_experiment_by_name("forgeline")
    runs = client.search_runs([exp.experiment_id])
    # the second run, starting, marked the first KILLED (its process was gone); the second is still RUNNING
    assert sorted(r.info.status for r in runs) == ["KILLED", "RUNNING"]
    assert client.search_model_versions("name='faults'") == []
    cache = tmp_path / "state" / "cache"
    assert [p.name.split("-")[0] for p in cache.iterdir() if p.name.startswith("train-")] == ["train"], \
        "the run killed in export had stored its finished training; the one killed in train stored nothing"
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and p.is_dir()], "no half cache entry"

    overrides = sum((["--set", o] for o in small_overrides(tmp_path, sentiment_csv)), [])
    assert main(["doctor", "--config", "tiny", *overrides]) == 0
    assert capsys.readouterr().out.count("marked KILLED") == 1
    scratch = tmp_path / "state" / "runs"
    # a process killed outright wrote no error.log: its scratch (a half checkpoint, an export) is removed
    assert not any((scratch / r.info.run_id).exists() for r in runs), list(scratch.iterdir())

    again = forgeline_run(tmp_path, sentiment_csv, tiny, {})
    assert again.returncode == 0, again.stderr[-3000:]
    # a successful run writes nothing of MLflow's own on stderr ("Successfully registered model", "Created version")
    assert "registered model" not in again.stderr and "Created version" not in again.stderr, again.stderr[-3000:]
    assert sorted(r.info.status for r in client.search_runs([exp.experiment_id])) == ["FINISHED", "KILLED", "KILLED"]
    (mv,) = client.search_model_versions("name='faults'")
    mv = client.get_model_version("faults", mv.version)
    assert mv.tags[COMPLETE_TAG] == "true" and mv.aliases == ["champion"]
    finished = next(r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED")
    assert finished.data.tags["cache.train"] == "hit" and finished.data.tags["cache.export"] == "miss"
    assert not (scratch / finished.info.run_id).exists(), "a finished run's scratch is removed"


def test_runs_at_once_on_an_existing_workdir_register_one_version_per_config(tmp_path, sentiment_csv, tiny, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = forgeline_run(tmp_path, sentiment_csv, tiny, {})
    assert first.returncode == 0, first.stderr[-3000:]
    # the same new config twice, started together: both compute everything, one registers
    procs = [subprocess.Popen(run_command(tmp_path, sentiment_csv, tiny, "compress.prune_amount=0.1"), env=run_env({}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    client = workdir_client(tmp_path)
    versions = client.search_model_versions("name='faults'")
    keys = [mv.tags["forgeline.cache_key"] for mv in versions]
    assert len(versions) == 2 and len(set(keys)) == 2, "one version per cache key"
    assert all(mv.tags[COMPLETE_TAG] == "true" for mv in versions)
    exp = client.get_experiment_by_name("forgeline")
    assert sorted(r.info.status for r in client.search_runs([exp.experiment_id])) == ["FINISHED"] * 3
    decisions = sorted(r.data.tags.get("cache.register") for r in client.search_runs([exp.experiment_id]))
    assert decisions == ["hit", "miss", "miss"], "the later of the two found the earlier's version"

    # four different configs at once under a cache bound small enough that every run prunes while the
    # others write: one in three such runs failed with FileNotFoundError from a cache walk (the probe)
    procs = [subprocess.Popen(run_command(tmp_path, sentiment_csv, tiny, f"compress.prune_amount=0.{i}",
                                          "tracking.cache_max_gb=0.02"), env=run_env({}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (3, 4, 5, 6)]  # 0.2: the first run's
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    assert not [err for _, err in outs if "internal error" in err]
    assert len(client.search_model_versions("name='faults'")) == 6, "one new version per config"


def test_a_full_disk_ends_the_run_with_one_message_and_registers_nothing(tmp_path, sentiment_csv, tiny, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # a real full disk: the workdir on a 12 MB tmpfs (the tiny BERT's checkpoint, ONNX export and
    # compressed variants come to more than 30 MB)
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        full = subprocess.run(run_command(small, sentiment_csv, tiny), env=run_env({}), capture_output=True, text=True,
                              timeout=600)
        assert full.returncode == 2, full.stderr[-3000:]
        message = [line for line in full.stderr.splitlines() if line.startswith("forgeline: error:")]
        assert len(message) == 1 and "the disk filled up during the run" in message[0], full.stderr[-3000:]
        assert "forgeline gc" in message[0] and "Traceback" not in full.stderr
        client = workdir_client(small)
        assert client.search_model_versions("name='faults'") == []
        assert not [p for p in (small / "state" / "cache").glob(".*")], "no half cache entry"
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)

    # the disk fills inside register, after the version exists: deleted, no alias moved
    ok = forgeline_run(tmp_path, sentiment_csv, tiny, {})
    assert ok.returncode == 0, ok.stderr[-3000:]
    failed = forgeline_run(tmp_path, sentiment_csv, tiny, {FAILPOINT_ENV: "register.created:enospc"}, "compress.prune_amount=0.1")
    assert failed.returncode == 2 and "the disk filled up during the run (No space left on device" in failed.stderr
    client = workdir_client(tmp_path)
    (mv,) = client.search_model_versions("name='faults'")
    assert client.get_model_version("faults", mv.version).aliases == ["champion"]
    exp = client.get_experiment_by_name("forgeline")
    failed_run = [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FAILED"]
    assert len(failed_run) == 1 and failed_run[0].data.tags["forgeline.error"].startswith("DiskFullError")


def test_a_tracking_server_lost_inside_register_fails_clearly_and_leaves_no_usable_half_version(tmp_path, sentiment_csv, tiny,
                                                                                               capsys):
    import time

    from tests.pipeline.test_deploy import BIN, free_port, start, stop

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_args = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                   "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                   "--workers", "1"]
    env = run_env({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    server = start(server_args, tmp_path / "mlflow.log", env, f"{uri}/health")
    # the failpoint only holds the run for 8 s right after the version exists; the server loss is real
    run_env_ = env | {FAILPOINT_ENV: "register.created:sleep", "FORGELINE_FAILPOINT_SLEEP_S": "8",
                      "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    proc = subprocess.Popen(run_command(tmp_path, sentiment_csv, tiny, f"tracking.tracking_uri={uri}"), env=run_env_,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(uri, uri)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            try:
                if client.search_model_versions("name='faults'"):
                    break
            except Exception:  # noqa: BLE001 - the registry may not exist yet
                pass
            time.sleep(0.3)
        stop(server)  # the tracking server goes away while the version is half-registered
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(server)
    assert proc.returncode == 2, err[-3000:]
    message = [line for line in err.splitlines() if line.startswith("forgeline: error:")]
    assert len(message) == 1 and uri in message[0], err[-3000:]

    server = start(server_args, tmp_path / "mlflow2.log", env, f"{uri}/health")  # back, same store
    try:
        (half,) = client.search_model_versions("name='faults'")
        half = client.get_model_version("faults", half.version)
        assert half.tags.get(COMPLETE_TAG) == "false" and not half.aliases
        overrides = sum((["--set", o] for o in small_overrides(tmp_path, sentiment_csv, f"tracking.tracking_uri={uri}")), [])
        assert main(["doctor", "--config", "tiny", *overrides]) == 0
        out = capsys.readouterr().out
        assert f"deleted incomplete model version faults v{half.version}" in out and "marked KILLED" in out
        assert client.search_model_versions("name='faults'") == []
    finally:
        stop(server)
