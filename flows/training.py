"""The training flow: validate → split → train → evaluate → export (+parity) → compress → register → summary."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from config.loader import load_config
from config.schema import PipelineConfig
from tasks.stages import (
    RunContext,
    compress_task,
    evaluate_task,
    export_task,
    register_task,
    split_task,
    summary_markdown,
    summary_task,
    train_task,
    validate_task,
)
from tasks.cache import StageCache
from tasks.tracking import Tracker, ensure_experiment, resolve_tracking_uri

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class PipelineResult:
    run_id: str
    model_name: str
    version: str
    aliases: list[str]
    promoted: bool
    reason: str
    cached_stages: list[str]
    metrics: dict[str, float]
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _quiet_libraries() -> None:
    import logging
    import warnings

    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    """The whole pipeline in one MLflow run; must be called inside a Prefect flow."""
    import mlflow
    from mlflow.tracking import MlflowClient

    _quiet_libraries()
    logger = get_run_logger()
    tracking_uri = resolve_tracking_uri(cfg.tracking)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = ensure_experiment(client, cfg.tracking, tracking_uri)
    run = client.create_run(experiment_id, run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"forgeline.config_hash": cfg.config_hash(), "forgeline.model_name": cfg.registry.model_name})
    tracker = Tracker(client=client, run_id=run.info.run_id, tracking_uri=tracking_uri)
    run_dir = Path(cfg.tracking.workdir).resolve() / "runs" / run.info.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(Path(cfg.tracking.workdir).resolve() / "cache", enabled=cfg.tracking.cache)
    ctx = RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker, cache=cache)
    tracker.tags({"forgeline.code_version": cache.code})
    tracker.params(cfg.flat())
    tracker.json(cfg.model_dump(mode="json"), "config.json")
    logger.info("MLflow run %s at %s; local files in %s", run.info.run_id, tracking_uri, run_dir)
    status = "FAILED"
    try:
        data = validate_task(ctx)
        logger.info("validation: %s valid of %s rows, %s quarantined", data.report["valid_rows"], data.report["rows"],
                    data.report["quarantined_rows"])
        splits = split_task(ctx, data)
        trained = train_task(ctx, splits, data.labels)
        evaluation, _ = evaluate_task(ctx, trained, splits)
        logger.info("test metrics: %s", {k: round(v, 4) for k, v in evaluation.metrics.items()})
        onnx_path, parity = export_task(ctx, trained, splits)
        variants = compress_task(ctx, trained, splits, onnx_path, evaluation)
        reg = register_task(ctx, trained, splits, evaluation, parity, variants, data.fingerprint)
        logger.info("registered %s v%s as %s: %s", reg.name, reg.version, reg.aliases, reg.decision.reason)
        md = summary_markdown(ctx, data, splits, trained, evaluation, parity, variants, reg)
        summary_task(ctx, md)
        status = "FINISHED"
        return PipelineResult(run_id=run.info.run_id, model_name=reg.name, version=reg.version, aliases=reg.aliases,
                              promoted=reg.decision.promote, reason=reg.decision.reason,
                              cached_stages=[k for k, hit in ctx.hits.items() if hit],
                              metrics={f"test_{k}": v for k, v in evaluation.metrics.items()}, summary=md)
    except BaseException as e:
        client.set_tag(run.info.run_id, "forgeline.error", f"{type(e).__name__}: {e}"[:5000])
        raise
    finally:
        client.set_terminated(run.info.run_id, status=status)


@flow(name="forgeline-training", log_prints=True, persist_result=False)
def training_flow(config: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Prefect entry point: ``config`` is a preset name or YAML path, ``overrides`` are ``key=value``."""
    cfg = load_config(config, overrides)
    return run_pipeline(cfg).to_dict()
