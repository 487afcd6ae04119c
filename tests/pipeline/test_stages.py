"""The stages called directly, without a flow: each stage function through ``StageRunner.execute``
(key, cache look-up, the function, MLflow logging, check, cache store: everything but the Prefect
task) on the tiny BERT, one real MLflow SQLite store and one cache. A second runner on the same cache
then restores every stage from it. Whole-flow runs (tests/pipeline/test_flows.py) cover what only a
flow does: the Prefect task runs, the summary artifact, signals and the MLflow run's ending."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from forgeline.config.loader import load_config
from forgeline.errors import DataValidationError
from forgeline.inference.contract import VARIANT_FILES
from forgeline.pipeline import stages as st
from forgeline.pipeline.cache import StageCache
from forgeline.pipeline.runner import StageRunner
from forgeline.pipeline.tracking import Tracker
from tests.conftest import QUICK, sentiment_rows, small_overrides, sqlite_store


@dataclass
class Pipeline:
    root: Path
    uri: str
    client: MlflowClient
    sets: list[str]
    """The module's ``--set`` overrides: the tiny BERT on the separable set, sliced by source."""


    def runner(self, *overrides: str, cache: bool = True) -> StageRunner:
        cfg = load_config("tiny", [*self.sets, *overrides])
        exp = self.client.get_experiment_by_name("stages") or self.client.get_experiment(
            self.client.create_experiment("stages"))
        run = self.client.create_run(exp.experiment_id)
        run_dir = self.root / "runs" / run.info.run_id
        run_dir.mkdir(parents=True)
        tracker = Tracker(client=self.client, run_id=run.info.run_id, tracking_uri=self.uri)
        return StageRunner(cfg, run_dir, tracker, StageCache(self.root / "cache", enabled=cache, code="stages"))

    def steps(self, runner: StageRunner) -> dict[str, object]:
        """The training flow's steps, in its order, each through the runner without Prefect."""
        out: dict[str, object] = {}
        out["data"] = runner.execute(st.VALIDATE)
        out["splits"] = runner.execute(st.SPLIT, out["data"])
        out["baseline"] = runner.execute(st.BASELINE, out["splits"], out["data"].labels)
        out["trained"] = runner.execute(st.TRAIN, out["splits"], out["data"].labels)
        out["evaluation"] = runner.execute(st.EVALUATE, out["trained"], out["splits"])
        out["exported"] = runner.execute(st.EXPORT, out["trained"], out["splits"])
        out["compressed"] = runner.execute(st.COMPRESS, out["trained"], out["splits"], out["exported"], out["evaluation"])
        out["registration"] = runner.execute(st.REGISTER, out["trained"], out["splits"], out["evaluation"],
                                             out["exported"], out["compressed"], out["data"].fingerprint, out["baseline"])
        return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny) -> Pipeline:
    root = tmp_path_factory.mktemp("stages")
    data = root / "data.csv"
    rows = sentiment_rows()
    rows["source"] = ["shop", "forum"] * (len(rows) // 2)
    bad = pd.DataFrame({"text": ["", rows.loc[0, "text"].upper()], "label": ["positive", "negative"],
                        "source": ["shop", "shop"]})
    pd.concat([rows, bad], ignore_index=True).to_csv(data, index=False)
    uri = sqlite_store(root / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return Pipeline(root, uri, MlflowClient(uri, uri),
                    small_overrides(root, data, *tiny, *QUICK, "data.slice_columns=[source]", "registry.model_name=stages"))


@pytest.fixture(scope="module")
def first(pipeline):
    runner = pipeline.runner()
    return runner, pipeline.steps(runner)


def test_each_stage_does_its_work_and_logs_it(pipeline, first):
    runner, out = first
    data, splits, trained = out["data"], out["splits"], out["trained"]
    assert data.report["quarantined_rows"] == 2 and len(data.valid) == 200
    assert set(data.labels) == {"negative", "positive"}
    sizes = splits.sizes()
    assert sum(sizes.values()) == 200 and min(sizes.values()) > 0
    assert not set(splits.train["text"]) & set(splits.test["text"]), "no row in two splits"
    assert json.loads((runner.run_dir / "drift" / "profile.json").read_text())["rows"] > 0
    assert (trained.checkpoint_dir / "model.safetensors").is_file() and trained.steps > 0
    assert out["evaluation"].metrics["macro_f1"] >= 0.0 and out["evaluation"].artifacts
    exported = out["exported"]
    assert exported.parity.ok and exported.path.name == VARIANT_FILES["fp32"]
    assert exported.fusion["attention"] == 2, "both tiny layers' attention fused"

    run = pipeline.client.get_run(runner.tracker.run_id)
    for key in ("data.quarantined_rows", "split.test", "train.steps", "test_macro_f1", "parity.max_abs_prob_diff",
                "variant.int8.size_bytes", "train_loss"):
        assert key in run.data.metrics, key
    assert run.data.tags["validation.passed"] == "true" and run.data.tags["parity.ok"] == "True"
    assert {runner.hits[s] for s in ("validate", "split", "train", "evaluate", "export", "compress")} == {False}
    assert run.data.tags["cache.train"] == "miss"
    history = pipeline.client.get_metric_history(runner.tracker.run_id, "train_loss")
    assert history and all(m.step > 0 for m in history), "the training curve, logged by step while training"


def test_compress_measures_every_variant_and_chooses_per_device(first):
    _, out = first
    compressed = out["compressed"]
    names = {v.name for v in compressed.variants}
    assert {"fp32", "int8", "fp16"} <= names and "pruned" not in names  # magnitude pruning is off by default
    by_name = {v.name: v for v in compressed.variants}
    assert by_name["int8"].size_bytes < by_name["fp32"].size_bytes / 2
    assert by_name["int8"].latency["cpu"]["p50_b1_ms"] > 0
    cpu = next(s for s in compressed.selections if s.device == "cpu")
    defaults = {s.variant for s in compressed.selections}
    assert cpu.variant in names and {v.name for v in compressed.variants if v.bundled} == defaults  # compress.bundle


def test_register_puts_a_complete_version_behind_the_gate_and_a_rerun_reuses_it(pipeline, first):
    runner, out = first
    reg = out["registration"]
    assert reg.version == "1" and reg.aliases == ["champion"]
    mv = pipeline.client.get_model_version("stages", "1")
    assert mv.tags["forgeline.complete"] == "true" and mv.tags["forgeline.cache_key"] == runner.keys["register"]
    assert "| source=forum |" in mv.description, "the model card shows the slices"
    predicted = mlflow.pyfunc.load_model("models:/stages@champion").predict(pd.DataFrame({"text": ["the app is great"]}))
    assert predicted.loc[0, "label"] in {"negative", "positive"} and len(predicted.loc[0, "probabilities"]) == 2

    # the same config again, in a new MLflow run: every stage restored from the cache, nothing registered
    again = pipeline.runner()
    second = pipeline.steps(again)
    assert all(again.hits.values()) and again.keys == runner.keys
    assert second["registration"].version == "1" and second["registration"].decision.reason
    assert len(pipeline.client.search_model_versions("name='stages'")) == 1
    assert second["evaluation"].metrics == out["evaluation"].metrics
    assert second["trained"].model is not None, "the checkpoint is loaded back from the cache"
    tags = pipeline.client.get_run(again.tracker.run_id).data.tags
    assert tags["cache.train"] == "hit" and tags["gate.decision"] == "unchanged"
    assert "test_macro_f1" in pipeline.client.get_run(again.tracker.run_id).data.metrics, "a hit logs as a miss does"


def test_a_compression_change_reruns_compress_and_register_only(pipeline, first):
    runner, _ = first
    changed = pipeline.runner("compress.prune_amount=0.1")
    out = pipeline.steps(changed)
    assert [s for s, hit in changed.hits.items() if not hit] == ["compress", "register"]
    assert changed.keys["export"] == runner.keys["export"] and changed.keys["compress"] != runner.keys["compress"]
    assert out["registration"].version == "2"


def test_validation_failure_is_logged_on_the_run_before_it_propagates(pipeline, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.concat([sentiment_rows(30), pd.DataFrame({"text": ["   "] * 30, "label": ["positive"] * 30,
                                                 "source": ["shop"] * 30})]).to_csv(bad, index=False)
    runner = pipeline.runner(f"data.path={bad}")
    with pytest.raises(DataValidationError, match="above data.max_invalid_fraction"):
        runner.execute(st.VALIDATE)
    run = pipeline.client.get_run(runner.tracker.run_id)
    assert run.data.tags["validation.passed"] == "false" and run.data.metrics["data.quarantined_rows"] == 30
    assert runner.cache.get("validate", runner.keys["validate"]) is None, "a failure is never cached"
