"""The pipeline's stages: for each, a plain function ``fn(env, *inputs) -> result`` doing the work through
the lifecycle packages, what it logs to MLflow, and its declaration for the runner (cache key, files,
retries). ``forgeline.pipeline.runner`` does the rest the same way for every stage.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forgeline.config.schema import CompressConfig, PipelineConfig
from forgeline.data.corpora import CORPORA
from forgeline.data.load import (SLICE_PREFIX, ValidationResult, dataset_path, file_fingerprint, load_and_validate,
                                  report_markdown)
from forgeline.data.split import Splits, split_dataset
from forgeline.errors import DataValidationError
from forgeline.export import compress as cmp
from forgeline.export import search
from forgeline.export.onnx import ParityReport, check_parity, export_onnx, fusion_report, fusion_warning
from forgeline.export.variants import CompressInputs, Compressed, compress_variants
from forgeline.inference.contract import CLASSICAL, DEFAULT_VARIANT_KEY, TOKENIZER_FILE, VARIANT_FILES
from forgeline.pipeline.runner import Env, Files, Stage, StageRunner
from forgeline.pipeline.tracking import Tracker
from forgeline.registry.client import CACHE_KEY_TAG, find_registered
from forgeline.registry.card import CardContext
from forgeline.registry.register import (EvalRows, Registration, bundle_artifacts, git_commit, register_and_gate,
                                        reuse_registration)
from forgeline.inference.tasks import DEFAULT_TASK, TASK_KEY, OutputSpec, spec_for
from forgeline.settings import GPU_TAG, failpoint, store_lock
from forgeline.tasks import get_task
from forgeline.tasks import EvalResult
from forgeline.tasks.classical import ClassicalFit, TextRows
from forgeline.training.distributed import launch, world_size
from forgeline.training.loop import TrainResult, predict_proba, resolve_device, train_model

log = logging.getLogger("forgeline")


def pairs_of(frame) -> list[str] | None:
    """The split's second texts (``data.text_pair_column``), or None for single texts."""
    return frame["text_pair"].tolist() if "text_pair" in frame.columns else None


def spec_of(trained: TrainResult) -> OutputSpec:
    """The trained model's ``OutputSpec`` (cached results from before tasks: single-label)."""
    return trained.spec or spec_for(DEFAULT_TASK, trained.labels)


# --- 1. validate -----------------------------------------------------------------------------------
VALIDATION_FILES = ("validation_report.json", "validation_report.md", "quarantine.csv")


def validate(env: Env) -> ValidationResult:
    return load_and_validate(env.cfg.data, env.run_dir / "data", env.cfg.seed, split=env.cfg.split,
                             task=get_task(env.cfg.task))


def _validation_files(env: Env, _: Any = None) -> Files:
    out = env.run_dir / "data"
    return {name: out / name for name in VALIDATION_FILES if (out / name).exists()}


def _log_validation(t: Tracker, cfg: PipelineConfig, report: dict[str, Any], files: Files, passed: bool) -> None:
    t.tags({"data.fingerprint": report["fingerprint"], "data.source": report["source"],
            "validation.passed": str(passed).lower()})
    t.params({"data.fingerprint": report["fingerprint"]})
    t.metrics({"data.rows": report["rows"], "data.valid_rows": report["valid_rows"],
               "data.quarantined_rows": report["quarantined_rows"], "data.invalid_fraction": report["invalid_fraction"]})
    data = cfg.data
    name = Path(report["source"]).name if data.source == "file" else CORPORA[data.source].name
    t.dataset(name, report["fingerprint"], report["source"], [str(data.text_column), str(data.label_column)],
              {"num_rows": report["rows"], "valid_rows": report["valid_rows"], "text_column": data.text_column,
               "label_column": data.label_column,
               "quarantined_rows": report["quarantined_rows"], "rows_per_class": report["rows_per_class"]})
    for path in files.values():
        t.artifact(path, "data")


def _log_failed_validation(t: Tracker, cfg: PipelineConfig, env: Env, e: Exception) -> None:
    if isinstance(e, DataValidationError) and e.report:
        _log_validation(t, cfg, e.report, _validation_files(env), passed=False)


VALIDATE = Stage(
    "validate", validate, task_name="validate-data", io_retries=3,
    key=lambda cfg: (file_fingerprint(dataset_path(cfg.data)), cfg.data.model_dump(mode="json"), cfg.seed,
                     cfg.split.min_rows_per_class,
                     cfg.task.model_dump(mode="json", include={"type", "min_value", "max_value"})),  # what validation reads
    files=_validation_files,
    log=lambda t, cfg, result, files: _log_validation(t, cfg, result.report, files, passed=True),
    on_error=_log_failed_validation,
)


