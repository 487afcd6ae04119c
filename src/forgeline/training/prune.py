"""Structured pruning: attention heads, FFN neurons, whole layers and unused vocabulary are removed
from the fine-tuned model, so the exported ONNX graph has smaller matrices (not zeros in full-size
ones, which is all magnitude pruning gives: same file size, same speed).

Which heads and neurons go is decided from data: first-order Taylor importance |Σ activation ×
gradient| of each head's context vector and of each FFN neuron's activation, summed per example over
batches of the training split (Molchanov et al. 2019; Michel et al. 2019 for heads). Every kept layer
keeps the same number of heads and neurons: ONNX Runtime's attention fusion takes one head count for
the whole graph, and a uniform shape keeps the model describable by its config.

Works on BERT-style encoders (``model.base_model.encoder.layer[i].attention.self.query`` ...), which
is what ``model.base=minilm`` is; other architectures raise :class:`PruningError`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from forgeline.training import Model


class PruningError(ValueError):
    """A pruning target the model cannot take (every head of a layer, an unsupported architecture)."""


@dataclass
class Importance:
    heads: np.ndarray
    """[layers, heads]: |Σ context × gradient| per head."""
    neurons: np.ndarray
    """[layers, intermediate]: |Σ activation × gradient| per FFN neuron."""


@dataclass
class PrunePlan:
    layers: list[int]
    """Encoder layers kept, in order (indices into the teacher's layers)."""
    heads: dict[int, list[int]]
    """Kept layer -> the heads it keeps (sorted)."""
    neurons: dict[int, list[int]]
    """Kept layer -> the FFN neurons it keeps (sorted)."""

    def describe(self) -> dict[str, int]:
        first = self.layers[0]
        return {"layers": len(self.layers), "heads_per_layer": len(self.heads[first]),
                "ffn_per_layer": len(self.neurons[first])}


def encoder_layers(model: Model) -> Model:
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList) or not all(_is_bert_layer(layer) for layer in layers):
        raise PruningError(f"structured pruning supports BERT-style encoders (model.base=minilm); this model is "
                           f"{getattr(getattr(model, 'config', None), 'model_type', type(model).__name__)!r}. "
                           "Set compress.student=false")
    return layers


def _is_bert_layer(layer: Model) -> bool:
    try:
        layer.attention.self.query, layer.attention.output.dense, layer.intermediate.dense, layer.output.dense
    except AttributeError:
        return False
    return True


def head_size(model: Model) -> int:
    return int(model.config.hidden_size) // int(model.config.num_attention_heads)


