"""Every compression variant of a trained model, made, scored and chosen: the work of the compress stage.

The teacher in fp32 ONNX and its lower precisions, the magnitude-pruned model, the structurally pruned and
distilled student (fixed, or found by the student search) in each precision; each scored on the
validation rows (the budget and dominance, noise-aware) and on the test rows (the report), latency
measured side by side, the default chosen per device (``export.compress.select``). MLflow logging stays
with the stage (``pipeline.stages``): this module gets the student's distillation and the search's child
runs as callables.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forgeline.config.schema import CompressConfig, PipelineConfig
from forgeline.export import compress as cmp
from forgeline.export import search
from forgeline.export.onnx import export_onnx
from forgeline.inference.contract import RUNS_ON, VARIANT_FILES, VARIANTS
from forgeline.inference.runtime import (create_session, cuda_available, pad_batch, predict_proba_ids,
                                         predict_tagged_onnx)
from forgeline.inference.tasks import OutputSpec, WordOutputs
from forgeline.inference.tokens import TokenEncoder
from forgeline.tasks import Task
from forgeline.tasks.classical import TextRows
from forgeline.training import Model
from forgeline.training.loop import encode, predict_proba

log = logging.getLogger("forgeline")


@dataclass
class CompressInputs:
    cfg: PipelineConfig
    task: Task[Any]
    spec: OutputSpec
    model: Model
    """The fine-tuned teacher (PyTorch)."""
    tokenizer: Any
    labels: list[str]
    fp32: Path
    """The teacher's exported ONNX file."""
    base: dict[str, float]
    """The teacher's test metrics in PyTorch (the budget's reference on test)."""
    test: TextRows
    val: TextRows
    """The rows the choice is made on: the validation split and ``compress.validation_rows`` held-out rows."""
    calibration: TextRows
    """Training rows the static INT8 calibrates on (the first ``compress.calibration_rows``)."""
    out: Path
    """The run's scratch folder: ``onnx/``, ``eval/``, ``compression/``, ``search/`` under it."""
    distill: Callable[[CompressConfig, Any], Any]
    """``distill(settings, tracker)``: the pruned, distilled student (``training.distill.Student``), its
    curve logged to ``tracker`` (None: the pipeline run's)."""
    new_run: Callable[[str, dict[str, str]], Any]
    """A child run of the pipeline run, for each search trial."""


@dataclass
class Compressed:
    variants: list[cmp.Variant]
    selections: list[cmp.Selection]
    student: dict[str, float]
    """The student's shape and distillation result; empty when no student was made."""
    problems: dict[str, str]
    """Variant (or "student") -> why it was not made."""
    plots: dict[str, Path]
    """Device -> macro-F1 vs latency PNG, Pareto front marked (``search-<device>``: the student search's)."""
    val_counts: dict[str, dict[str, float]] = field(default_factory=dict)
    """Variant -> its prediction counts on the validation split (``OutputSpec.prediction_counts``): what a
    batch job's predictions are compared with (``forgeline score``)."""
    search: dict[str, Any] = field(default_factory=dict)
    """``export.search.SearchResult.summary()`` when ``compress.search_trials`` > 0."""
    val_rows: int = 0
    """TextRows the choice was made on: the validation split and ``compress.validation_rows`` held-out rows."""