# --- 2. split --------------------------------------------------------------------------------------
def split(env: Env, data: ValidationResult) -> Splits:
    """Split, then profile the training split (labels, lengths, embeddings) for later drift checks."""
    from forgeline.data.drift import build_profile, save_profile

    cfg = env.cfg
    task = get_task(cfg.task)
    splits = split_dataset(data.valid, cfg.split, cfg.seed, task, data.labels)
    profile, emb = build_profile(splits.train, data.labels, cfg.drift, cfg.model, cfg.seed, task)
    save_profile(profile, emb, env.run_dir / "drift")
    return splits


def _log_split(t: Tracker, cfg: PipelineConfig, splits: Splits, files: Files) -> None:
    t.artifact(files["drift"], "drift")
    t.metrics({f"split.{k}": v for k, v in splits.sizes().items()})
    t.tags({"split.leakage_check": "passed"})


SPLIT = Stage(
    "split", split,
    key=lambda cfg: (cfg.split.model_dump(mode="json"), cfg.seed, cfg.drift.sample_size, cfg.model.base),
    files=lambda env, _: {"drift": env.run_dir / "drift"},
    log=_log_split,
)


# --- 3. train --------------------------------------------------------------------------------------
def train(env: Env, splits: Splits, labels: list[str]) -> TrainResult:
    if world_size(env.cfg) > 1:  # torchrun + DDP; rank 0 logs into this run
        return launch(splits, labels, env.cfg, env.run_dir, env.tracker.tracking_uri, env.tracker.run_id)
    return train_model(splits, labels, env.cfg, env.run_dir, log=env.tracker.metrics)


def _train_key(cfg: PipelineConfig) -> tuple:
    train_cfg = cfg.train.model_dump(mode="json", exclude={"progress_bar", "num_threads"})
    return (cfg.model.model_dump(mode="json", exclude={"family"}), train_cfg, cfg.seed, resolve_device(cfg.train.device),
            cfg.task.model_dump(mode="json"))


def _restore_trained(env: Env, stored: TrainResult, files: Files) -> TrainResult:
    from transformers import AutoTokenizer

    from forgeline.training.classifier import load_checkpoint

    device = resolve_device(env.cfg.train.device)
    ckpt = files["checkpoint"]
    return replace(stored, model=load_checkpoint(ckpt).to(device).eval(), checkpoint_dir=ckpt, device=device,
                   tokenizer=AutoTokenizer.from_pretrained(ckpt, local_files_only=True))


def _log_train(t: Tracker, cfg: PipelineConfig, r: TrainResult, files: Files) -> None:
    t.metrics({"train.best_epoch": r.best_epoch, f"train.best_val_{r.val_metric}": r.best_val_macro_f1,
               "train.steps": r.steps, "train.seconds": r.train_seconds,
               "train.samples_per_second": r.samples_per_second, "train.tokens_per_second": r.tokens_per_second,
               "train.step_samples_per_second": r.step_samples_per_second})
    t.tags({"train.device": r.device, "train.stopped_early": str(r.stopped_early)})
    t.artifact(files["checkpoint"], "checkpoint")


TRAIN = Stage(
    "train", train, key=_train_key, tags=(GPU_TAG,),  # the tag's concurrency limit: one training per GPU
    after=("split",),
    files=lambda env, r: {"checkpoint": r.checkpoint_dir},
    store=lambda r: replace(r, model=None, tokenizer=None),
    restore=_restore_trained,
    log=_log_train,
)


# --- 3b. the classical baseline --------------------------------------------------------------------
@dataclass
class Baseline:
    """The run's classical baseline (``Task.fit_classical``) on the same split: what it is, its metrics,
    its outputs for the gate's paired comparison, or why there is none; under ``model.family: auto`` its
    ONNX graph, that graph's parity with scikit-learn on the test rows and its CPU latency."""

    name: str = ""
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    test_outputs: pd.DataFrame | None = None
    """One column per output, one row per test row, in the task's output form."""
    val_outputs: pd.DataFrame | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    """Its ``OutputSpec`` metadata (its own decision settings: multi-label thresholds)."""
    problem: str | None = None
    onnx: Path | None = None
    parity: dict[str, float] = field(default_factory=dict)
    p50_ms: float | None = None
    """Median ms of a ``compress.latency_batch`` batch through the graph on the CPU."""


def _frame(outputs: np.ndarray) -> pd.DataFrame:
    """Outputs as a cacheable frame: a column per output, or per-word outputs (``tokens.Tagged``) as their
    text, word spans and tag probabilities (flattened)."""
    if outputs.dtype == object:
        return pd.DataFrame({"text": [t.text for t in outputs], "words": [np.ravel(t.words).tolist() for t in outputs],
                             "probs": [t.probs.ravel().tolist() for t in outputs],
                             "tags": [t.probs.shape[1] for t in outputs]})
    return pd.DataFrame(outputs, columns=[f"o{j}" for j in range(outputs.shape[1])])


