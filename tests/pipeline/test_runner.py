"""The stage runner: one way to key, cache, log, check and wrap every stage (toy stages, a real MLflow
store, a real Prefect temporary API through the flow that calls them)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.states import Completed, Failed

from forgeline.config.loader import load_config
from forgeline.errors import DataValidationError, ParityError
from forgeline.pipeline.cache import StageCache
from forgeline.pipeline.runner import Stage, StageRunner, retry_on_io
from forgeline.pipeline.tracking import Tracker
from tests.conftest import sqlite_store


def test_io_failures_are_retried_bad_data_is_not():
    from mlflow.exceptions import MlflowException

    assert retry_on_io(None, None, Failed(data=OSError("disk hiccup")))
    assert retry_on_io(None, None, Failed(data=MlflowException("tracking server unavailable")))
    assert not retry_on_io(None, None, Failed(data=DataValidationError("too many bad rows")))
    assert not retry_on_io(None, None, Failed(data=ValueError("bug")))
    assert not retry_on_io(None, None, Completed())


@dataclass
class Doubled:
    value: int
    path: Path


calls: list[str] = []


def _double(env, n: int) -> Doubled:
    calls.append("double")
    out = env.run_dir / "double.txt"
    out.write_text(str(2 * n))
    return Doubled(2 * n, out)


def _check(result: Doubled, files) -> None:
    if result.value > 100:
        raise ParityError(f"{result.value} is too big")


DOUBLE = Stage("double", _double, key=lambda cfg: (cfg.seed,), files=lambda env, r: {"double.txt": r.path},
               restore=lambda env, r, files: replace(r, path=files["double.txt"]),
               log=lambda t, cfg, r, files: t.metrics({"double": r.value}), check=_check)


def _plus_one(env, d: Doubled) -> int:
    calls.append("plus_one")
    return d.value + 1


PLUS_ONE = Stage("plus_one", _plus_one)


@pytest.fixture
def make_runner(tmp_path, prefect_api):
    uri = sqlite_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("runner")

    def make(*overrides: str) -> tuple[StageRunner, str]:
        cfg = load_config("tiny", list(overrides))
        run = client.create_run(exp)
        run_dir = tmp_path / "runs" / run.info.run_id
        run_dir.mkdir(parents=True)
        tracker = Tracker(client=client, run_id=run.info.run_id, tracking_uri=uri)
        return StageRunner(cfg, run_dir, tracker, StageCache(tmp_path / "cache", code="c1")), run.info.run_id

    return make, client


@flow(persist_result=False)
def _steps(runner: StageRunner, n: int) -> int:
    return runner(PLUS_ONE, runner(DOUBLE, n))


def test_a_rerun_hits_the_cache_restores_files_logs_again_and_a_config_change_misses(make_runner):
    make, client = make_runner
    calls.clear()
    first, run1 = make()
    assert _steps(first, 5) == 11 and calls == ["double", "plus_one"]
    assert first.hits == {"double": False, "plus_one": False}

    calls.clear()
    again, run2 = make()
    assert _steps(again, 5) == 11 and calls == []  # nothing recomputed
    assert again.hits == {"double": True, "plus_one": True} and again.keys == first.keys
    tags = client.get_run(run2).data.tags
    assert tags["cache.double"] == "hit" and tags["cache.double.key"] == first.keys["double"]
    assert client.get_run(run2).data.metrics["double"] == 10  # logged on a hit as on a miss

    calls.clear()
    changed, _ = make("seed=11")  # the double stage's key reads the seed: it and everything after it rerun
    assert _steps(changed, 5) == 11 and calls == ["double", "plus_one"]
    assert changed.keys["double"] != first.keys["double"] and changed.keys["plus_one"] != first.keys["plus_one"]


def test_a_failed_check_is_logged_but_never_cached(make_runner):
    make, client = make_runner
    runner, run_id = make()
    with pytest.raises(ParityError, match="too big"):
        _steps(runner, 60)
    assert client.get_run(run_id).data.metrics["double"] == 120  # logged before the check raised
    assert runner.cache.get("double", runner.keys["double"]) is None


def test_a_failing_stage_reports_through_on_error_and_leaves_no_entry(make_runner):
    make, _ = make_runner
    seen = []

    def boom(env, n):
        raise DataValidationError("bad rows", report={"rows": n})

    stage = Stage("boom", boom, on_error=lambda t, cfg, env, e: seen.append(e.report))

    @flow(persist_result=False)
    def one(runner: StageRunner) -> None:
        runner(stage, 3)

    runner, _ = make()
    with pytest.raises(DataValidationError):
        one(runner)
    assert seen == [{"rows": 3}] and runner.cache.get("boom", runner.keys["boom"]) is None


def test_a_corrupted_cache_entry_is_dropped_recomputed_and_says_so_on_the_run(make_runner):
    make, client = make_runner
    first, _ = make()
    _steps(first, 5)
    stored = first.cache.path("double", first.keys["double"]) / "files" / "double.txt"
    stored.write_text("99")  # what a disk error or a stray editor leaves

    calls.clear()
    again, run_id = make()
    assert _steps(again, 5) == 11 and calls == ["double"], "double recomputed; plus_one's entry is intact"
    tags = client.get_run(run_id).data.tags
    assert tags["cache.double"] == "dropped"
    assert tags["cache.double.dropped"] == "files/double.txt does not match its recorded checksum"
    assert again.cache.get("double", again.keys["double"])[1]["double.txt"].read_text() == "10"


def test_a_result_the_cache_cannot_hold_is_passed_on_uncached_and_says_so(make_runner):
    import pandas as pd

    make, client = make_runner
    mixed = Stage("mixed", lambda env: pd.DataFrame({"source": ["shop", 3, None]}))  # parquet refuses mixed types

    @flow(persist_result=False)
    def one(runner: StageRunner):
        return runner(mixed)

    runner, run_id = make()
    assert list(one(runner)["source"]) == ["shop", 3, None]
    assert "cache.mixed.not_stored" in client.get_run(run_id).data.tags
    assert runner.cache.get("mixed", runner.keys["mixed"]) is None
    assert not [p for p in runner.cache.root.iterdir() if p.name.startswith(".mixed-")], "no temporary folder left"


def test_a_stage_with_io_retries_retries_a_transient_failure_and_never_bad_data(make_runner):
    """``io_retries`` through the Prefect task: an OSError is retried and the stage's result comes back;
    a DataValidationError fails after one call. Inputs are passed by name, as the flow passes them."""
    make, _ = make_runner
    tries: list[str] = []

    def flaky(env, n: int, what: str) -> int:
        tries.append(what)
        if what == "disk" and len(tries) == 1:
            raise OSError("disk hiccup")
        if what == "data":
            raise DataValidationError("bad rows")
        return n * 10

    stage = Stage("flaky", flaky, io_retries=2, cached=False)
    stage.task = stage.task.with_options(retry_delay_seconds=0)  # the backoff, not under test

    @flow(persist_result=False)
    def one(runner: StageRunner, what: str) -> int:
        return runner(stage, n=4, what=what)

    runner, _ = make()
    assert one(runner, "disk") == 40 and tries == ["disk", "disk"]
    tries.clear()
    with pytest.raises(DataValidationError):
        one(runner, "data")
    assert tries == ["data"]
