"""Compression variants and the choice among them.

Variants: the exported teacher in fp32, fp16, dynamic and static INT8, magnitude-pruned, and the same
precisions of the structurally pruned, distilled student (``forgeline.training.prune``/``distill``).
Each gets size, test accuracy and macro-F1, parity against the PyTorch model it was made from, and p50
latency at batch 1 and 32 on each device present, measured side by side. ``select`` then picks per
device the fastest variant within the accuracy budgets; ``choose_bundle`` marks what is registered
(each device's default; with ``compress.bundle=all`` the teacher and the Pareto front too).

Measured on the default preset (2-core CPU, batch 32 × 64 tokens, interleaved rounds, three seeds;
benchmarks/results/compression-cpu-seeds-2026-12-03.json): the student (3 layers, 6 heads, 768 FFN
neurons, a 16.8K-token vocabulary) in dynamic INT8 was the CPU default on every seed, 3.40-3.64× faster
than the teacher's dynamic INT8 at 9.8 MB. Static INT8 (QDQ) was slower than dynamic on this CPU
(teacher: 209 vs 127 ms in one run) because QDQ has no quantized Attention: every variant is measured,
none assumed."""

from __future__ import annotations

import copy
import gzip
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgeline.config.schema import CompressConfig
from forgeline.inference.tasks import OutputSpec
from forgeline.training import Model


@dataclass
class Variant:
    name: str
    path: Path | None
    size_bytes: int
    gzip_bytes: int
    metrics: dict[str, float]
    accuracy_delta: float | None
    """Change against the fp32 teacher (variant − teacher); None where the task has no such metric."""
    macro_f1_delta: float | None
    within_budget: bool
    """Every metric of the ``Budget`` (single-label: accuracy and macro-F1; other tasks: the primary
    metric) within its drop of the fp32 teacher."""
    extra: dict[str, float] = field(default_factory=dict)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    """Device -> {"p50_b1_ms", "p50_b32_ms"} at ``model.max_length`` tokens, measured side by side."""
    parity: dict[str, float] = field(default_factory=dict)
    """Against the PyTorch model it was made from: mean/max |Δprob|, argmax agreement, ok (1/0)."""
    bundled: bool = False
    note: str = ""
    """Why it is or is not in the registered bundle."""
    primary: str = "macro_f1"
    """The task's primary metric, which ranks variants on the Pareto front."""
    higher_is_better: bool = True
    metric_delta: float = 0.0
    """Primary metric, variant − teacher (test split: what the report and the card say)."""
    val_metrics: dict[str, float] = field(default_factory=dict)
    """The same metrics on the validation split, which decides the budget and dominance (the test split
    is only reported: a variant chosen on test rows would report a score biased upwards by the choice)."""
    val_metric_delta: float | None = None
    better_than: list[str] = field(default_factory=list)
    """Variants this one is more accurate than on validation with the paired bootstrap interval of the
    difference excluding zero (``noise_aware``); any other difference counts as a tie."""
    compared: bool = False
    """Whether ``better_than`` was computed (variants built without per-row outputs compare raw metrics)."""

    @property
    def score(self) -> float:
        """The primary metric oriented so that higher is better (for the Pareto front)."""
        value = self.metrics[self.primary]
        return value if self.higher_is_better else -value

    def summary(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        return d

    def p50(self, device: str, batch: int) -> float | None:
        return self.latency.get(device, {}).get(f"p50_b{batch}_ms")

    def measured_p50(self, device: str, batch: int) -> float:
        """``p50`` of a variant measured there (the choice and the plots read only those)."""
        value = self.p50(device, batch)
        if value is None:
            raise ValueError(f"variant {self.name} has no p50 at batch {batch} on {device}")
        return value

    @property
    def parity_ok(self) -> bool:
        return bool(self.parity.get("ok", 1.0))


def gzip_size(path: Path) -> int:
    """Size after gzip: what pruning's zeros buy on disk and over the wire."""
    out = 0
    with path.open("rb") as f:
        comp = gzip.compress(f.read(), compresslevel=1)
        out = len(comp)
    return out


def linear_weights(model: Model) -> list[tuple[torch.nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Linear)]


def sparsity(model: Model) -> float:
    total = zeros = 0
    for module, name in linear_weights(model):
        w = getattr(module, name)
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def prune_global(model: Model, amount: float) -> Model:
    """A pruned copy: the ``amount`` fraction of all Linear weights with the smallest |w| set to 0."""
    import torch.nn.utils.prune as prune

    pruned = copy.deepcopy(model).float().cpu().eval()
    params = linear_weights(pruned)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in params:
        prune.remove(module, name)
    return pruned


def _quantize(onnx_path: Path, out_path: Path, quantize) -> Path:
    """Run an onnxruntime quantizer ``quantize(src, dst)`` on a copy of ``onnx_path`` without the
    exporter's intermediate shape annotations (some exporter versions write value_info that onnx shape
    inference, run inside the quantizers, contradicts; inference recomputes them), with the root
    logger quiet (the quantizers log a generic pre-processing hint there), keeping the metadata."""
    import logging
    import tempfile

    import onnx

    from forgeline.export.onnx import add_metadata
    from forgeline.inference.runtime import model_metadata

    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(onnx_path))
    del model.graph.value_info[:]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stripped = Path(tmp) / "model.onnx"
            onnx.save(model, str(stripped))
            quantize(str(stripped), str(out_path))
    finally:
        root.setLevel(level)
    add_metadata(out_path, model_metadata(onnx_path))  # labels, max_length, ... as the source has them
    return out_path