def _outputs(frame: pd.DataFrame) -> np.ndarray:
    if "probs" not in frame.columns:
        return frame.to_numpy()
    from forgeline.inference.tokens import Tagged

    out = np.empty(len(frame), dtype=object)
    for i, (text, words, probs, tags) in enumerate(frame[["text", "words", "probs", "tags"]].itertuples(index=False)):
        spans = np.asarray(words, dtype=np.int64).reshape(-1, 2)
        out[i] = Tagged(text, [(int(a), int(b)) for a, b in spans], np.asarray(probs, dtype=np.float32).reshape(-1, int(tags)))
    return out


def baseline(env: Env, splits: Splits, labels: list[str]) -> Baseline:
    """Fitted on the training split, its setting chosen on validation; a fit that fails (one class, no
    vocabulary) is reported and skipped, never failing the run."""
    task, cfg = get_task(env.cfg.task), env.cfg
    spec = task.output_spec(labels, splits.train["label"], "text_pair" in splits.train.columns)
    try:
        fit = task.fit_classical(spec, TextRows.of(splits.train), TextRows.of(splits.val))
        if fit is None:
            return Baseline(problem=f"task {task.type} has no classical baseline yet")
        test, val = TextRows.of(splits.test), TextRows.of(splits.val)
        outputs = fit.predict(test)
        test_metrics = task.metrics(task.y(test.targets, fit.spec), outputs, fit.spec)
    except Exception as e:  # noqa: BLE001 - a baseline is evidence, not the run: said and skipped
        log.warning("no classical baseline: %s: %s", type(e).__name__, e)
        return Baseline(problem=f"{type(e).__name__}: {e}"[:2000])
    result = Baseline(fit.name, fit.val_metrics, test_metrics, _frame(outputs), _frame(fit.predict(val)), fit.spec.to_meta())
    if cfg.model.family == "auto" and isinstance(fit, ClassicalFit):  # a linear layer (a CRF has no ONNX form)
        from forgeline.export.classical import classical_latency, classical_parity, export_classical

        try:
            result.onnx = export_classical(fit, env.run_dir / "baseline" / VARIANT_FILES[CLASSICAL], test.pairs is not None)
            result.parity = classical_parity(fit, result.onnx, test)
            result.p50_ms = classical_latency(result.onnx, test.texts, test.pairs, cfg.compress.latency_batch)
        except Exception as e:  # noqa: BLE001 - the encoder is registered instead, and the run says why
            log.warning("the classical baseline could not be exported: %s: %s", type(e).__name__, e)
            result.onnx, result.problem = None, f"not exported to ONNX: {type(e).__name__}: {e}"[:2000]
    return result


def _log_baseline(t: Tracker, cfg: PipelineConfig, r: Baseline, files: Files) -> None:
    t.metrics({f"baseline.val_{k}": v for k, v in r.val_metrics.items()}
              | {f"baseline.test_{k}": v for k, v in r.test_metrics.items()}
              | {f"baseline.parity.{k}": v for k, v in r.parity.items()}
              | ({f"baseline.cpu_p50_b{cfg.compress.latency_batch}_ms": r.p50_ms} if r.p50_ms is not None else {}))
    t.tags(({"baseline.model": r.name} if r.name else {}) | ({"baseline.problem": r.problem[:4000]} if r.problem else {}))
    if r.onnx is not None and r.val_outputs is not None:  # what `forgeline score` compares a batch's predictions with
        from forgeline.scoring.job import CLASSICAL_PREDICTIONS

        t.json({CLASSICAL: OutputSpec.from_meta({TASK_KEY: r.spec}).prediction_counts(_outputs(r.val_outputs))},
               CLASSICAL_PREDICTIONS)


BASELINE = Stage(
    "baseline", baseline, after=("split",), log=_log_baseline, task_name="classical-baseline",
    key=lambda cfg: (cfg.model.family, cfg.compress.latency_batch if cfg.model.family == "auto" else None),
    files=lambda env, r: {"onnx": r.onnx} if r.onnx is not None else {},
    restore=lambda env, r, files: replace(r, onnx=files.get("onnx")),
)


# --- 4. evaluate -----------------------------------------------------------------------------------
def evaluate(env: Env, trained: TrainResult, splits: Splits) -> EvalResult:
    cfg, task, spec = env.cfg, get_task(env.cfg.task), spec_of(trained)
    outputs = predict_proba(trained.model, trained.tokenizer, splits.test["text"].tolist(), cfg.model.max_length,
                            cfg.train.eval_batch_size, pairs=pairs_of(splits.test))
    return task.evaluate(task.y(splits.test["label"], spec), outputs, spec, env.run_dir / "eval", "test")


