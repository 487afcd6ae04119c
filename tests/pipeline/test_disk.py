"""Bounded disk: what a run leaves in the workdir beyond the model it registers, and `forgeline gc`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path

from forgeline.cli import main
from forgeline.inference.contract import VARIANT_FILES
from forgeline.pipeline.disk import disk_bytes
from forgeline.registry.client import logged_model_id
from forgeline.pipeline.flows import training_flow
from tests.conftest import QUICK, flow_overrides, sentiment_rows

pytestmark = pytest.mark.e2e


def registered_dir(client: MlflowClient, name: str, version: str) -> Path:
    model_id = logged_model_id(client.get_model_version(name, version))
    return Path(local_file_uri_to_path(client.get_logged_model(model_id).artifact_location))


def test_a_default_run_leaves_at_most_300_mb_in_all(prefect_api, tmp_path, monkeypatch):
    """The default preset's model and compression (full MiniLM, the student, every variant): the files
    are as large as a full run's; only the rows and steps are cut so the test takes minutes."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / "wd"
    result = training_flow(config="default", overrides=[
        f"tracking.workdir={workdir}", "registry.model_name=disk", "data.sample_rows=300", "train.max_steps=4",
        "train.progress_bar=false", "compress.distill_epochs=1", "compress.importance_batches=2",
        "compress.calibration_rows=32", "compress.latency_rounds=1", "registry.min_gain_over_chance=null",
        "compress.distill_transfer_rows=200", "compress.validation_rows=100"])
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    model_dir = registered_dir(client, "disk", result["version"])
    model, total = disk_bytes(model_dir), disk_bytes(workdir)
    defaults = {v for k, v in client.get_model_version("disk", result["version"]).tags.items() if k.startswith("default_variant.")}
    assert {p.name for p in model_dir.rglob("*.onnx")} == {VARIANT_FILES[v] for v in defaults}, "compress.bundle=defaults"
    # the run's whole footprint: the registered defaults, and the teacher's checkpoint and fp32 ONNX (91 + 90 MB)
    # that the stage cache keeps for the next run. It was 1.66 GB, then 402 MB with every variant bundled.
    assert total <= 300e6, f"{total / 1e6:.0f} MB in the workdir, {model / 1e6:.0f} MB of it the registered model"
    assert list((workdir / "runs").iterdir()) == [], "a finished run's scratch is removed"
    # the student distilled on 200 corpus texts outside the 300-row sample as well
    metrics = client.get_run(result["run_id"]).data.metrics
    assert metrics["student.transfer_rows"] == 200
    # and the variants were chosen on the split's 30 validation rows and 100 held-out ones
    assert metrics["compress.val_rows"] == 130