@dataclass(frozen=True)
class QuantRecipe:
    """How an INT8 variant is made: per-channel or per-tensor weight scales, and the nodes that stay fp32
    (``layer_groups``: the layers a sensitivity pass found costliest to quantize). The default is the
    fixed recipe of a run without ``compress.search_trials``."""

    per_channel: bool = True
    exclude: tuple[str, ...] = ()


def quantize_int8(onnx_path: Path, out_path: Path, recipe: QuantRecipe = QuantRecipe()) -> Path:
    """Dynamic INT8 quantization (weights int8 per channel, activations quantized at run time) for CPU
    serving. Fused Attention becomes QAttention, EmbedLayerNormalization QEmbedLayerNormalization."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # per-channel weight scales: a smaller accuracy cost than per-tensor at the same speed. The fused
    # contrib ops (Attention, EmbedLayerNormalization) have no ONNX type inference, so tensors after
    # them default to float.
    return _quantize(onnx_path, out_path, lambda src, dst: quantize_dynamic(
        src, dst, weight_type=QuantType.QInt8, per_channel=recipe.per_channel, nodes_to_exclude=list(recipe.exclude),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}))


def quantize_static_int8(onnx_path: Path, out_path: Path, calibration: Sequence[tuple[np.ndarray, np.ndarray]],
                         recipe: QuantRecipe = QuantRecipe()) -> Path:
    """Static INT8: QDQ nodes around every MatMul, per-channel int8 weights, uint8 activations whose
    ranges come from running ``calibration`` batches (real training texts, (input_ids, mask) pairs)
    through the graph. ONNX Runtime's QDQ format has no quantized Attention/EmbedLayerNormalization,
    so the fused attention keeps its fp32 QKV projection; the FFN and output projections run int8
    with no run-time range computation, which is what dynamic INT8 pays for per call."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input_ids": batch[0], "attention_mask": batch[1]}

    return _quantize(onnx_path, out_path, lambda src, dst: quantize_static(
        src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=recipe.per_channel, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=list(recipe.exclude),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "CalibTensorRangeSymmetric": False}))


def layer_groups(onnx_path: Path) -> list[list[str]]:
    """The quantizable nodes (Attention, MatMul) of each encoder layer, in layer order. The exporter names
    a layer's MatMuls ``.../layer.N/...``; the optimizer's fused ``Attention_i`` nodes are numbered in
    layer order."""
    import re

    import onnx

    groups: dict[int, list[str]] = {}
    attention = 0
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        if node.op_type == "Attention":
            groups.setdefault(attention, []).append(node.name)
            attention += 1
        elif node.op_type == "MatMul" and (m := re.search(r"layer\.(\d+)/", node.name)):
            groups.setdefault(int(m.group(1)), []).append(node.name)
    return [groups[k] for k in sorted(groups)]


