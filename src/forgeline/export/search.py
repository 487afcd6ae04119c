"""A search for the student per target device (``compress.search_trials``).

A multi-objective Optuna study (TPE, seeded) over the student's shape, its distillation and, on the CPU,
its INT8 recipe. Objectives: the task's primary metric on the validation split of the variant the device
would serve (the trial's INT8 on the CPU, its fp16 on CUDA), and its p50 latency at ``latency_batch`` as a
ratio to the teacher's variant for that device timed beside it (interleaved rounds: a ratio moves less
than milliseconds when the machine's load changes between trials). Each trial is a child MLflow run of
the pipeline run; the study lives in memory (one process, one stage: nothing to share or resume) and its
Pareto set is logged as ``compression/search.{json,md}`` and ``search-<device>.png``. The fastest trial
within the accuracy budgets on validation becomes the run's student, whose variants are then made, scored
and chosen like the fixed student's.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forgeline.config.schema import CompressConfig, StudentSearchSpace
from forgeline.export import compress as cmp

log = logging.getLogger(__name__)

SHAPE = ("layers", "prune_heads", "prune_ffn", "prune_vocab")
DISTILL = ("distill_epochs", "temperature", "alpha", "hidden_weight")
QUANT = ("quantization", "per_channel", "fp32_layers")
TO_CONFIG = {"layers": "student_layers", "hidden_weight": "distill_hidden_weight"}
"""Search-space names that differ from the ``CompressConfig`` key they set."""


class SearchError(ValueError):
    """A search space or device the run cannot use: the student is skipped, the teacher's variants stay."""


@dataclass
class TrialRecord:
    number: int
    params: dict[str, Any]
    state: str
    """complete or failed (with ``error``)."""
    val_metric: float | None = None
    latency_ratio: float | None = None
    """p50 of the trial's variant / p50 of the teacher's, side by side on the search device."""
    p50_ms: float | None = None
    size_bytes: int | None = None
    within_budget: bool = False
    pareto: bool = False
    run_id: str = ""
    error: str = ""
    shape: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """A complete trial's validation metric."""
        if self.val_metric is None:
            raise ValueError(f"trial {self.number} is {self.state}: no validation metric")
        return self.val_metric

    @property
    def ratio(self) -> float:
        """A complete trial's latency ratio."""
        if self.latency_ratio is None:
            raise ValueError(f"trial {self.number} is {self.state}: no latency")
        return self.latency_ratio


@dataclass
class SearchResult:
    device: str
    trials: list[TrialRecord]
    chosen: int | None
    """The trial whose student the run keeps: the fastest within the budgets, else the most accurate."""
    reason: str
    student: Any = None
    """``training.distill.Student`` of the chosen trial."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The chosen trial's compress settings (``CompressConfig`` keys)."""
    recipe: cmp.QuantRecipe = field(default_factory=cmp.QuantRecipe)
    """Its INT8 recipe, applied to the student's INT8 variants."""

    def summary(self) -> dict[str, Any]:
        return {"device": self.device, "chosen": self.chosen, "reason": self.reason, "settings": self.settings,
                "recipe": asdict(self.recipe), "trials": [asdict(t) for t in self.trials]}


@dataclass
class SearchInputs:
    """What a trial needs from the compress stage, named."""

    cfg: Any
    """The run's ``PipelineConfig``."""
    teacher: Any
    tokenizer: Any
    labels: list[str]
    calibration: list
    latency_ids: list
    reference: Path
    """The teacher's variant for the search device (CPU: dynamic INT8; CUDA: fp16), timed beside each trial."""
    val_metrics: Callable[[Path, str], dict[str, float]]
    """(ONNX file, device) -> its metrics on the validation split."""
    distill: Callable[[CompressConfig, Any], Any]
    """(the trial's compress settings, its child run's ``Tracker``) -> ``training.distill.Student``: the
    stage's pruning and distillation on its splits."""
    primary: str
    higher_is_better: bool
    teacher_val: dict[str, float]
    budget: cmp.Budget
    workdir: Path
    new_run: Callable[[str, dict[str, str]], Any]
    """(name, tags) -> a ``Tracker`` of a child run of the pipeline run."""