class _Scorer:
    """One variant's outputs and metrics on the test and validation rows, as every variant is scored."""

    def __init__(self, inp: CompressInputs, budget: cmp.Budget) -> None:
        cfg, task, spec = inp.cfg, inp.task, inp.spec
        self.inp, self.budget = inp, budget
        self.y, self.y_val = task.y(inp.test.targets, spec), task.y(inp.val.targets, spec)
        self.ids = {name: encode(inp.tokenizer, rows.texts, cfg.model.max_length, rows.pairs)
                    for name, rows in (("test", inp.test), ("val", inp.val))}
        self.pad = inp.tokenizer.pad_token_id
        self.val_outputs: dict[str, np.ndarray] = {"fp32": self.outputs(inp.fp32, "cpu", "val")}
        self.teacher_val = task.metrics(self.y_val, self.val_outputs["fp32"], spec)

    def outputs(self, path: Path, device: str, split: str = "test") -> np.ndarray:
        inp, spec = self.inp, self.inp.spec
        if isinstance(spec, WordOutputs):
            rows = inp.test if split == "test" else inp.val
            encoder = TokenEncoder(inp.tokenizer, inp.cfg.model.max_length, spec.stride)
            return predict_tagged_onnx(create_session(path, device=device), encoder, rows.texts, spec,
                                       inp.cfg.train.eval_batch_size)
        return predict_proba_ids(create_session(path, device=device), self.ids[split], self.pad,
                                 inp.cfg.train.eval_batch_size, activate=spec.activate)

    def val_metrics(self, path: Path, device: str) -> dict[str, float]:
        return self.inp.task.metrics(self.y_val, self.outputs(path, device, "val"), self.inp.spec)

    def variant(self, name: str, path: Path, proba: np.ndarray, source: np.ndarray | None,
                extra: dict[str, float] | None = None, val: np.ndarray | None = None) -> cmp.Variant:
        """The variant's test metrics (reported), its validation outputs and metrics (``val``, else scored
        here on the CPU), parity against ``source``."""
        inp, task, spec = self.inp, self.inp.task, self.inp.spec
        metrics = task.evaluate(self.y, proba, spec, inp.out / "eval", f"test_{name}").metrics
        val = val if val is not None else (self.val_outputs["fp32"] if name == "fp32" else self.outputs(path, "cpu", "val"))
        self.val_outputs[name] = val
        v = cmp.make_variant(name, path, metrics, inp.base, self.budget, extra=extra,
                             val_metrics=task.metrics(self.y_val, val, spec), val_base=self.teacher_val)
        if source is not None:
            v.parity = cmp.parity_against(source, proba, cmp.precision_of(name), inp.cfg.export.parity_atol, spec)
        return v

    def pytorch(self, model: Model) -> np.ndarray:
        """A PyTorch model's test outputs on the CPU in fp32, as the ONNX files are scored."""
        cfg = self.inp.cfg
        return predict_proba(model, self.inp.tokenizer, self.inp.test.texts, cfg.model.max_length,
                             cfg.train.eval_batch_size, "cpu", self.inp.test.pairs)


def compress_variants(inp: CompressInputs) -> Compressed:
    """Every variant scored on the validation rows (the budget and dominance, noise-aware) and on the test
    rows (the report), latency measured side by side, the default chosen per device."""
    cfg, c, task = inp.cfg, inp.cfg.compress, inp.task
    budget = cmp.Budget.of(task, c)
    score = _Scorer(inp, budget)
    problems: dict[str, str] = {}
    rows = inp.calibration
    calib_ids = encode(inp.tokenizer, rows.texts[: c.calibration_rows], cfg.model.max_length,
                       None if inp.test.pairs is None else (rows.pairs or [])[: c.calibration_rows])
    calibration = [pad_batch(calib_ids[i : i + 32], score.pad) for i in range(0, len(calib_ids), 32)]
    # references in fp32 on the CPU, as the ONNX files are scored (a CUDA-trained model would run bf16)
    teacher_proba = score.pytorch(copy.deepcopy(inp.model).float().cpu())
    variants = [score.variant("fp32", inp.fp32, score.outputs(inp.fp32, "cpu"), teacher_proba)]
    if c.prune and c.prune_amount > 0:
        pruned = cmp.prune_global(inp.model, c.prune_amount)
        path = export_onnx(pruned, inp.tokenizer, inp.labels, inp.out / "onnx" / VARIANT_FILES["pruned"], cfg.export,
                           cfg.model.max_length, sample_texts=inp.test.texts[:2])
        variants.append(score.variant("pruned", path, score.pytorch(pruned), None, extra={"sparsity": cmp.sparsity(pruned)}))
    variants += _precisions("teacher", inp.fp32, teacher_proba, score, calibration, problems)

    student: dict[str, float] = {}
    plots: dict[str, Path | None] = {}
    found = None
    if c.student and c.search_trials:
        reference = next((v.path for v in variants if v.name == ("int8" if c.search_device == "cpu" else "fp16") and v.path),
                         inp.fp32)
        try:
            found = search.search_student(search.SearchInputs(
                cfg=cfg, teacher=inp.model, tokenizer=inp.tokenizer, labels=inp.labels, calibration=calibration,
                latency_ids=score.ids["test"], reference=reference, val_metrics=score.val_metrics, distill=inp.distill,
                primary=task.primary.name, higher_is_better=task.primary.higher_is_better, teacher_val=score.teacher_val,
                budget=budget, workdir=inp.out / "search", new_run=inp.new_run))
        except search.SearchError as e:
            problems["student"] = f"the student search cannot run: {e}"
            log.warning("%s. The teacher's variants are registered", problems["student"])
        if found is not None:
            plots[f"search-{found.device}"] = search.plot(found, task.primary.name,
                                                         inp.out / "compression" / f"search-{found.device}.png")
            if found.student is None:
                problems["student"] = f"the student search made no student: {found.reason}"
    if c.student and (not c.search_trials or (found is not None and found.student is not None)):
        made, student = _student_variants(inp, score, calibration, problems, found)
        variants += made
    cmp.noise_aware([v for v in variants if v.parity_ok], score.val_outputs, task, inp.spec, score.y_val, seed=cfg.seed)

    devices = ["cpu"] + (["cuda"] if cuda_available() else [])
    for device in devices:
        paths = {v.name: v.path for v in variants if v.path is not None and device in RUNS_ON[v.name]}
        for name, lat in cmp.measure_latency(paths, device, score.ids["test"], cfg.model.max_length, c.latency_rounds).items():
            next(v for v in variants if v.name == name).latency[device] = lat
    selections = [cmp.select(variants, d, c, budget=budget) for d in ("cpu", "cuda")]
    cmp.choose_bundle(variants, selections, c.latency_batch, keep=c.bundle)
    (metric, drop), = [(m, d) for m, d in budget.limits if m.name == task.primary.name] or [(task.primary, 0.0)]
    teacher_value = inp.base[metric.name]
    drop_units = drop * abs(teacher_value) if metric.relative_drop else drop
    plots |= {d: cmp.pareto_plot(variants, d, c.latency_batch, teacher_value, drop_units,
                                 inp.out / "compression" / f"pareto-{d}.png") for d in devices}
    return Compressed(variants, selections, student, problems, {d: p for d, p in plots.items() if p},
                      {name: inp.spec.prediction_counts(o) for name, o in score.val_outputs.items()},
                      found.summary() if found is not None else {}, len(inp.val.texts))


