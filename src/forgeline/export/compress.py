"""Compression variants: global magnitude pruning (re-evaluated) and INT8 dynamic quantization of the
ONNX model. Each variant records its size and accuracy delta; only variants within the accuracy
budget are bundled into the registered model."""

from __future__ import annotations

import copy
import gzip
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from forgeline.config.schema import CompressConfig


@dataclass
class Variant:
    name: str
    path: Path | None
    size_bytes: int
    gzip_bytes: int
    metrics: dict[str, float]
    accuracy_delta: float
    macro_f1_delta: float
    within_budget: bool
    extra: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        return d


def gzip_size(path: Path) -> int:
    """Size after gzip: what pruning's zeros buy on disk and over the wire."""
    out = 0
    with path.open("rb") as f:
        comp = gzip.compress(f.read(), compresslevel=1)
        out = len(comp)
    return out


def linear_weights(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Linear)]


def sparsity(model: torch.nn.Module) -> float:
    total = zeros = 0
    for module, name in linear_weights(model):
        w = getattr(module, name)
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def prune_global(model: torch.nn.Module, amount: float) -> torch.nn.Module:
    """A pruned copy: the ``amount`` fraction of all Linear weights with the smallest |w| set to 0."""
    import torch.nn.utils.prune as prune

    pruned = copy.deepcopy(model).float().cpu().eval()
    params = linear_weights(pruned)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in params:
        prune.remove(module, name)
    return pruned


def quantize_int8(onnx_path: Path, out_path: Path) -> Path:
    """Dynamic INT8 quantization (weights int8 per channel, activations quantized at run time) for CPU
    serving. Fused Attention becomes QAttention, EmbedLayerNormalization QEmbedLayerNormalization."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import logging

    out_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic pre-processing hint on the root logger
    import tempfile

    import onnx

    # Drop the exporter's intermediate shape annotations: some exporter versions write value_info that
    # onnx shape inference (run inside quantize_dynamic) contradicts. Inference recomputes them.
    model = onnx.load(str(onnx_path))
    del model.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        stripped = Path(tmp) / "model.onnx"
        onnx.save(model, str(stripped))
        try:
            # per-channel weight scales: a smaller accuracy cost than per-tensor at the same speed. The
            # fused contrib ops (Attention, EmbedLayerNormalization) have no ONNX type inference, so
            # tensors after them default to float.
            quantize_dynamic(str(stripped), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            root.setLevel(level)
    # quantize_dynamic drops nothing we rely on, but keep the metadata (labels) explicitly.
    from forgeline.inference.runtime import model_metadata
    from forgeline.export.onnx import add_metadata

    add_metadata(out_path, model_metadata(onnx_path))
    return out_path


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


def make_variant(name: str, path: Path | None, metrics: dict[str, float], base: dict[str, float],
                 cfg: CompressConfig, size_bytes: int | None = None, extra: dict[str, float] | None = None) -> Variant:
    acc_delta = metrics["accuracy"] - base["accuracy"]
    f1_delta = metrics["macro_f1"] - base["macro_f1"]
    size = size_bytes if size_bytes is not None else (path.stat().st_size if path else 0)
    return Variant(
        name=name, path=path, size_bytes=size, gzip_bytes=gzip_size(path) if path else 0, metrics=metrics,
        accuracy_delta=float(acc_delta), macro_f1_delta=float(f1_delta),
        within_budget=bool(-acc_delta <= cfg.max_accuracy_drop + 1e-12), extra=extra or {},
    )


def copy_into(src: Path, dst_dir: Path, name: str) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / name
    shutil.copyfile(src, dst)
    return dst


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())