def _log_evaluation(t: Tracker, cfg: PipelineConfig, result: EvalResult, files: Files) -> None:
    t.metrics({f"test_{k}": v for k, v in result.metrics.items()})
    t.metrics({f"test_f1.{lab}": vals["f1-score"] for lab, vals in result.per_class.items()})
    for path in files.values():
        t.artifact(path, "eval")


EVALUATE = Stage(
    "evaluate", evaluate, key=lambda cfg: (cfg.train.eval_batch_size,),
    files=lambda env, r: {p.name: p for p in r.artifacts},
    restore=lambda env, r, files: replace(r, artifacts=[files[p.name] for p in r.artifacts]),
    log=_log_evaluation,
)


# --- 5. export (before compression: INT8 quantizes the exported graph) -----------------------------
@dataclass
class Exported:
    path: Path
    parity: ParityReport
    fusion: dict[str, Any]
    """``fusion_report``: fused attention/LayerNorm/GELU node counts of the exported graph."""


def export(env: Env, trained: TrainResult, splits: Splits) -> Exported:
    cfg = env.cfg
    texts = splits.test["text"].tolist()
    path = export_onnx(trained.model, trained.tokenizer, trained.labels, env.run_dir / "onnx" / VARIANT_FILES["fp32"],
                       cfg.export, cfg.model.max_length, sample_texts=texts[:2])
    failpoint("export.written")
    parity = check_parity(trained.model, trained.tokenizer, path, texts, cfg.model.max_length, cfg.export,
                          raise_on_fail=False, pairs=pairs_of(splits.test))
    return Exported(path, parity, fusion_report(path, trained.model.config.model_type, cfg.export.optimize))


def _log_export(t: Tracker, cfg: PipelineConfig, r: Exported, files: Files) -> None:
    t.metrics({"parity.max_abs_prob_diff": r.parity.max_abs_prob_diff,
               "parity.max_abs_logit_diff": r.parity.max_abs_logit_diff,
               "parity.argmax_agreement": r.parity.argmax_agreement, "onnx.fp32_size_bytes": r.path.stat().st_size})
    t.tags({"parity.ok": str(r.parity.ok)})
    t.json(r.parity.to_dict(), "onnx/parity.json")
    t.metrics({f"onnx.fused.{k}": r.fusion[k] for k in ("attention", "layernorm", "gelu")} | {"onnx.nodes": r.fusion["nodes"]})
    warning = fusion_warning(r.fusion)
    t.tags({"onnx.attention_fused": str(bool(r.fusion["attention"])).lower()} | ({"onnx.warning": warning} if warning else {}))
    if warning:
        log.warning(warning)


EXPORT = Stage(
    "export", export, task_name="export-onnx",
    key=lambda cfg: (cfg.export.model_dump(mode="json"),),
    after=("train",),  # not evaluate: evaluation settings do not change the graph
    files=lambda env, r: {r.path.name: r.path},
    restore=lambda env, r, files: replace(r, path=files[r.path.name]),
    log=_log_export,
    check=lambda r, files: r.parity.raise_if_failed(r.path),  # logged, never cached
)


# --- 6. compress -----------------------------------------------------------------------------------
def compress(env: Env, trained: TrainResult, splits: Splits, exported: Exported, base: EvalResult) -> Compressed:
    """Every variant made, scored and chosen (``export.variants``) on this run's splits: the validation
    split plus ``compress.validation_rows`` held-out rows choose; the test split reports."""
    cfg = env.cfg
    task = get_task(cfg.task)
    held_out, transfer, vocab = _unsampled(cfg, splits)
    val = pd.concat([splits.val, held_out]) if len(held_out) else splits.val
    client, parent = env.tracker.client, env.tracker.run_id
    experiment = client.get_run(parent).info.experiment_id

    def new_run(name: str, tags: dict[str, str]) -> Tracker:
        run = client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": parent, **tags})
        return Tracker(client=client, run_id=run.info.run_id, tracking_uri=env.tracker.tracking_uri)

    return compress_variants(CompressInputs(
        cfg=cfg, task=task, spec=spec_of(trained), model=trained.model, tokenizer=trained.tokenizer,
        labels=trained.labels, fp32=exported.path, base=base.metrics, test=TextRows.of(splits.test), val=TextRows.of(val),
        calibration=TextRows.of(splits.train), out=env.run_dir, distill=_distiller(env, trained, splits, transfer, val, vocab),
        new_run=new_run))


