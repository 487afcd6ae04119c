"""ONNX export (dynamic batch/sequence axes, labels in metadata) and PyTorch↔ORT parity."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from forgeline.errors import ExportError, ParityError
from forgeline.config.schema import ExportConfig
from forgeline.inference import contract
from forgeline.inference.runtime import create_session, pad_batch, predict_proba_ids, predict_tagged_onnx, run_logits
from forgeline.inference.tasks import WordOutputs, softmax
from forgeline.training.classifier import output_spec_of, sep_id_of
from forgeline.inference.tokens import TokenEncoder
from forgeline.training.loop import encode, predict_proba, segment_ids
from forgeline.training import Model


class _LogitsOnly(torch.nn.Module):
    """(input_ids, attention_mask) -> logits. token_type_ids are passed as ``input_ids * 0`` so the
    graph has no shape-computing subgraph for them: every node can stay on the GPU (CUDA graphs). A
    pair model computes them from the first separator instead (``training.loop.segment_ids``)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model
        self.sep = sep_id_of(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if _has_token_types(self.model):
            kwargs["token_type_ids"] = input_ids * 0 if self.sep is None else segment_ids(input_ids, self.sep)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits


def _has_token_types(model: Model) -> bool:
    return int(getattr(model.config, "type_vocab_size", 0) or 0) > 0


FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "LayerNormalization", "Gelu", "BiasGelu", "FastGelu")


def fused_operators(path: Path) -> dict[str, int]:
    """How many of each fused transformer operator the ONNX graph at ``path`` has."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = {op: 0 for op in FUSED_OPS}
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts


def fusion_report(path: Path, model_type: str, optimized: bool) -> dict:
    """How much of the graph ONNX Runtime's optimizer fused: attention, LayerNorm and GELU nodes, and
    all nodes. A fused MiniLM has 6 Attention nodes in 85; a DeBERTa-v2 graph it cannot fuse has none
    in about 670, and runs its attention as dozens of small operators instead."""
    import collections

    import onnx

    ops = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {"model_type": model_type, "optimized": optimized, "nodes": sum(ops.values()),
            "attention": ops["Attention"] + ops["MultiHeadAttention"],
            "layernorm": ops["LayerNormalization"] + ops["SkipLayerNormalization"] + ops["EmbedLayerNormalization"],
            "gelu": ops["Gelu"] + ops["BiasGelu"] + ops["FastGelu"]}


def fusion_warning(report: dict) -> str | None:
    if not report["optimized"] or report["attention"]:
        return None
    return (f"ONNX Runtime's optimizer fused no attention in this {report['model_type']} graph (0 Attention nodes "
            f"among {report['nodes']}): its attention runs unfused, slower on CPU and CUDA. BERT-style encoders "
            "(model.base=minilm) fuse; other model types export correctly but unfused")


def attention_dims(model: Model) -> tuple[int, int]:
    """(heads, heads × head size) of the first layer's self-attention: what the optimizer's attention
    fusion must be told. After structured pruning a layer keeps fewer heads than the config's
    ``num_attention_heads`` over a smaller Q/K/V width, and the optimizer cannot read the head count
    from the graph (the exporter writes it as -1)."""
    try:
        att = model.base_model.encoder.layer[0].attention.self
        return int(att.num_attention_heads), int(att.all_head_size)
    except (AttributeError, IndexError):
        return int(model.config.num_attention_heads), int(model.config.hidden_size)


def optimize_graph(src: Path, dst: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse the exported graph with onnxruntime's BERT optimizer (offline, hardware independent).

    Attention, embedding+LayerNorm and GELU are fused in the file. Skip+LayerNorm and bias+GELU are
    left for the session to fuse where they pay off: the CUDA EP fuses them at load time, while on
    CPU the unfused LayerNormalization/Gelu kernels are faster (see forgeline.inference.runtime)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bert")
    opts.enable_skip_layer_norm = False
    opts.enable_bias_gelu = False
    with _quiet_logs():
        optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=0, optimization_options=opts)
    optimized.save_model_to_file(str(dst))
    return fused_operators(dst)


class _quiet_logs:
    """The optimizer logs every fusion at INFO/WARNING on the root logger; keep pipeline logs readable."""

    def __enter__(self):
        import logging

        self._logger = logging.getLogger("onnxruntime.transformers")
        self._root = logging.getLogger()
        self._levels = (self._logger.level, self._root.level)
        self._logger.setLevel(logging.ERROR)
        self._root.setLevel(max(self._root.level, logging.ERROR))
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._levels[0])
        self._root.setLevel(self._levels[1])
        return False


def export_onnx(model: Model, tokenizer, labels: list[str], path: Path, cfg: ExportConfig,
                max_length: int, sample_texts: Sequence[str] = ("an example sentence", "another, longer example sentence here")) -> Path:
    """Export an fp32 CPU copy of ``model`` to a single self-contained ONNX file, fuse it (when
    ``cfg.optimize``) and check it. The fused operator counts are stored in the file's metadata."""
    import tempfile

    import onnx

    copy_ = copy.deepcopy(model).float().cpu().eval()
    if cfg.exporter == "torchscript":  # eager attention: the matmul/softmax pattern onnxruntime fuses
        if hasattr(copy_, "set_attn_implementation"):
            copy_.set_attn_implementation("eager")
        else:
            copy_.config._attn_implementation = "eager"
    cpu = _LogitsOnly(copy_)
    texts = (list(sample_texts) * 2)[:2]  # two rows of different lengths: nothing specializes on them
    ids = encode(tokenizer, texts, max_length)
    input_ids, mask = (torch.from_numpy(a) for a in pad_batch(ids, tokenizer.pad_token_id))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx" if cfg.optimize else path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if cfg.exporter == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=contract.MAX_EXPORT_BATCH)
                    seq = torch.export.Dim("sequence", min=1, max=max(max_length, 2))
                    torch.onnx.export(
                        cpu, (input_ids, mask), str(raw), input_names=list(contract.INPUTS),
                        output_names=list(contract.OUTPUTS),
                        dynamic_shapes={name: {0: batch, 1: seq} for name in contract.INPUTS},
                        opset_version=cfg.opset, dynamo=True, external_data=False, verbose=False,
                    )
                else:
                    torch.onnx.export(
                        cpu, (input_ids, mask), str(raw), input_names=list(contract.INPUTS),
                        output_names=list(contract.OUTPUTS), opset_version=cfg.opset, dynamo=False,
                        dynamic_axes=contract.TOKEN_DYNAMIC_AXES if output_spec_of(copy_).tokens else contract.DYNAMIC_AXES,
                    )
        except Exception as e:  # noqa: BLE001 - exporter errors are many and deep
            other = "dynamo" if cfg.exporter == "torchscript" else "torchscript"
            raise ExportError(f"torch.onnx.export ({cfg.exporter}) failed: {e}. Try --set export.exporter={other}") from e
        fused = fused_operators(raw)
        if cfg.optimize:
            try:
                fused = optimize_graph(raw, path, *attention_dims(copy_))
            except Exception as e:  # noqa: BLE001
                raise ExportError(f"onnxruntime's transformer optimizer failed on the exported graph: {e}. "
                                  "Export without it: --set export.optimize=false") from e
    sep = sep_id_of(copy_)
    add_metadata(path, {"labels": json.dumps(labels), "max_length": str(max_length), "producer": "forgeline",
                        "task": json.dumps(output_spec_of(copy_).to_meta()),
                        **({contract.SEP_ID_KEY: str(sep)} if sep is not None else {}),
                        "outputs": contract.LOGITS, "pad_token_id": str(tokenizer.pad_token_id),
                        "exporter": cfg.exporter, "fused_operators": json.dumps({k: v for k, v in fused.items() if v})})
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"onnx.checker rejected {path}: {e}") from e
    return path