def sensitive_layers(fp32: Path, quantize, calibration: Sequence[tuple[np.ndarray, np.ndarray]], keep: int,
                     workdir: Path) -> tuple[str, ...]:
    """The nodes of the ``keep`` layers whose quantization moves the outputs most: each layer is left in
    fp32 in turn (``quantize(src, dst, QuantRecipe)``) and the mean |Δlogit| against ``fp32`` on the
    calibration batches (training texts, no labels) is compared with quantizing everything; the layers
    whose exclusion removes most of the error stay fp32."""
    from forgeline.inference.runtime import create_session

    groups = layer_groups(fp32)
    if keep <= 0 or not groups:
        return ()
    ref = create_session(fp32, device="cpu")
    feeds = [{"input_ids": x, "attention_mask": m} for x, m in calibration]
    want = [ref.run(None, f)[0] for f in feeds]

    def error(exclude: Sequence[str]) -> float:
        path = quantize(fp32, workdir / "sensitivity.onnx", QuantRecipe(exclude=tuple(exclude)))
        s = create_session(path, device="cpu")
        return float(np.mean([np.abs(s.run(None, f)[0] - w).mean() for f, w in zip(feeds, want)]))

    errors = [error(g) for g in groups]
    (workdir / "sensitivity.onnx").unlink(missing_ok=True)
    order = np.argsort(errors, kind="stable")[:keep]  # the lowest error when left out: the most sensitive
    return tuple(n for i in sorted(order.tolist()) for n in groups[i])


def convert_fp16(onnx_path: Path, out_path: Path) -> Path:
    """fp16 weights and activations for GPU serving; inputs (ids, mask) and logits stay as they are."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(onnx_path))
    del model.graph.value_info[:]
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out_path))
    return out_path


@dataclass(frozen=True)
class Budget:
    """How much worse than the fp32 teacher a variant may be: (metric, max drop) pairs, each drop in
    the metric's direction and units (relative for RMSE/MAE: ``tasks.base.Metric.relative_drop``)."""

    limits: tuple[tuple[Any, float], ...]
    primary: Any

    @classmethod
    def of(cls, task: Any, cfg: CompressConfig) -> "Budget":
        """The task's budget (``Task.budget``) on its primary metric."""
        return cls(tuple(task.budget(cfg)), task.primary)

    def holds(self, metrics: dict[str, float], base: dict[str, float]) -> bool:
        return all(m.worse_by(metrics[m.name], base[m.name]) <= drop + 1e-12 for m, drop in self.limits)

    def describe(self) -> str:
        return " and ".join(f"{m.name} drop <= {drop:g}{' (relative)' if m.relative_drop else ''}" for m, drop in self.limits)


def make_variant(name: str, path: Path | None, metrics: dict[str, float], base: dict[str, float],
                 cfg: Budget, size_bytes: int | None = None, extra: dict[str, float] | None = None,
                 val_metrics: dict[str, float] | None = None, val_base: dict[str, float] | None = None) -> Variant:
    """``cfg``: the task's budget. With ``val_metrics`` and ``val_base`` (the teacher's) the budget is
    checked on validation."""
    primary = cfg.primary
    acc_delta = metrics["accuracy"] - base["accuracy"] if "accuracy" in metrics and "accuracy" in base else None
    f1_delta = metrics["macro_f1"] - base["macro_f1"] if "macro_f1" in metrics and "macro_f1" in base else None
    size = size_bytes if size_bytes is not None else (path.stat().st_size if path else 0)
    return Variant(
        name=name, path=path, size_bytes=size, gzip_bytes=gzip_size(path) if path else 0, metrics=metrics,
        accuracy_delta=None if acc_delta is None else float(acc_delta),
        macro_f1_delta=None if f1_delta is None else float(f1_delta),
        within_budget=bool(cfg.holds(val_metrics, val_base) if val_metrics is not None and val_base is not None
                           else cfg.holds(metrics, base)),
        extra=extra or {}, primary=primary.name, higher_is_better=primary.higher_is_better,
        metric_delta=float(metrics[primary.name] - base[primary.name]), val_metrics=dict(val_metrics or {}),
        val_metric_delta=(float(val_metrics[primary.name] - val_base[primary.name])
                          if val_metrics is not None and val_base is not None else None),
    )