def check_space(space: StudentSearchSpace, teacher: Any, device: str) -> None:
    """Refuse before any trial what the teacher cannot take or the machine cannot time."""
    from forgeline.inference.runtime import cuda_available
    from forgeline.training import prune

    n_layers = len(prune.encoder_layers(teacher))
    n_heads = teacher.config.num_attention_heads
    problems = []
    if over := [n for n in space.layers if n > n_layers]:
        problems.append(f"compress.search.layers {over} keep more layers than the teacher has ({n_layers}): "
                        f"use values from 1 to {n_layers}")
    if none := [f for f in space.prune_heads if prune.heads_kept(f, n_heads) < 1]:
        problems.append(f"compress.search.prune_heads {none} remove every one of the teacher's {n_heads} heads in a "
                        f"layer: use at most {(n_heads - 1) / n_heads:.3f}")
    if device == "cuda" and not cuda_available():
        problems.append("compress.search_device=cuda but no CUDA device is available to onnxruntime here: search on "
                        "cpu, or run where a GPU is")
    if problems:
        raise SearchError("; ".join(problems))


def sample(trial, space: StudentSearchSpace, device: str) -> dict[str, Any]:
    names = SHAPE + DISTILL + (QUANT if device == "cpu" else ())
    return {n: trial.suggest_categorical(n, list(getattr(space, n))) for n in names}


def fixed_params(c: CompressConfig, device: str) -> dict[str, Any] | None:
    """The fixed student's settings as a first trial, when the space holds each of them."""
    values: dict[str, Any] = {"layers": c.student_layers, "prune_heads": c.prune_heads, "prune_ffn": c.prune_ffn,
              "prune_vocab": c.prune_vocab, "distill_epochs": c.distill_epochs, "temperature": c.temperature,
              "alpha": c.alpha, "hidden_weight": c.distill_hidden_weight}
    if device == "cpu":
        values |= {"quantization": "dynamic", "per_channel": True, "fp32_layers": 0}
    ok = all(v in getattr(c.search, k) for k, v in values.items())
    return values if ok else None


def settings_of(params: dict[str, Any]) -> dict[str, Any]:
    return {TO_CONFIG.get(k, k): v for k, v in params.items() if k in SHAPE + DISTILL}


def choose(trials: list[TrialRecord], tie: float, higher_is_better: bool = True) -> tuple[int | None, str]:
    """The fastest trial within the budgets (within ``tie`` of it: the smallest file); else the most
    accurate, whose variants the budget will then refuse (the teacher's are served)."""
    done = [t for t in trials if t.state == "complete"]
    if not done:
        return None, "no trial completed"
    ok = [t for t in done if t.within_budget]
    if ok:
        best, _ = cmp.fastest_tied(ok, lambda t: t.ratio, lambda t: t.size_bytes or 0, tie)
        return best.number, (f"trial {best.number}: the fastest of {len(ok)} within the budgets on validation "
                             f"({best.ratio:.3f}× the teacher's latency)")
    best = max(done, key=lambda t: t.score if higher_is_better else -t.score)
    return best.number, f"no trial within the budgets on validation: trial {best.number}, the most accurate, is kept"