def importance(model: Model, batches: Sequence[tuple[dict[str, torch.Tensor], torch.Tensor]],
               loss=None) -> Importance:
    """Taylor importance of every head and FFN neuron on ``batches`` of (inputs, targets), under the
    task's ``loss(logits, y)`` (cross-entropy by default), in eval mode (no dropout). The weights are
    not changed."""
    layers = encoder_layers(model)
    d = head_size(model)
    n_heads = int(model.config.num_attention_heads)
    heads = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    neurons = torch.zeros(len(layers), layers[0].intermediate.dense.out_features, dtype=torch.float64)
    handles = []

    def watch(i: int, kind: str):
        def pre_hook(module, args):
            x = args[0]
            if not x.requires_grad:
                return

            def grad_hook(g, x=x.detach()):
                prod = (x * g).float()  # [B, T, width]
                if kind == "heads":
                    score = prod.view(*prod.shape[:2], n_heads, d).sum(dim=(1, 3)).abs().sum(0)
                    heads[i] += score.double().cpu()
                else:
                    neurons[i] += prod.sum(1).abs().sum(0).double().cpu()
            x.register_hook(grad_hook)
        return pre_hook

    for i, layer in enumerate(layers):
        handles.append(layer.attention.output.dense.register_forward_pre_hook(watch(i, "heads")))
        handles.append(layer.output.dense.register_forward_pre_hook(watch(i, "neurons")))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for inputs, y in batches:
                logits = model(**inputs).logits
                (loss or torch.nn.functional.cross_entropy)(logits.float(), y).backward()
                model.zero_grad(set_to_none=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Importance(heads.numpy(), neurons.numpy())


def heads_kept(fraction: float, n_heads: int) -> int:
    """Heads a layer keeps when ``fraction`` of its ``n_heads`` are removed (fewer than 1 is refused)."""
    return n_heads - int(round(fraction * n_heads))


def kept_layers(n_layers: int, keep: int) -> list[int]:
    """The teacher layers a ``keep``-layer student is cut from: the teacher's layers split into ``keep``
    equal blocks, the last layer of each (so the last layer is always kept). Each student layer does one
    block's work and is distilled towards that block's output. Measured on seed 44's default preset (6 to
    3 layers, same teacher and settings): layers 1, 3, 5 reached 0.740 validation macro-F1, ahead at every
    epoch, against 0.732-0.737 for 0, 2, 5 (evenly spaced from the first) under five other settings
    (benchmarks/results/compression-cpu-seed44-student-probes-2026-12-03.json)."""
    keep = min(keep, n_layers)
    return sorted({math.ceil((i + 1) * n_layers / keep) - 1 for i in range(keep)})


def plan(scores: Importance, layers: int | None, heads_fraction: float, ffn_fraction: float) -> PrunePlan:
    """Which layers, heads and neurons to keep: ``layers`` layers by ``kept_layers``; in each, the
    ``1 - fraction`` most important heads and neurons."""
    n_layers, n_heads = scores.heads.shape
    kept = kept_layers(n_layers, n_layers if layers is None else layers)
    h_keep = heads_kept(heads_fraction, n_heads)
    if h_keep < 1:
        raise PruningError(f"compress.prune_heads={heads_fraction:g} would remove every attention head of each layer "
                           f"({n_heads} heads, {n_heads - h_keep} removed): a layer needs at least one. Use at most "
                           f"{(n_heads - 1) / n_heads:.3f}, or fewer layers (compress.student_layers)")
    n_neurons = scores.neurons.shape[1]
    f_keep = max(1, n_neurons - int(round(ffn_fraction * n_neurons)))
    heads = {i: sorted(np.argsort(-scores.heads[i], kind="stable")[:h_keep].tolist()) for i in kept}
    neurons = {i: sorted(np.argsort(-scores.neurons[i], kind="stable")[:f_keep].tolist()) for i in kept}
    return PrunePlan(kept, heads, neurons)


def _rows(linear: torch.nn.Linear, index: torch.Tensor) -> torch.nn.Linear:
    """A Linear keeping output units ``index``."""
    out = torch.nn.Linear(linear.in_features, len(index), bias=linear.bias is not None)
    out.weight.data = linear.weight.data[index].clone()
    if linear.bias is not None:
        out.bias.data = linear.bias.data[index].clone()
    return out


def _columns(linear: torch.nn.Linear, index: torch.Tensor) -> torch.nn.Linear:
    """A Linear reading only input features ``index`` (bias unchanged)."""
    out = torch.nn.Linear(len(index), linear.out_features, bias=linear.bias is not None)
    out.weight.data = linear.weight.data[:, index].clone()
    if linear.bias is not None:
        out.bias.data = linear.bias.data.clone()
    return out


def apply(model: Model, p: PrunePlan) -> Model:
    """A CPU fp32 copy of ``model`` with the plan's layers, heads and neurons only: the matrices really
    shrink (Q/K/V and the attention output by the removed heads, both FFN matrices by the removed
    neurons); the computation of what is kept is unchanged."""
    pruned = copy.deepcopy(model).float().cpu().eval()
    layers = encoder_layers(pruned)
    d = head_size(pruned)
    for i in p.layers:
        layer = layers[i]
        cols = torch.tensor([h * d + j for h in p.heads[i] for j in range(d)], dtype=torch.long)
        att = layer.attention.self
        att.query, att.key, att.value = (_rows(m, cols) for m in (att.query, att.key, att.value))
        att.num_attention_heads = len(p.heads[i])
        att.all_head_size = len(cols)
        layer.attention.output.dense = _columns(layer.attention.output.dense, cols)
        keep = torch.tensor(p.neurons[i], dtype=torch.long)
        layer.intermediate.dense = _rows(layer.intermediate.dense, keep)
        layer.output.dense = _columns(layer.output.dense, keep)
    encoder = pruned.base_model.encoder
    encoder.layer = torch.nn.ModuleList([layers[i] for i in p.layers])
    pruned.config.num_hidden_layers = len(p.layers)
    pruned.config.intermediate_size = len(p.neurons[p.layers[0]])
    pruned.config.forgeline_heads_per_layer = len(p.heads[p.layers[0]])
    return pruned


@contextlib.contextmanager
def masked(model: Model, p: PrunePlan) -> Iterator[Model]:
    """``model`` computing what ``apply(model, p)`` computes, by masking instead of removing: removed
    heads' context and removed neurons' activations are zeroed, removed layers pass their input
    through. The reference the physically pruned model is tested against."""
    layers = encoder_layers(model)
    d = head_size(model)
    handles = []
    originals = {}

    def zero_except(keep: torch.Tensor):
        def pre_hook(module, args):
            mask = torch.zeros(args[0].shape[-1], dtype=args[0].dtype, device=args[0].device)
            mask[keep] = 1
            return (args[0] * mask, *args[1:])
        return pre_hook

    for i, layer in enumerate(layers):
        if i not in p.layers:
            originals[i] = layer.forward
            layer.forward = lambda hidden_states, *a, **k: hidden_states
            continue
        cols = torch.tensor([h * d + j for h in p.heads[i] for j in range(d)], dtype=torch.long)
        handles.append(layer.attention.output.dense.register_forward_pre_hook(zero_except(cols)))
        handles.append(layer.output.dense.register_forward_pre_hook(zero_except(torch.tensor(p.neurons[i]))))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for i, forward in originals.items():
            layers[i].forward = forward


class VocabRemap(torch.nn.Module):
    """The model with a smaller token-embedding table: token ids (from the unchanged tokenizer) are
    mapped to rows of the kept table inside the graph (one Gather), tokens not kept to [UNK].

    The embedding table is most of a small encoder (MiniLM: 11.7M of 22.7M parameters for 30,522
    tokens); a task's texts use a few thousand of them."""

    def __init__(self, model: Model, keep: Sequence[int], unk_id: int) -> None:
        super().__init__()
        keep = sorted(set(int(t) for t in keep) | {int(unk_id)})
        emb = model.get_input_embeddings()
        table = torch.full((emb.num_embeddings,), keep.index(int(unk_id)), dtype=torch.long)
        table[torch.tensor(keep)] = torch.arange(len(keep))
        small = torch.nn.Embedding(len(keep), emb.embedding_dim, padding_idx=None)
        small.weight.data = emb.weight.data[torch.tensor(keep)].clone()
        model.set_input_embeddings(small)
        model.config.vocab_size = len(keep)
        self.model = model
        self.remap: torch.Tensor
        self.register_buffer("remap", table, persistent=True)

    @property
    def config(self):
        return self.model.config

    @property
    def base_model(self) -> Model:
        return self.model.base_model

    def forward(self, input_ids: torch.Tensor, **kwargs):
        return self.model(input_ids=self.remap[input_ids], **kwargs)


def used_tokens(ids: Sequence[Sequence[int]], special: Sequence[int]) -> list[int]:
    """Token ids occurring in ``ids`` plus the tokenizer's special tokens."""
    seen = {int(t) for row in ids for t in row}
    return sorted(seen | {int(t) for t in special})


def parameter_count(model: Model) -> int:
    return sum(p.numel() for p in model.parameters())