def noise_aware(variants: Sequence[Variant], outputs: dict[str, np.ndarray], task: Any, spec: Any, y: np.ndarray,
                n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> None:
    """Fill ``better_than`` for every pair of ``variants`` with validation ``outputs``: the paired
    bootstrap interval of the primary metric's difference (``registry.compare``, as the gate) excludes
    zero in the better one's favour: a raw difference on a few hundred rows is noise (a 30 %-zeroed copy of
    the same network came out "more accurate" by it)."""
    from forgeline.registry.compare import compare_outputs

    named = [v for v in variants if v.name in outputs]
    for v in named:
        v.better_than, v.compared = [], True
    for i, a in enumerate(named):
        for b in named[i + 1:]:
            c = compare_outputs(task, spec, y, outputs[a.name], outputs[b.name], n_boot=n_boot, confidence=confidence,
                                seed=seed)
            up = task.primary.higher_is_better
            if (c.ci_low > 0) if up else (c.ci_high < 0):
                a.better_than.append(b.name)
            elif (c.ci_high < 0) if up else (c.ci_low > 0):
                b.better_than.append(a.name)


def more_accurate(a: Variant, b: Variant) -> bool:
    """``a`` beats ``b`` on accuracy: by the noise-aware comparison when both have one, else by raw score."""
    if a.compared and b.compared:
        return b.name in a.better_than
    return a.score > b.score


def parity_against(source_proba: np.ndarray, proba: np.ndarray, precision: str, fp32_atol: float,
                   spec: OutputSpec) -> dict[str, float]:
    """How far a variant's outputs are from those of the PyTorch model it was made from, judged by
    ``contract.PARITY_TOLERANCE`` for its precision (fp32: ``export.parity_atol`` on the max). With the
    task's ``spec`` outputs are compared on its unit scale and "argmax agreement" is its decision agreement."""
    from forgeline.inference.contract import PARITY_TOLERANCE

    diff = np.abs(spec.comparable(source_proba) - spec.comparable(proba))
    agree = spec.agreement(source_proba, proba)
    out = {"mean_abs_prob_diff": float(diff.mean()), "max_abs_prob_diff": float(diff.max()),
           "argmax_agreement": agree}
    limit, min_agree = PARITY_TOLERANCE[precision]
    if precision == "fp32":
        ok = out["max_abs_prob_diff"] <= fp32_atol
    else:
        ok = out["mean_abs_prob_diff"] <= limit and out["argmax_agreement"] >= min_agree
    out["ok"] = float(bool(ok and np.isfinite(diff).all()))
    return out


def precision_of(name: str) -> str:
    """fp32 | fp16 | int8 | int8_static: the variant's declared precision (``contract.VARIANTS``)."""
    from forgeline.inference.contract import VARIANT

    return VARIANT[name].precision


def latency_batch(ids: Sequence[Sequence[int]], rows: int, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """A [rows, max_length] batch of real token ids (the test texts' tokens laid end to end) with a full
    mask: the shape a micro-batch of long texts has when it reaches the model."""
    flat = [int(t) for row in ids for t in row] or [0]
    need = rows * max_length
    flat = (flat * (need // len(flat) + 1))[:need]
    x = np.asarray(flat, dtype=np.int64).reshape(rows, max_length)
    return x, np.ones_like(x)


def measure_latency(paths: dict[str, Path], device: str, ids: Sequence[Sequence[int]], max_length: int,
                    rounds: int, b1_calls: int = 5) -> dict[str, dict[str, float]]:
    """p50 latency (ms) of each ONNX file at batch 1 and batch 32 × ``max_length`` tokens on ``device``.

    All sessions are open at once and timed in interleaved rounds (one batch-32 call and ``b1_calls``
    batch-1 calls of each variant per round), so load on a shared machine hits every variant alike.
    Their thread pools do not spin between calls: with spinning, the threads of the session just timed
    kept the 2 CPU cores busy while the next one ran, and seed 44's student INT8 timed 51.6 ms at batch
    32 against 27.2 ms alone, its teacher's INT8 127.5 against 91.2 ms (2.47x where a lone session serves
    3.36x; benchmarks/results/compression-cpu-latency-interference-2026-12-03.json). Parked, side-by-side
    timing agrees with a lone session within 3 % at batch 32; batch 1 then includes the threads' wake-up,
    about 0.5 ms that a lone spinning session does not pay."""
    import time

    from forgeline.inference.runtime import create_session

    sessions = {name: create_session(path, device=device, spin=False) for name, path in paths.items()}
    shapes = {32: latency_batch(ids, 32, max_length), 1: latency_batch(ids, 1, max_length)}
    feeds = {b: {"input_ids": x, "attention_mask": m} for b, (x, m) in shapes.items()}
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 32: []} for name in sessions}
    for s in sessions.values():
        for b in (32, 1):
            s.run(None, feeds[b])
    for _ in range(rounds):
        for name, s in sessions.items():
            for b, calls in ((32, 1), (1, b1_calls)):
                for _ in range(calls):
                    t0 = time.perf_counter()
                    s.run(None, feeds[b])
                    times[name][b].append(time.perf_counter() - t0)
    return {name: {f"p50_b{b}_ms": float(np.median(v) * 1e3) for b, v in t.items()} for name, t in times.items()}


@dataclass
class Selection:
    device: str
    variant: str
    reason: str
    measured: bool


def eligible(v: Variant, device: str) -> bool:
    from forgeline.inference.contract import RUNS_ON

    return v.path is not None and device in RUNS_ON.get(v.name, ()) and v.within_budget and v.parity_ok


def fastest_tied(items: Sequence[Any], latency, size, tie: float) -> tuple[Any, list[Any]]:
    """(the one served, the tied): items whose ``latency`` is within ``tie`` (a fraction) of the fastest's
    are tied, and the smallest ``size`` among them wins (then the faster): timing differences that small
    move between runs on a shared machine."""
    bar = min(latency(v) for v in items) * (1 + tie)
    tied = [v for v in items if latency(v) <= bar]
    return min(tied, key=lambda v: (size(v), latency(v))), tied


def select(variants: Sequence[Variant], device: str, cfg: CompressConfig, teacher: str = "fp32",
           budget: Budget | None = None) -> Selection:
    """The variant served by default on ``device``: the fastest (p50 at ``cfg.latency_batch``; within
    ``cfg.latency_tie`` of it, the smallest) among those within both accuracy budgets, passing parity and,
    when set, within ``cfg.latency_budget_ms``.
    When nothing qualifies the teacher is served and the reason says why. A pure function of the table."""
    ok = [v for v in variants if eligible(v, device)]
    measured = [v for v in ok if v.p50(device, cfg.latency_batch) is not None]
    metric = f"p50 at batch {cfg.latency_batch}"
    if not any(v.latency.get(device) for v in variants):
        # unmeasured (no such device where it was trained): the smallest eligible variant of the device's
        # precision; a student within the budgets is no slower than the teacher it was cut from
        for name in (("student_fp16", "fp16", teacher) if device == "cuda" else ("student_int8", "int8", teacher)):
            if any(v.name == name for v in ok):
                return Selection(device, name, f"not measured on {device} (no {device} at registration): {name} by "
                                 "fixed preference", False)
        return Selection(device, teacher, f"not measured on {device}: the teacher", False)
    if not measured:
        within = (f"within the compression budget ({budget.describe()})" if budget is not None else
                  f"within compress.max_accuracy_drop={cfg.max_accuracy_drop:g} and max_macro_f1_drop={cfg.max_macro_f1_drop:g}")
        return Selection(device, teacher, f"no variant for {device} is {within} with parity: the fp32 teacher is served", True)

    def p50(v: Variant) -> float:
        return v.measured_p50(device, cfg.latency_batch)

    fastest, tied = fastest_tied(measured, p50, lambda v: v.size_bytes, cfg.latency_tie)
    lat = p50(fastest)
    if cfg.latency_budget_ms is not None and lat > cfg.latency_budget_ms:
        return Selection(device, teacher, f"no variant meets compress.latency_budget_ms={cfg.latency_budget_ms:g} on "
                         f"{device} ({metric}); the fastest within the accuracy budgets, {fastest.name}, takes "
                         f"{lat:.2f} ms. The fp32 teacher is served; raise the budget or prune further", True)
    change = (f"macro-F1 {fastest.macro_f1_delta:+.4f} and accuracy {fastest.accuracy_delta:+.4f}"
              if fastest.primary == "macro_f1" and fastest.accuracy_delta is not None else
              f"{fastest.primary} {fastest.metric_delta:+.4g}")
    on_val = (f"; on validation, where it was chosen, {fastest.primary} {fastest.val_metric_delta:+.4g}"
              if fastest.val_metric_delta is not None else "")
    tie = (f" (tied within compress.latency_tie={cfg.latency_tie:g} with {', '.join(v.name for v in tied if v is not fastest)}: "
           "the smallest file wins)" if len(tied) > 1 else "")
    return Selection(device, fastest.name, f"fastest within the accuracy budgets on {device}: {lat:.2f} ms {metric}{tie}, "
                     f"{change} vs the teacher on test{on_val}", True)


def dominates(w: Variant, v: Variant, device: str, batch: int) -> bool:
    """``w`` makes ``v`` not worth carrying: ``v`` is not more accurate, and ``w`` is more accurate and as
    fast, or faster, or as fast and smaller. A tie in accuracy (noise) goes to the faster, then the smaller."""
    lw, lv = w.measured_p50(device, batch), v.measured_p50(device, batch)
    if more_accurate(v, w):
        return False
    return (more_accurate(w, v) and lw <= lv) or lw < lv or (lw == lv and w.size_bytes < v.size_bytes)


def pareto_front(variants: Sequence[Variant], device: str, batch: int) -> list[str]:
    """Variants measured on ``device`` that no other dominates (``dominates``)."""
    pts = [v for v in variants if v.p50(device, batch) is not None and v.parity_ok]
    return [v.name for v in pts if not any(dominates(w, v, device, batch) for w in pts if w is not v)]


def choose_bundle(variants: Sequence[Variant], selections: Sequence[Selection], batch: int,
                  teacher: str = "fp32", keep: str = "defaults") -> None:
    """Mark what the registered model carries (``compress.bundle``): each device's default; with
    ``keep="all"`` also the teacher (fallback and reference) and the other eligible variants on a
    device's Pareto front (an override by ``model_config`` is then still worth something), where
    variants never measured on a device they run on (fp16 without CUDA) are kept when eligible: nothing
    shows them dominated."""
    from forgeline.inference.contract import RUNS_ON

    chosen: dict[str, list[str]] = {}
    for s in selections:
        chosen.setdefault(s.variant, []).append(s.device)
    devices = {s.device for s in selections if s.measured}
    fronts = {d: pareto_front(variants, d, batch) for d in devices}
    for v in variants:
        on = [d for d in RUNS_ON.get(v.name, ()) if d in fronts]
        if v.path is None:
            v.bundled, v.note = False, v.note or "no file"
        elif v.name in chosen:
            v.bundled, v.note = True, f"default on {' and '.join(chosen[v.name])}"
        elif not v.parity_ok:
            v.bundled, v.note = False, "fails parity against its PyTorch source"
        elif not v.within_budget:
            v.bundled, v.note = False, "over the accuracy budget"
        elif keep != "all":
            v.bundled, v.note = False, "not a default (compress.bundle=defaults): its scores are in the run"
        elif v.name == teacher:  # the teacher is its own reference: parity and budget hold by definition
            v.bundled, v.note = True, "teacher: fallback and reference"
        elif not on:
            eligible_somewhere = any(d not in devices for d in RUNS_ON.get(v.name, ()))
            v.bundled, v.note = eligible_somewhere, ("not measured on its device" if eligible_somewhere else "")
        elif any(v.name in fronts[d] for d in on):
            v.bundled, v.note = True, "on the accuracy/latency Pareto front"
        else:
            v.bundled, v.note = False, ("dominated: another variant is as accurate on validation (within noise) and "
                                        "faster or smaller")


def _delta(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def table_markdown(variants: Sequence[Variant], selections: Sequence[Selection]) -> str:
    """The variant table of the run summary and ``compression/variants.md``: accuracy and macro-F1
    for single-label, the primary metric for other tasks."""
    devices = sorted({d for v in variants for d in v.latency})
    default = {s.variant: s.device for s in selections}
    classic = all(v.accuracy_delta is not None and v.primary in ("macro_f1", "accuracy") for v in variants)
    primary = variants[0].primary if variants else "macro_f1"
    cols = "| accuracy | Δ acc | macro-F1 | Δ F1 |" if classic else f"| {primary} | Δ {primary} |"
    head = f"| variant | size MB {cols} parity |" + "".join(f" {d} p50 b1 ms | {d} p50 b32 ms |" for d in devices) + " registered |"
    lines = [head, "|---|---:|" + ("---:|" * (4 if classic else 2)) + "---|" + "---:|---:|" * len(devices) + "---|"]
    for v in variants:
        parity = "–" if not v.parity else ("ok" if v.parity_ok else "FAIL") + f" ({v.parity['argmax_agreement']:.1%})"
        lat = "".join(f" {_ms(v.p50(d, 1))} | {_ms(v.p50(d, 32))} |" for d in devices)
        mark = ("**default " + "/".join(s.device for s in selections if s.variant == v.name) + "**; ") if v.name in default else ""
        values = (f"{v.metrics['accuracy']:.4f} | {_delta(v.accuracy_delta)} | {v.metrics['macro_f1']:.4f} | "
                  f"{_delta(v.macro_f1_delta)}" if classic else f"{v.metrics[v.primary]:.4f} | {_delta(v.metric_delta)}")
        lines.append(f"| {v.name} | {v.size_bytes / 1e6:.1f} | {values} | {parity} |{lat} "
                     f"{mark}{'yes' if v.bundled else 'no'}{': ' + v.note if v.note else ''} |")
    lines += [""] + [f"- **{s.device}** serves `{s.variant}`: {s.reason}" for s in selections]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def pareto_plot(variants: Sequence[Variant], device: str, batch: int, teacher_f1: float, max_drop: float,
                path: Path) -> Path | None:
    """The primary metric (macro-F1 for classification) against p50 latency on ``device``, Pareto front
    joined, budget line dashed (``teacher_f1``: the teacher's value; ``max_drop`` in the metric's units)."""
    pts = [v for v in variants if v.p50(device, batch) is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = set(pareto_front(variants, device, batch))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in pts:
        on = v.name in front
        ax.scatter(v.measured_p50(device, batch), v.metrics[v.primary], s=60 if on else 30,
                   color="tab:red" if on else "tab:gray", zorder=3)
        ax.annotate(f"{v.name} ({v.size_bytes / 1e6:.0f} MB)", (v.measured_p50(device, batch), v.metrics[v.primary]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    line = sorted((v.measured_p50(device, batch), v.metrics[v.primary]) for v in pts if v.name in front)
    if line:
        ax.plot(*zip(*line), color="tab:red", lw=1, label="Pareto front")
    higher = pts[0].higher_is_better
    ax.axhline(teacher_f1 - max_drop if higher else teacher_f1 + max_drop, ls="--", color="tab:blue", lw=1,
               label=f"{pts[0].primary} budget")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency, batch {batch} (ms, {device}, log scale)")
    ax.set_ylabel(f"test {pts[0].primary}")
    ax.set_title(f"Compression variants on {device}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def copy_into(src: Path, dst_dir: Path, name: str) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / name
    shutil.copyfile(src, dst)
    return dst


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())
