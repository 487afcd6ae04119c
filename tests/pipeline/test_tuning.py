"""`forgeline tune`: an Optuna study whose trials are child MLflow runs of one parent, pruned on their
validation curves, its best trial registered through the gate without retraining; and the bad inputs
(an empty or contradictory space, an unknown key, a reused study name, an unreachable storage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from forgeline.config.loader import load_config
from forgeline.errors import ConfigError
from forgeline.pipeline.tuning import open_study, study_name, tuning_flow
from tests.conftest import flow_overrides

ROOT = Path(__file__).resolve().parents[2]
SPACE = {"train.learning_rate": {"type": "categorical", "choices": [5.0e-3, 1.0e-12]},
         "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1}}


@pytest.mark.e2e
def test_a_study_with_child_runs_pruning_and_the_best_trial_registered_without_retraining(prefect_api, tiny, tmp_path,
                                                                                           sentiment_csv):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = flow_overrides(tmp_path, sentiment_csv, *tiny, "train.epochs=2", "train.patience=3", "train.batch_size=8",
                               f"tune.space={json.dumps(SPACE)}", "tune.trials=3", "tune.study=s1")
    cfg = load_config("tiny", overrides)
    (tmp_path / "state").mkdir(exist_ok=True)
    storage = f"sqlite:///{tmp_path / 'state' / 'optuna.db'}"
    study = open_study(cfg, storage, study_name(cfg), True)
    # a learning model (macro-F1 ~0.9 after one epoch), then one that learns nothing (worse at its first
    # report: pruned there), then the first again (its training a cache hit)
    for lr in (5.0e-3, 1.0e-12, 5.0e-3):
        study.enqueue_trial({"train.learning_rate": lr, "train.warmup_ratio": 0.0})

    result = tuning_flow(config="tiny", overrides=overrides)
    assert result["trials"] == 3 and result["states"] == {"complete": 2, "pruned": 1}, result
    client = MlflowClient(uri, uri)
    parent = client.get_run(result["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = {r.data.tags["forgeline.tune.trial"]: r for r in children if "forgeline.tune.trial" in r.data.tags}
    assert set(trials) == {"0", "1", "2"}
    pruned = trials["1"]
    assert pruned.data.tags["tune.state"] == "pruned" and "at epoch 1" in pruned.data.tags["tune.pruned_because"]
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_macro_f1")] == [1]  # stopped there
    assert trials["0"].data.tags["tune.state"] == "complete"
    assert len(client.get_metric_history(trials["0"].info.run_id, "val_macro_f1")) == 2
    # the parent tells the story: the study record and Optuna's plots
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {
        a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study.json", "study/optimization_history.png"} <= artifacts
    assert parent.data.metrics["tune.pruned"] == 1 and parent.info.status == "FINISHED"
    # the best trial went through evaluate → export → compress → register as a child run, its training a cache hit
    final = [r for r in children if r.data.tags.get("forgeline.tune.best_of") == "s1"]
    assert len(final) == 1 and final[0].data.tags["cache.train"] == "hit"
    assert final[0].data.tags["forgeline.tune.best_trial"] == str(result["best"]["number"]) == "0"
    assert result["pipeline"]["version"] == "1" and result["pipeline"]["promoted"]
    assert float(final[0].data.params["train.learning_rate"]) == 5.0e-3

    # the same study name with another space is refused, naming what differs
    other = load_config("tiny", [*overrides, 'tune.space={"train.epochs": {"type": "int", "low": 1, "high": 2}}'])
    with pytest.raises(ConfigError, match="study 's1' .* was made for another space"):
        open_study(other, storage, "s1", True)
    assert len(optuna.load_study(study_name="s1", storage=storage).trials) == 3


@pytest.mark.parametrize("space,needle", [
    ('{}', "tune.space is empty"),
    ('{"train.learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}', "low 0.1 is above high 0.01"),
    ('{"train.learning_rate": {"type": "float", "low": 0, "high": 0.01, "log": true}}', "log-scale range needs low > 0"),
    ('{"train.lr": {"type": "float", "low": 0.001, "high": 0.01}}', "did you mean 'train.learning_rate'?"),
    ('{"train.batch_size": {"type": "categorical", "choices": []}}', "non-empty 'choices'"),
])
def test_a_bad_search_space_is_one_message_exit_2(tmp_path, space, needle):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_"))}
    out = subprocess.run([sys.executable, "-m", "forgeline", "tune", "--config", "tiny", "--set", f"tune.space={space}",
                          "--set", f"tracking.workdir={tmp_path / 'wd'}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "wd" / "mlflow.db").exists()


def test_an_unreachable_storage_is_one_message(tmp_path):
    cfg = load_config("tiny", ["tune.storage=postgresql://nobody@127.0.0.1:1/none"])
    with pytest.raises(ConfigError, match=r"tune.storage postgresql://nobody@127.0.0.1:1/none: the Optuna storage cannot be"):
        open_study(cfg, cfg.tune.storage, "x", True)


def two_workers_share_a_study(tmp_path: Path, tiny, data: Path, *extra: str) -> None:
    """`--workers 2` on one study (``extra``: e.g. its storage): 6 trials in all, numbered 0-5, each one
    child run under the parent, trials from both processes."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = {"train.learning_rate": {"type": "float", "low": 1.0e-3, "high": 6.0e-3, "log": True}}
    overrides = flow_overrides(tmp_path, data, *tiny, "train.epochs=3", "train.batch_size=8",
                               f"tune.space={json.dumps(space)}", "tune.trials=6", "tune.study=shared",
                               "tune.pruner=none", "compress.student=false", *extra)
    result = tuning_flow(config="tiny", overrides=overrides, workers=2)
    cfg = load_config("tiny", overrides)
    study = optuna.load_study(study_name="shared", storage=cfg.tune.storage or f"sqlite:///{tmp_path / 'state' / 'optuna.db'}")
    assert sorted(t.number for t in study.trials) == list(range(6)) and result["states"] == {"complete": 6}
    client = MlflowClient(uri, uri)
    runs = client.search_runs([client.get_run(result["parent_run_id"]).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{result['parent_run_id']}'")
    trial_runs = [r for r in runs if "forgeline.tune.trial" in r.data.tags]
    assert sorted(int(r.data.tags["forgeline.tune.trial"]) for r in trial_runs) == list(range(6))  # no duplicates
    assert len({r.data.tags["forgeline.tune.worker"] for r in trial_runs}) == 2, [r.data.tags["forgeline.tune.worker"] for r in trial_runs]


@pytest.mark.e2e
def test_two_worker_processes_share_one_study_on_sqlite_with_the_right_total(prefect_api, tiny, tmp_path, sentiment_csv):
    two_workers_share_a_study(tmp_path, tiny, sentiment_csv)


@pytest.mark.e2e
def test_a_sigkilled_tune_leaves_its_trial_failed_and_its_run_killed_after_the_next_tune(prefect_api, tiny, tmp_path,
                                                                                        sentiment_csv):
    """Found by the reliability probe: `forgeline tune` SIGKILLed during a trial, then run again, finished
    with the right total but its summary kept the killed trial RUNNING (the next tune came before three
    missed heartbeats) and the trial's MLflow child run stayed RUNNING for good. The worker's process is
    gone from this host: the next tune fails the trial at once and marks its run KILLED."""
    from prefect.settings import PREFECT_API_URL

    from forgeline.settings import FAILPOINT_ENV

    space = {"train.learning_rate": {"type": "float", "low": 1.0e-3, "high": 6.0e-3, "log": True}}
    overrides = flow_overrides(tmp_path, sentiment_csv, *tiny, "train.epochs=1", f"tune.space={json.dumps(space)}",
                               "tune.trials=2", "tune.study=k", "compress.student=false")
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    env.pop("MLFLOW_TRACKING_URI", None)

    def tune(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "forgeline", "tune", "--config", "tiny",
                               *sum((["--set", o] for o in overrides), [])], cwd=ROOT, env=env | extra,
                              capture_output=True, text=True, timeout=600)

    killed = tune(**{FAILPOINT_ENV: "train.checkpoint:kill"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'state' / 'optuna.db'}"
    (stuck,) = optuna.load_study(study_name="k", storage=storage).trials
    assert stuck.state.name == "RUNNING"
    # the probe: a new workdir's "Creating initial MLflow database tables" and a weights progress bar
    assert "Creating initial" not in killed.stdout + killed.stderr and "Loading weights" not in killed.stderr

    again = tune()  # well within tune.heartbeat_s (30 s) of the kill
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.strip() == "", again.stderr[-3000:]  # a successful tune says nothing on stderr
    assert "INFO mlflow" not in again.stdout, [line for line in again.stdout.splitlines() if "INFO mlflow" in line]
    trials = sorted(optuna.load_study(study_name="k", storage=storage).trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]  # the killed one counts in the total
    assert "1 trials {'fail': 1, 'complete': 1}" not in again.stdout and "{'fail': 1, 'complete': 1}" in again.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    run = client.get_run(stuck.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "stale" in run.data.tags["forgeline.error"]
    (parent_id,) = {r.info.run_id for r in client.search_runs(
        [run.info.experiment_id], "tags.`forgeline.tune.study` = 'k'") if "forgeline.tune.trial" not in r.data.tags}
    assert client.get_model_version("e2e", "1").run_id != stuck.user_attrs["mlflow_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"  # resumed by the second tune, which owned and ended it
    running = client.search_runs([parent.info.experiment_id], "attributes.status = 'RUNNING'")
    assert running == [], [r.info.run_id for r in running]


def test_a_new_studys_trial_0_is_the_preset_and_keys_outside_the_space_are_sampled(tmp_path):
    """The search starts from what the user has: trial 0 asks for the preset's own values (so the study's
    best on validation is never below them); a key whose preset value is outside its range is sampled,
    and a study that already has trials gets no second trial 0."""
    from forgeline.pipeline.tuning import PRESET_ATTR, enqueue_preset, sample

    space = {"train.learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True},
             "train.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
             "train.epochs": {"type": "int", "low": 5, "high": 9},  # the preset's 3 is outside
             "model.dropout": {"type": "float", "low": 0.0, "high": 0.3}}  # unset in the preset
    cfg = load_config("default", [f"tune.space={json.dumps(space)}", "train.learning_rate=5.0e-5", "train.batch_size=32",
                                  "train.epochs=3"])
    study = open_study(cfg, f"sqlite:///{tmp_path / 'optuna.db'}", "s", True)
    assert enqueue_preset(study, cfg) == {"train.learning_rate": 5.0e-5, "train.batch_size": 32}
    first = study.ask()
    params = sample(first, cfg.tune.space)
    assert params["train.learning_rate"] == 5.0e-5 and params["train.batch_size"] == 32
    assert 5 <= params["train.epochs"] <= 9 and 0.0 <= params["model.dropout"] <= 0.3
    assert first.user_attrs[PRESET_ATTR] is True
    assert enqueue_preset(study, cfg) is None and len(study.trials) == 1