def _unsampled(cfg: PipelineConfig, splits: Splits):
    """(held-out validation rows, transfer texts, vocabulary texts): ``compress.validation_rows``,
    ``compress.distill_transfer_rows`` then ``compress.vocab_rows`` rows of the source outside the sample
    and its splits, disjoint."""
    from forgeline.data.load import unsampled_rows

    c = cfg.compress
    want = c.validation_rows + c.distill_transfer_rows + c.vocab_rows
    extra = (unsampled_rows(cfg.data, [splits.train, splits.val, splits.test], want, cfg.seed, get_task(cfg.task))
             if want else splits.val.iloc[:0])
    transfer_end = c.validation_rows + c.distill_transfer_rows
    return extra.iloc[: c.validation_rows], extra.iloc[c.validation_rows : transfer_end], extra.iloc[transfer_end:]


def _distiller(env: Env, trained: TrainResult, splits: Splits, transfer: pd.DataFrame, val: pd.DataFrame,
               vocab: pd.DataFrame):
    """(compress settings, tracker) -> the structurally pruned, distilled student of ``trained`` on the
    run's splits (and the ``transfer`` frame's texts; the ``vocab`` frame's tokens kept), its distillation
    curve logged to ``tracker`` (None: the pipeline run). Its best epoch is chosen on ``val``, the rows the compression choice
    uses: on seed 44's default preset the split's 300 rows picked epoch 2 of 3, which the choice's 1,800
    rows score 0.3 pt under epoch 3."""
    from forgeline.training.distill import Student, make_student

    cfg = env.cfg
    task, spec = get_task(cfg.task), spec_of(trained)

    def distill(c: CompressConfig, tracker: Tracker | None) -> Student:
        tracker = tracker or env.tracker  # a search trial's child run, else the pipeline run
        return make_student(trained.model, trained.tokenizer, splits.train["text"].tolist(),
                            task.train_y(splits.train["label"], spec), val["text"].tolist(),
                            task.y(val["label"], spec), c, cfg.train, cfg.model.max_length,
                            resolve_device(cfg.train.device), cfg.seed,
                            log=lambda m, step: tracker.metrics(m, step=step), task=task,
                            train_pairs=pairs_of(splits.train), val_pairs=pairs_of(val),
                            transfer=transfer["text"].tolist(), transfer_pairs=pairs_of(transfer),
                            vocab_texts=vocab["text"].tolist(), vocab_pairs=pairs_of(vocab))
    return distill


def _log_variants(t: Tracker, cfg: PipelineConfig, r: Compressed, files: Files) -> None:
    for v in r.variants:
        deltas = {"accuracy_delta": v.accuracy_delta, "macro_f1_delta": v.macro_f1_delta, f"{v.primary}_delta": v.metric_delta}
        t.metrics({f"variant.{v.name}.size_bytes": v.size_bytes, f"variant.{v.name}.gzip_bytes": v.gzip_bytes}
                  | {f"variant.{v.name}.{k}": v.metrics[k] for k in dict.fromkeys(("accuracy", "macro_f1", v.primary))
                     if k in v.metrics}
                  | {f"variant.{v.name}.{k}": val for k, val in deltas.items() if val is not None}
                  | {f"variant.{v.name}.within_budget": float(v.within_budget),
                   f"variant.{v.name}.bundled": float(v.bundled)}
                  | {f"variant.{v.name}.{k}": val for k, val in v.extra.items()}
                  | {f"variant.{v.name}.{d}.{k}": val for d, lat in v.latency.items() for k, val in lat.items()}
                  | {f"variant.{v.name}.parity.{k}": val for k, val in v.parity.items()})
    t.metrics({f"student.{k}": v for k, v in r.student.items()} | ({"compress.val_rows": r.val_rows} if r.val_rows else {}))
    t.tags({f"compress.default.{s.device}": s.variant for s in r.selections}
           | {f"compress.reason.{s.device}": s.reason[:4000] for s in r.selections}
           | {f"variant.{name}.error": msg[:4000] for name, msg in r.problems.items()})
    t.json({"variants": [v.summary() for v in r.variants], "selections": [asdict(s) for s in r.selections],
            "student": r.student, "problems": r.problems}, "compression/variants.json")
    if r.search:
        t.json(r.search, "compression/search.json")
        found = search.SearchResult(**{k: v for k, v in r.search.items() if k in ("device", "chosen", "reason")},
                                    trials=[search.TrialRecord(**x) for x in r.search["trials"]])
        t.text(search.table_markdown(found, get_task(cfg.task).primary.name), "compression/search.md")
        t.tags({"compress.search.chosen": r.search["chosen"], "compress.search.reason": r.search["reason"][:4000]})
    t.text(cmp.table_markdown(r.variants, r.selections), "compression/variants.md")
    if r.val_counts:
        t.json(r.val_counts, "drift/predictions.json")
    for plot in r.plots.values():
        t.artifact(plot, "compression")
    for s in r.selections:
        log.info("compress: %s serves %s (%s)", s.device, s.variant, s.reason)