def _precisions(source_kind: str, fp32: Path, source: np.ndarray, score: _Scorer, calibration: list,
                problems: dict[str, str], recipe: cmp.QuantRecipe = cmp.QuantRecipe()) -> list[cmp.Variant]:
    """The lower-precision variants ``contract.VARIANTS`` declares for ``source_kind`` (teacher or
    student), made from its fp32 ONNX file, each scored against ``source``, the probabilities of the
    PyTorch model the file was exported from. ``recipe``: the INT8 variants' (the student search's choice)."""
    c, out = score.inp.cfg.compress, score.inp.out / "onnx"
    converters = {"int8": (c.quantize_int8, lambda src, dst: cmp.quantize_int8(src, dst, recipe), "cpu"),
                  "int8_static": (c.static_int8, lambda src, dst: cmp.quantize_static_int8(src, dst, calibration, recipe), "cpu"),
                  "fp16": (c.fp16, cmp.convert_fp16, "auto")}
    made = []
    for precision, (enabled, convert, device) in converters.items():
        spec = next((v for v in VARIANTS if (v.source, v.precision) == (source_kind, precision) and not v.magnitude_pruned), None)
        if spec is None or not enabled:
            continue
        try:
            path = convert(fp32, out / spec.file)
            proba, val = score.outputs(path, device), score.outputs(path, device, "val")
        except Exception as e:  # noqa: BLE001 - an optional variant; the fp32 model is still good
            problems[spec.name] = f"{type(e).__name__}: {e}"[:4000]
            log.warning("%s variant failed, not registered: %s", spec.name, e)
            continue
        made.append(score.variant(spec.name, path, proba, source, val=val))
    return made


def _student_variants(inp: CompressInputs, score: _Scorer, calibration: list, problems: dict[str, str],
                      found: search.SearchResult | None = None) -> tuple[list[cmp.Variant], dict[str, float]]:
    """The structurally pruned, distilled student in each precision, and its shape: the search's choice
    (``found``) or the fixed student of ``compress.*``. A pruning target the model cannot take, or a
    student export failing parity, is a reason in ``problems``; the teacher's variants are unaffected."""
    from forgeline.training.prune import PruningError

    cfg = inp.cfg
    try:
        made = found.student if found is not None else inp.distill(cfg.compress, None)
    except PruningError as e:
        problems["student"] = str(e)
        log.warning("no student: %s. The teacher's variants are registered", e)
        return [], {}
    student = made.model.float().cpu()
    proba = score.pytorch(student)
    path = export_onnx(student, inp.tokenizer, inp.labels, inp.out / "onnx" / VARIANT_FILES["student"],
                       cfg.export, cfg.model.max_length, sample_texts=inp.test.texts[:2])
    first = score.variant("student", path, score.outputs(path, "cpu"), proba)
    if not first.parity_ok:
        problems["student"] = (f"the student's ONNX export differs from its PyTorch model (max |Δprob| "
                               f"{first.parity['max_abs_prob_diff']:.3g} > export.parity_atol "
                               f"{cfg.export.parity_atol:g}): no student variant is registered")
        log.warning("%s", problems["student"])
        return [first], made.info
    info = made.info | ({"search_trial": float(found.chosen)} if found is not None and found.chosen is not None else {})
    recipe = found.recipe if found is not None else cmp.QuantRecipe()
    return [first, *_precisions("student", path, proba, score, calibration, problems, recipe)], info