def add_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
    onnx.save(model, str(path))


@dataclass
class ParityReport:
    ok: bool
    max_abs_prob_diff: float
    max_abs_logit_diff: float
    argmax_agreement: float
    rows: int
    atol: float

    def to_dict(self) -> dict:
        return asdict(self)

    def raise_if_failed(self, onnx_path: Path) -> None:
        if not self.ok:
            raise ParityError(
                f"ONNX model {onnx_path} differs from PyTorch: max |Δprob| {self.max_abs_prob_diff:.3g} > "
                f"export.parity_atol {self.atol:g} over {self.rows} test rows (argmax agreement "
                f"{self.argmax_agreement:.1%}). The export is wrong or the file was altered; re-export, or try "
                "--set export.optimize=false (no operator fusion) or the other export.exporter."
            )


def check_parity(model: Model, tokenizer, onnx_path: Path, texts: Sequence[str], max_length: int,
                 cfg: ExportConfig, batch_size: int = 32, raise_on_fail: bool = True,
                 pairs: Sequence[str] | None = None) -> ParityReport:
    """Compare PyTorch (fp32, CPU) and ONNX Runtime (CPU) on real batches of ``texts`` (and their
    ``pairs``). The task's outputs are compared on a unit scale (``OutputSpec.comparable``: regression
    scores in target standard deviations), and "argmax agreement" is the task's decision agreement."""
    texts = list(texts)[: cfg.parity_batches * batch_size]
    pairs = None if pairs is None else list(pairs)[: len(texts)]
    if not texts:
        raise ParityError("no texts to check parity on; the test split is empty")
    cpu = copy.deepcopy(model).float().cpu().eval()
    spec, sep = output_spec_of(cpu), sep_id_of(cpu)
    session = create_session(onnx_path, device="cpu")
    ids = encode(tokenizer, texts, max_length, pairs if sep is not None else None)
    logit_diff = 0.0
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            input_ids, mask = pad_batch(ids[start : start + batch_size], tokenizer.pad_token_id)
            tensors = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
            if sep is not None:
                tensors["token_type_ids"] = segment_ids(tensors["input_ids"], sep)
            ref = cpu(**tensors).logits.numpy()
            got = run_logits(session, input_ids, mask)
            diff = np.abs(ref - got)
            if diff.ndim == 3:  # per piece: padding positions are no output
                diff = diff[mask.astype(bool)]
            logit_diff = max(logit_diff, float(diff.max()))
    ref_p = predict_proba(cpu, tokenizer, texts, max_length, batch_size, "cpu", pairs)
    if isinstance(spec, WordOutputs):
        got_p = predict_tagged_onnx(session, TokenEncoder(tokenizer, max_length, spec.stride), texts, spec, batch_size)
    else:
        got_p = predict_proba_ids(session, ids, tokenizer.pad_token_id, batch_size, activate=spec.activate)
    prob_diff = float(np.abs(spec.comparable(ref_p) - spec.comparable(got_p)).max())
    agree = spec.agreement(ref_p, got_p)
    ok = bool(np.isfinite(prob_diff) and prob_diff <= cfg.parity_atol)
    report = ParityReport(ok=ok, max_abs_prob_diff=prob_diff, max_abs_logit_diff=logit_diff,
                          argmax_agreement=agree, rows=len(texts), atol=cfg.parity_atol)
    if raise_on_fail:
        report.raise_if_failed(onnx_path)
    return report


__all__ = ["FUSED_OPS", "ParityReport", "add_metadata", "check_parity", "export_onnx", "fused_operators",
           "optimize_graph", "softmax"]