COMPRESS = Stage(
    "compress", compress,
    key=lambda cfg: (cfg.compress.model_dump(mode="json"), cfg.train.model_dump(mode="json")),
    after=("export", "evaluate"),
    # only the bundled variants' files: the others are measured and reported, never used again (the
    # cache held ~150 MB of them per run)
    files=lambda env, r: {v.path.name: v.path for v in r.variants if v.path and v.bundled} | {p.name: p for p in r.plots.values()},
    restore=lambda env, r, files: replace(
        r, variants=[replace(v, path=files[v.path.name] if v.path and v.bundled else None) for v in r.variants],
        plots={d: files[p.name] for d, p in r.plots.items()}),
    log=_log_variants,
)


# --- 7. register -----------------------------------------------------------------------------------
def register(env: Env, trained: TrainResult, splits: Splits, evaluation: EvalResult, exported: Exported,
             compressed: Compressed, fingerprint: str, baseline: Baseline) -> Registration:
    cfg = env.cfg
    bundle_dir = env.run_dir / "bundle"
    variants = compressed.variants
    kept = [v for v in variants if v.bundled]
    bundle = {v.name: cmp.copy_into(v.path, bundle_dir, VARIANT_FILES[v.name]) for v in kept if v.path is not None}
    bundle["tokenizer"] = cmp.copy_into(trained.checkpoint_dir / TOKENIZER_FILE, bundle_dir, TOKENIZER_FILE)
    spec = spec_of(trained)
    meta: dict[str, Any] = {"labels": list(spec.labels), "max_length": cfg.model.max_length, "variants": [v.name for v in kept],
            DEFAULT_VARIANT_KEY: {s.device: s.variant for s in compressed.selections}, TASK_KEY: spec.to_meta(),
            "config_hash": cfg.config_hash(), "data_fingerprint": fingerprint}
    metrics = {f"test_{k}": v for k, v in evaluation.metrics.items()}
    parity_ok, parity_diff = exported.parity.ok, exported.parity.max_abs_prob_diff
    lat = f"p50 b{cfg.compress.latency_batch} ms"
    table = [{"name": v.name, "size_mb": v.size_bytes / 1e6, "bundled": v.bundled,
              "metrics": {k: v.metrics[k] for k in dict.fromkeys((v.primary, "accuracy", "macro_f1")) if k in v.metrics},
              "extra": {f"{d} {lat}": v.p50(d, cfg.compress.latency_batch) for d in v.latency}} for v in variants]
    defaults = {s.device: f"{s.variant} ({s.reason})" for s in compressed.selections}
    family = choose_family(env, splits, baseline, compressed, bundle, meta)
    if family.classical:  # the baseline is registered: its graph alone, with its own decision settings
        assert baseline.onnx is not None
        bundle = {CLASSICAL: cmp.copy_into(baseline.onnx, bundle_dir / CLASSICAL, VARIANT_FILES[CLASSICAL])}
        meta |= {"variants": [CLASSICAL], DEFAULT_VARIANT_KEY: {"cpu": CLASSICAL, "cuda": CLASSICAL}, TASK_KEY: baseline.spec}
        metrics = {f"test_{k}": v for k, v in baseline.test_metrics.items()}
        parity_ok = bool(baseline.parity.get("ok"))
        parity_diff = baseline.parity.get("max_abs_prob_diff", float("nan"))
        table = [{**row, "bundled": False} for row in table] + [
            {"name": CLASSICAL, "size_mb": baseline.onnx.stat().st_size / 1e6, "bundled": True,
             "metrics": {k: baseline.test_metrics[k] for k in dict.fromkeys((get_task(cfg.task).primary.name, "accuracy",
                                                                              "macro_f1")) if k in baseline.test_metrics},
             "extra": {f"cpu {lat}": baseline.p50_ms}}]
        defaults = {d: f"{CLASSICAL} ({family.reason})" for d in ("cpu", "cuda")}
    meta["family"] = family.name
    tags = {"data_fingerprint": fingerprint, "config_hash": cfg.config_hash(), "git_commit": git_commit(),
            "variants": ",".join(meta["variants"]), "parity_ok": str(parity_ok),
            **{f"default_variant.{d}": v for d, v in meta[DEFAULT_VARIANT_KEY].items()},
            "parity_max_abs_prob_diff": f"{parity_diff:.3g}", "mlflow_run_id": env.tracker.run_id,
            "task": spec.task, CACHE_KEY_TAG: env.key, "model.family": family.name,
            **({"model.family.reason": family.reason[:4000]} if family.reason else {})}
    card = CardContext(
        data=str(cfg.data.path) if cfg.data.source == "file" else f"bundled corpus ({cfg.data.source})",
        rows=len(splits.train) + len(splits.val) + len(splits.test), splits=splits.sizes(), variants=table,
        defaults=defaults, family=family.line(),
        student=_student_origin(cfg, compressed) if not family.classical else "",
        choice_rows=compressed.val_rows or None, max_length=cfg.model.max_length, config_hash=cfg.config_hash(),
        git_commit=tags["git_commit"])
    return register_and_gate(env.tracker.client, env.tracker.run_id, cfg.registry, bundle, meta, metrics, tags,
                             parity_ok, splits.test["text"].tolist()[:3], card=card,
                             # the registered classical graph is the baseline: no gate against itself (ONNX
                             # Runtime's TF-IDF moved hashtags' macro-F1 by -0.0016, CI [-0.0054, 0.0])
                             eval_rows=_test_rows(splits, None if family.classical else baseline))