def search_student(inp: SearchInputs) -> SearchResult:
    """Run the study; ``SearchError`` for a space or device the run cannot use (nothing is made)."""
    import optuna

    from forgeline.export.onnx import export_onnx
    from forgeline.settings import quiet_heartbeats

    cfg = inp.cfg
    c, device = cfg.compress, cfg.compress.search_device
    check_space(c.search, inp.teacher, device)
    records: list[TrialRecord] = []
    students: dict[int, Any] = {}
    recipes: dict[int, cmp.QuantRecipe] = {}

    def objective(trial) -> tuple[float, float]:
        params = sample(trial, c.search, device)
        rec = TrialRecord(trial.number, params, "failed")
        records.append(rec)
        tracker = inp.new_run(f"compress-trial-{trial.number}", {"forgeline.compress.trial": str(trial.number),
                                                                 "forgeline.compress.device": device})
        rec.run_id = tracker.run_id
        tracker.params({f"search.{k}": v for k, v in params.items()})
        folder = inp.workdir / f"trial-{trial.number}"
        try:
            made = inp.distill(c.model_copy(update=settings_of(params)), tracker)
            student = made.model.float().cpu()
            fp32 = export_onnx(student, inp.tokenizer, inp.labels, folder / "student.onnx", cfg.export,
                               cfg.model.max_length)
            recipe = cmp.QuantRecipe()
            if device == "cpu":
                static = params["quantization"] == "static"

                def quantize(src, dst, r, static=static):
                    r = cmp.QuantRecipe(params["per_channel"], r.exclude)
                    return (cmp.quantize_static_int8(src, dst, inp.calibration, r) if static else
                            cmp.quantize_int8(src, dst, r))

                exclude = cmp.sensitive_layers(fp32, quantize, inp.calibration[:2], params["fp32_layers"], folder)
                recipe = cmp.QuantRecipe(params["per_channel"], exclude)
                served = quantize(fp32, folder / "student_int8.onnx", recipe)
            else:
                served = cmp.convert_fp16(fp32, folder / "student_fp16.onnx")
            metrics = inp.val_metrics(served, device)
            lat = cmp.measure_latency({"trial": served, "reference": inp.reference}, device, inp.latency_ids,
                                      cfg.model.max_length, c.latency_rounds)
            key = f"p50_b{c.latency_batch}_ms"
            rec.p50_ms, ratio = lat["trial"][key], lat["trial"][key] / lat["reference"][key]
            rec.val_metric, rec.latency_ratio = float(metrics[inp.primary]), float(ratio)
            rec.size_bytes = served.stat().st_size
            rec.within_budget = inp.budget.holds(metrics, inp.teacher_val)
            rec.shape, rec.state = made.info, "complete"
            tracker.metrics({f"val_{inp.primary}": rec.val_metric, "latency_ratio": rec.latency_ratio,
                             "p50_ms": rec.p50_ms, "size_bytes": rec.size_bytes,
                             "within_budget": float(rec.within_budget)} | {f"student.{k}": v for k, v in made.info.items()})
            students[trial.number], recipes[trial.number] = made, recipe
            keep, _ = choose(records, c.latency_tie, inp.higher_is_better)  # only the current choice stays in memory
            for n in [n for n in students if n != keep]:
                del students[n]
            return rec.val_metric, rec.latency_ratio
        except Exception as e:  # a trial's failure (export, quantizer) is recorded; the study goes on
            rec.error = f"{type(e).__name__}: {e}"[:2000]
            tracker.tags({"error": rec.error})
            log.warning("compress search trial %d failed: %s", trial.number, rec.error)
            raise
        finally:
            tracker.client.set_terminated(tracker.run_id, "FINISHED" if rec.state == "complete" else "FAILED")
            shutil.rmtree(folder, ignore_errors=True)

    direction = optuna.study.StudyDirection.MAXIMIZE if inp.higher_is_better else optuna.study.StudyDirection.MINIMIZE
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's INFO line: the child runs hold them
    try:
        with quiet_heartbeats():
            sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=max(1, c.search_trials // 3))
            study = optuna.create_study(directions=[direction, optuna.study.StudyDirection.MINIMIZE], sampler=sampler)
            if first := fixed_params(c, device):
                study.enqueue_trial(first)
            study.optimize(objective, n_trials=c.search_trials, catch=(Exception,))
            front = {t.number for t in study.best_trials}
    finally:
        optuna.logging.set_verbosity(verbosity)
    for r in records:
        r.pareto = r.number in front
    chosen, reason = choose(records, c.latency_tie, inp.higher_is_better)
    if chosen is None:
        return SearchResult(device, records, None, reason, None, {}, cmp.QuantRecipe())
    return SearchResult(device, records, chosen, reason, students.get(chosen),
                        settings_of(next(r.params for r in records if r.number == chosen)), recipes.get(chosen, cmp.QuantRecipe()))


def table_markdown(result: SearchResult, primary: str) -> str:
    lines = [f"Search on {result.device}: {result.reason}.", "",
             f"| trial | val {primary} | latency × teacher | p50 ms | MB | within budget | Pareto | params |",
             "|---:|---:|---:|---:|---:|---|---|---|"]
    for t in result.trials:
        if t.state != "complete":
            lines.append(f"| {t.number} | – | – | – | – | – | – | failed: {t.error[:200]} |")
            continue
        mark = " **chosen**" if t.number == result.chosen else ""
        lines.append(f"| {t.number}{mark} | {t.val_metric:.4f} | {t.latency_ratio:.3f} | {t.p50_ms:.2f} | "
                     f"{(t.size_bytes or 0) / 1e6:.2f} | {'yes' if t.within_budget else 'no'} | {'yes' if t.pareto else ''} | "
                     f"{', '.join(f'{k}={v}' for k, v in t.params.items())} |")
    return "\n".join(lines) + "\n"


def plot(result: SearchResult, primary: str, path: Path) -> Path | None:
    """Validation metric against the latency ratio, the Pareto set joined, the chosen trial ringed."""
    done = [t for t in result.trials if t.state == "complete"]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t.ratio for t in done], [t.score for t in done], c="#999999", label="trial")
    front = sorted((t for t in done if t.pareto), key=lambda t: t.ratio)
    ax.plot([t.ratio for t in front], [t.score for t in front], "o-", c="#1f77b4", label="Pareto set")
    for t in done:
        ax.annotate(str(t.number), (t.ratio, t.score), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if (chosen := next((t for t in done if t.number == result.chosen), None)) is not None:
        ax.scatter([chosen.ratio], [chosen.score], s=160, facecolors="none", edgecolors="#d62728", label="chosen")
    ax.set_xlabel(f"p50 latency / the teacher's on {result.device}")
    ax.set_ylabel(f"validation {primary}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