def test_gc_trims_the_cache_failed_runs_and_unaliased_versions(prefect_api, tmp_path, capsys, monkeypatch, tiny):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data.csv"
    sentiment_rows().to_csv(data, index=False)
    first = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, *QUICK))
    # a worse second version: registered, stays challenger (the first keeps champion)
    second = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, *QUICK, "train.learning_rate=1e-12"))
    third = training_flow(config="tiny", overrides=flow_overrides(tmp_path, data, *tiny, *QUICK, "train.learning_rate=1e-11"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    aliased = {v: client.get_model_version("e2e", v).aliases for v in (first["version"], second["version"], third["version"])}
    unaliased = [v for v, a in aliased.items() if not a]
    assert unaliased, aliased
    doomed = [registered_dir(client, "e2e", v) for v in unaliased]
    runs = tmp_path / "state" / "runs"
    for i in range(5):  # scratch of failed runs, oldest first
        (runs / f"failed{i}").mkdir(parents=True)
        (runs / f"failed{i}" / ".failed").touch()
        os.utime(runs / f"failed{i}" / ".failed", (1000 + i, 1000 + i))

    sets = ["--set", f"tracking.workdir={tmp_path / 'state'}", "--set", f"tracking.tracking_uri={uri}",
            "--set", "tracking.keep_failed_runs=2"]
    assert main(["gc", *sets, "--cache-max-gb", "0", "--keep-versions", "0"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in runs.iterdir()) == ["failed3", "failed4"]
    assert "removed the scratch folder of failed run failed0" in out
    cache = tmp_path / "state" / "cache"
    assert not [p for p in cache.iterdir() if p.name != "blobs"] and not list((cache / "blobs").iterdir())
    for v, a in aliased.items():
        if a:
            assert client.get_model_version("e2e", v).aliases == a, "aliased versions stay"
        else:
            assert f"deleted model version e2e v{v} and its artifacts" in out
    assert not any(d.exists() for d in doomed), "their artifacts are gone too"
    # the probe saw `gc --keep-versions 0` free nothing: the report now says what the workdir takes on disk
    before, after = (float(x) for x in re.search(r"workdir: ([\d.]+) MB before, ([\d.]+) MB after", out).groups())
    assert after < before
    assert len(client.search_model_versions("name='e2e'")) == len(aliased) - len(unaliased)

    assert main(["gc", *sets, "--keep-versions", "-1"]) == 2
    assert "--keep-versions must be 0 or more" in capsys.readouterr().err


OWNER = """
import sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from forgeline.pipeline.doctor import Heartbeat, owner_tags
client = MlflowClient(sys.argv[1], sys.argv[1])
exp = client.get_experiment(client.create_experiment("forgeline", artifact_location=sys.argv[3]))
run = client.create_run(exp.experiment_id, tags=owner_tags())
scratch = Path(sys.argv[2]) / run.info.run_id
scratch.mkdir(parents=True)
(scratch / "checkpoint.bin").write_bytes(b"x" * 5_000_000)
Heartbeat(client, run.info.run_id).__enter__()
print(run.info.run_id, flush=True)
time.sleep(600)
"""


@pytest.mark.faults
def test_gc_alone_marks_a_killed_run_and_frees_its_scratch_and_says_what_holds_the_space(tmp_path, capsys, monkeypatch):
    """Found by the reliability probe: a SIGKILLed run's scratch folder stayed until `doctor` with
    keep_failed_runs=0, and gc's report put its 56 MB on the cache. gc now runs the stale-run sweep: a run
    whose process is gone from this host, or whose heartbeat lapsed on another, is marked KILLED and its
    scratch removed; a run on another host that still beats is left alone."""
    import signal
    import subprocess
    import sys
    import time

    from forgeline.pipeline.doctor import HEARTBEAT_EVERY_TAG, HEARTBEAT_TAG, HOST_TAG, PID_TAG

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    state = tmp_path / "state"
    runs = state / "runs"
    uri = f"sqlite:///{state / 'mlflow.db'}"
    runs.mkdir(parents=True)
    owner = subprocess.Popen([sys.executable, "-c", OWNER, uri, str(runs), (state / "mlartifacts").as_uri()],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, FORGELINE_HEARTBEAT_S="0.5"))
    killed = owner.stdout.readline().strip()
    client = MlflowClient(uri, uri)
    first = client.get_run(killed).data.tags[HEARTBEAT_TAG]
    deadline = time.time() + 30
    while client.get_run(killed).data.tags[HEARTBEAT_TAG] == first:  # it beats
        assert time.time() < deadline
        time.sleep(0.2)
    exp = client.get_experiment_by_name("forgeline").experiment_id
    now = time.time()

    def elsewhere(beat_age_s: float) -> str:  # a run of a machine this one cannot see the processes of
        run = client.create_run(exp, tags={PID_TAG: "1", HOST_TAG: "another-machine", HEARTBEAT_TAG: f"{now - beat_age_s:.0f}",
                                           HEARTBEAT_EVERY_TAG: "30"})
        (runs / run.info.run_id).mkdir()
        (runs / run.info.run_id / "part.bin").write_bytes(b"y" * 1_000_000)
        return run.info.run_id

    lapsed, beating = elsewhere(3600), elsewhere(5)
    sets = ["--set", f"tracking.workdir={state}"]
    assert main(["gc", *sets]) == 0
    out = capsys.readouterr().out
    assert client.get_run(killed).info.status == "RUNNING" and (runs / killed).is_dir(), "a live owner's run stays"
    assert f"marked KILLED (its process is gone or stopped beating): run {lapsed}" in out
    assert f"removed the scratch folder of killed run {lapsed} (1.0 MB)" in out
    assert client.get_run(lapsed).info.status == "KILLED" and not (runs / lapsed).exists()

    owner.send_signal(signal.SIGKILL)
    owner.wait(30)
    assert main(["gc", *sets]) == 0  # with the default tracking.keep_failed_runs (3), no doctor
    out = capsys.readouterr().out
    assert client.get_run(killed).info.status == "KILLED" and not (runs / killed).exists(), out
    assert f"marked KILLED (its process is gone or stopped beating): run {killed}" in out
    assert f"removed the scratch folder of killed run {killed} (5.0 MB)" in out
    assert client.get_run(beating).info.status == "RUNNING" and (runs / beating).is_dir()
    held = re.search(r"held by: (.*)", out).group(1)
    assert "run scratch 1.0 MB" in held and "stage cache" not in held, held  # the cache is empty: not blamed
    assert f"run scratch {beating}: RUNNING, 1.0 MB" in out