@dataclass
class Family:
    """Which model family a run registers (``model.family``), and the validation evidence for it."""

    name: str = "encoder"
    reason: str = ""
    """Why, with the classical baseline's validation comparison with the encoder's CPU variant."""

    @property
    def classical(self) -> bool:
        return self.name == CLASSICAL

    def line(self) -> str:
        return f"{self.name}: {self.reason}" if self.reason else ""


def choose_family(env: Env, splits: Splits, baseline: Baseline, compressed: Compressed, bundle: dict[str, Path],
                  meta: dict[str, Any]) -> Family:
    """``model.family: auto``: the classical baseline when on the validation split it is not significantly
    worse than the encoder's CPU variant (paired bootstrap of the primary metric, each with its own
    decision settings) and faster at ``compress.latency_batch`` texts on the CPU; else the encoder."""
    from forgeline.registry.compare import compare_outputs
    from forgeline.registry.register import load_bundle

    cfg = env.cfg
    if cfg.model.family != "auto":
        return Family()
    if baseline.onnx is None or baseline.val_outputs is None:
        return Family(reason=f"no classical model to serve ({baseline.problem or 'none fitted'})")
    if not baseline.parity.get("ok"):
        return Family(reason=f"the classical graph missed its parity with scikit-learn ({baseline.parity})")
    task = get_task(cfg.task)
    encoder = load_bundle(bundle_artifacts(bundle, meta))  # as served on the CPU
    y = task.y(splits.val["label"], encoder.spec)
    theirs, shared = encoder.spec.decided(encoder.predict_proba(splits.val["text"].tolist(), pairs_of(splits.val)))
    ours, _ = OutputSpec.from_meta({TASK_KEY: baseline.spec}).decided(_outputs(baseline.val_outputs))
    c = compare_outputs(task, shared, y, ours, theirs)
    higher = task.primary.higher_is_better
    worse = c.ci_high < 0 if higher else c.ci_low > 0
    served = next((v for v in compressed.variants if v.name == encoder.variant), None)
    encoder_ms = served.p50("cpu", cfg.compress.latency_batch) if served is not None else None
    speed = (f"{baseline.p50_ms:.2f} ms against {encoder_ms:.2f} ms for {encoder.variant}" if encoder_ms is not None
             else f"{baseline.p50_ms:.2f} ms; {encoder.variant} was not timed")
    faster = baseline.p50_ms is not None and (encoder_ms is None or baseline.p50_ms < encoder_ms)
    evidence = (f"on {c.n} validation rows {task.primary.name} {c.challenger_value:.4f} against the encoder's "
                f"({encoder.variant}) {c.champion_value:.4f}, difference {c.diff:+.4f}, {c.confidence:.0%} CI "
                f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]; a batch of {cfg.compress.latency_batch} on the CPU {speed}")
    if not worse and faster:
        return Family(CLASSICAL, f"{baseline.name}, not significantly worse and faster: {evidence}")
    why = "significantly worse" if worse else "not faster"
    return Family(reason=f"the classical baseline ({baseline.name}) is {why}: {evidence}")


def _student_origin(cfg: PipelineConfig, compressed: Compressed) -> str:
    if not compressed.student:
        return ""
    found, c = compressed.search, cfg.compress
    transfer = int(compressed.student.get("transfer_rows", 0))
    also = (f"; distilled on the training split and {transfer:,} texts of the source outside the sample, with the "
            "teacher's outputs as their targets" if transfer else "")
    if found and found.get("chosen") is not None:
        done = sum(t["state"] == "complete" for t in found["trials"])
        return (f"chosen by a search of {len(found['trials'])} trials ({done} complete) on {found['device']}, "
                f"{found['reason']}: {', '.join(f'{k}={v}' for k, v in found['settings'].items())}{also}")
    return (f"fixed settings (compress.student_layers={c.student_layers}, prune_heads={c.prune_heads:g}, "
            f"prune_ffn={c.prune_ffn:g}, distill_epochs={c.distill_epochs}){also}")


def _test_rows(splits: Splits, baseline: Baseline | None = None) -> EvalRows:
    """What the gate scores the new version and the champion on, side by side, with the classical
    baseline's outputs on the same rows."""
    test = splits.test
    slices = {c[len(SLICE_PREFIX):]: test[c].tolist() for c in test.columns if str(c).startswith(SLICE_PREFIX)}
    rows = EvalRows(test["text"].tolist(), test["label"].tolist(), slices or None, pairs_of(test))
    if baseline is not None and baseline.test_outputs is not None:
        rows.classical, rows.classical_spec, rows.classical_name = (_outputs(baseline.test_outputs), baseline.spec,
                                                                    baseline.name)
    return rows


def _reuse_registration(env: Env, trained: TrainResult, splits: Splits, *_: Any, baseline: Baseline | None = None,
                        **__: Any) -> Registration | None:
    """An identical earlier run's version (same key): the gate runs again on it, nothing is registered."""
    t, registry = env.tracker, env.cfg.registry
    version = find_registered(t.client, registry.model_name, env.key)
    if version is None:
        return None
    return reuse_registration(t.client, t.run_id, registry, version, len(trained.labels), _test_rows(splits, baseline))


REGISTER = Stage(
    "register", register, io_retries=3,  # idempotent: the version carries the key
    after=("compress", "baseline"),
    key=lambda cfg: (cfg.registry.model_name, cfg.model.family),
    reuse=_reuse_registration,
    exclusive=lambda env: store_lock(env.tracker.tracking_uri, "register"),
)


# --- 8. summary ------------------------------------------------------------------------------------
def summary(env: Env, markdown: str) -> str:
    from prefect.artifacts import create_markdown_artifact

    env.tracker.text(markdown, "summary.md")
    key = "forgeline-" + "".join(c if c.isalnum() else "-" for c in env.cfg.registry.model_name.lower())
    try:
        create_markdown_artifact(markdown=markdown, key=key, description="forgeline training summary")
    except Exception as e:  # noqa: BLE001 - outside a flow run there is nowhere to put it
        log.info("no Prefect artifact created: %s", e)
    return markdown


SUMMARY = Stage("summary", summary, cached=False, io_retries=2)


def summary_markdown(runner: StageRunner, data: ValidationResult, splits: Splits, trained: TrainResult,
                     evaluation: EvalResult, exported: Exported, compressed: Compressed,
                     reg: Registration) -> str:
    m = evaluation.metrics
    parity = exported.parity
    spec = spec_of(trained)
    table = get_task(runner.cfg.task).metrics_table(m)
    lines = [
        f"# forgeline training run `{runner.tracker.run_id}`",
        "",
        f"**Model** `{reg.name}` version **{reg.version}** → alias **{', '.join(reg.aliases)}**  ",
        f"**Task**: {spec.task}{' (text pairs)' if spec.pairs else ''}  ",
        f"**Gate**: {_gate_word(runner, reg)} — {reg.decision.reason}",
        "",
        "## Test metrics (PyTorch fp32)",
        *table,
        "",
        "## Variants",
        cmp.table_markdown(compressed.variants, compressed.selections),
    ]
    hits = runner.hits
    lines += [
        "",
        f"**Parity** (ORT vs PyTorch, {parity.rows} test rows): max |Δprob| {parity.max_abs_prob_diff:.2e} "
        f"(tolerance {parity.atol:g}), argmax agreement {parity.argmax_agreement:.1%}",
        "",
        f"**ONNX graph** ({exported.fusion['model_type']}): {exported.fusion['nodes']} nodes; fused attention "
        f"{exported.fusion['attention']}, LayerNorm {exported.fusion['layernorm']}, GELU {exported.fusion['gelu']}"
        + (f"  \n**Warning**: {warning}" if (warning := fusion_warning(exported.fusion)) else ""),
        "",
        f"**Cache**: reused {', '.join(k for k, h in hits.items() if h) or 'nothing'}; "
        f"ran {', '.join(k for k, h in hits.items() if not h) or 'nothing'}",
        "",
        f"**Training**: {trained.device}, best epoch {trained.best_epoch}, {trained.steps} steps, "
        f"{trained.samples_per_second:.1f} samples/s, early stop: {trained.stopped_early}",
        "",
        f"**Data**: {data.report['rows']} rows, {data.report['quarantined_rows']} quarantined "
        f"({data.report['invalid_fraction']:.1%}); splits {splits.sizes()}; fingerprint `{data.fingerprint[:16]}`",
        "",
        report_markdown(data.report),
    ]
    return "\n".join(lines)


def _gate_word(runner: StageRunner, reg: Registration) -> str:
    if runner.hits.get("register"):
        return "unchanged, now promoted to champion" if reg.decision.promote else "unchanged"
    return "promoted to champion" if reg.decision.promote else "kept as challenger"
