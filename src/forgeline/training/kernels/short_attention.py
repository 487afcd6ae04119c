"""Fused attention for short sequences (at most 128 tokens), used while fine-tuning on CUDA.

Why: MiniLM has 12 heads of dimension 32. At 128 tokens the library kernels (cuDNN / flash, with
dropout) spend about 0.5 ms per layer for a b256 step, a fifth of the whole step, although q, k and v
are only 25 MB each. Here one Triton program holds every key and value of one (batch, head) in
registers, so the softmax needs no online rescaling, the padding mask is a per-key bias read once,
and attention-probability dropout is regenerated from a Philox seed in the backward pass instead of
being stored.

Use: ``enable(model)`` registers the ``forgeline_short`` attention with transformers, switches the
model to it and gives each self-attention one GEMM for q, k and v (the kernel reads the packed
projection and writes its gradient in place, so nothing is stacked); ``disable(model)`` undoes both.
Checkpoints do not record the attention implementation, so a saved model loads anywhere. Calls the
kernel cannot take (CPU, fp32, longer sequences, other head sizes, 4-D masks) run PyTorch's
``scaled_dot_product_attention`` with the same mask, so a model keeps working wherever it runs.

No ``from __future__ import annotations`` here: ``torch.library.custom_op`` reads the annotations."""

import math
import types
from typing import Optional

import torch
import torch.nn.functional as F

try:  # CPU-only installs have no Triton: everything below falls back to sdpa
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

NAME = "forgeline_short"
MAX_SEQ = 128
HEAD_DIMS = (16, 32, 64)
_MASK_BIAS = -1.0e30  # finite, so a row whose keys are all padding gives no NaN
# launch shapes measured on an H100 (tests/gpu_train_probe.py attn)
FWD_BLOCK_M, FWD_WARPS = 64, 4
BWD_BLOCK_M, BWD_WARPS = 16, 4
PHILOX_ROUNDS = 10  # as cuRAND's Philox4x32-10, which PyTorch's own dropout uses


if triton is not None:

    @triton.jit
    def _dropout_keep(seed, bh, offs_m, S, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      N_ROUNDS: tl.constexpr):
        # one Philox call gives 4 x 32 random bits, read as 8 16-bit numbers: one per (query, key).
        # Counters are per (row, group of 8 keys), so fwd and bwd draw the same mask at any BLOCK_M.
        row = bh * S + offs_m
        offs = row[:, None] * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)[None, :]
        r0, r1, r2, r3 = tl.randint4x(seed, offs, N_ROUNDS)
        r = tl.join(tl.join(r0, r1), tl.join(r2, r3))
        r = tl.reshape(tl.join(r & 0xFFFF, r >> 16), (BLOCK_M, BLOCK_N))
        return r.to(tl.int32) >= threshold

    @triton.jit
    def _fwd_kernel(Q, K, V, BIAS, SEED, O, LSE,
                    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
                    H, S, scale, threshold, keep_scale,
                    HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, N_ROUNDS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        m_ok = offs_m < S
        n_ok = offs_n < S
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :], mask=m_ok[:, None], other=0.0)
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        if HAS_BIAS:
            s += tl.load(BIAS + b * S + offs_n, mask=n_ok, other=0.0)[None, :]
        s = tl.where(n_ok[None, :], s, float("-inf"))
        row_max = tl.max(s, 1)
        p = tl.exp(s - row_max[:, None])
        denom = tl.sum(p, 1)
        p = p / denom[:, None]
        if DROPOUT:
            keep = _dropout_keep(tl.load(SEED), bh, offs_m, S, threshold, BLOCK_M, BLOCK_N, N_ROUNDS)
            p = tl.where(keep, p * keep_scale, 0.0)
        o = tl.dot(p.to(v.dtype), v)
        tl.store(O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :], o.to(O.dtype.element_ty),
                 mask=m_ok[:, None])
        tl.store(LSE + bh * S + offs_m, row_max + tl.log(denom), mask=m_ok)

    @triton.jit
    def _bwd_kernel(Q, K, V, O, DO, BIAS, SEED, LSE, DQ, DK, DV,
                    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos, sdob, sdoh, sdos,
                    sgb, sgh, sgs,
                    H, S, scale, threshold, keep_scale,
                    HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, N_ROUNDS: tl.constexpr, N_BLOCKS_M: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
        # one program per (batch, head): dk and dv accumulate over all query blocks without atomics
        bh = tl.program_id(0)
        b = bh // H
        h = bh % H
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        n_ok = offs_n < S
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * sks + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        if HAS_BIAS:
            bias = tl.load(BIAS + b * S + offs_n, mask=n_ok, other=0.0)
        if DROPOUT:
            seed = tl.load(SEED)
        dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
        for i in range(N_BLOCKS_M):  # cdiv(S, BLOCK_M), a constant: unrolled, and the CPU interpreter needs it
            offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
            m_ok = offs_m < S
            q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :], mask=m_ok[:, None], other=0.0)
            o = tl.load(O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :], mask=m_ok[:, None], other=0.0)
            do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdos + offs_d[None, :], mask=m_ok[:, None],
                         other=0.0)
            lse = tl.load(LSE + bh * S + offs_m, mask=m_ok, other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            if HAS_BIAS:
                s += bias[None, :]
            p = tl.where(n_ok[None, :] & m_ok[:, None], tl.exp(s - lse[:, None]), 0.0)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
            dp = tl.dot(do, tl.trans(v))
            if DROPOUT:
                keep = _dropout_keep(seed, bh, offs_m, S, threshold, BLOCK_M, BLOCK_N, N_ROUNDS)
                p_used = tl.where(keep, p * keep_scale, 0.0)
                dp = tl.where(keep, dp * keep_scale, 0.0)
            else:
                p_used = p
            dv += tl.dot(tl.trans(p_used.to(do.dtype)), do)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k) * scale
            tl.store(DQ + b * sgb + h * sgh + offs_m[:, None] * sgs + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                     mask=m_ok[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
        g = b * sgb + h * sgh + offs_n[:, None] * sgs + offs_d[None, :]
        tl.store(DK + g, (dk * scale).to(DK.dtype.element_ty), mask=n_ok[:, None])
        tl.store(DV + g, dv.to(DV.dtype.element_ty), mask=n_ok[:, None])


def _bhsd(x: torch.Tensor) -> tuple[int, int, int]:
    """Batch, head and sequence strides of a (B, H, S, D) view."""
    return x.stride(0), x.stride(1), x.stride(2)


def _bshd_as_bhsd(x: torch.Tensor) -> tuple[int, int, int]:
    """Batch, head and sequence strides of a contiguous (B, S, H, D) tensor read as (B, H, S, D)."""
    return x.stride(0), x.stride(2), x.stride(1)


def _last_dim_dense(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _dropout_args(p: float) -> tuple[int, float]:
    """Drop where a 16-bit random number is below ``threshold``; kept values scale by 1 / P(keep)."""
    threshold = min(65535, round(p * 65536))
    return threshold, 65536.0 / (65536 - threshold)


def _block_n(seq: int) -> int:
    return max(16, triton.next_power_of_2(seq))


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                  seed: torch.Tensor, p: float, scale: float,
                  block_m: Optional[int] = None, num_warps: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v: (B, H, S, D) views; bias: (B, S) float32 added to every query's scores. Returns the
    output as (B, S, H, D), the layout the model reshapes next, and the log-sum-exp (B, H, S)."""
    q, k, v = (_last_dim_dense(x) for x in (q, k, v))
    B, H, S, D = q.shape
    o = torch.empty((B, S, H, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, S), device=q.device, dtype=torch.float32)
    block_m, num_warps = min(block_m or FWD_BLOCK_M, _block_n(S)), num_warps or FWD_WARPS
    _fwd_kernel[(triton.cdiv(S, block_m), B * H)](
        q, k, v, bias if bias is not None else lse, seed, o, lse,
        *_bhsd(q), *_bhsd(k), *_bhsd(v), *_bshd_as_bhsd(o),
        H, S, scale, *_dropout_args(p), HAS_BIAS=bias is not None, DROPOUT=p > 0.0, N_ROUNDS=PHILOX_ROUNDS,
        BLOCK_M=block_m, BLOCK_N=_block_n(S), HEAD_DIM=D, num_warps=num_warps)
    return o, lse


def attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                  lse: torch.Tensor, bias: Optional[torch.Tensor], seed: torch.Tensor, p: float, scale: float,
                  block_m: Optional[int] = None, num_warps: Optional[int] = None,
                  out: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of q, k and v as (B, S, H, D) tensors (new, or written into ``out``: three
    (B, S, H, D) views with equal strides); do and o are (B, S, H, D)."""
    q, k, v, o, do = (_last_dim_dense(x) for x in (q, k, v, o, do))
    B, H, S, D = q.shape
    if out is None:
        out = (torch.empty((B, S, H, D), device=q.device, dtype=q.dtype), torch.empty((B, S, H, D), device=q.device, dtype=q.dtype),
               torch.empty((B, S, H, D), device=q.device, dtype=q.dtype))
    dq, dk, dv = out
    block_m, num_warps = min(block_m or BWD_BLOCK_M, _block_n(S)), num_warps or BWD_WARPS
    _bwd_kernel[(B * H,)](
        q, k, v, o, do, bias if bias is not None else lse, seed, lse, dq, dk, dv,
        *_bhsd(q), *_bhsd(k), *_bhsd(v), *_bshd_as_bhsd(o), *_bshd_as_bhsd(do), *_bshd_as_bhsd(dq),
        H, S, scale, *_dropout_args(p), HAS_BIAS=bias is not None, DROPOUT=p > 0.0, N_ROUNDS=PHILOX_ROUNDS,
        N_BLOCKS_M=triton.cdiv(S, block_m), BLOCK_M=block_m, BLOCK_N=_block_n(S), HEAD_DIM=D, num_warps=num_warps)
    return dq, dk, dv


@torch.library.custom_op("forgeline::short_attention", mutates_args=())
def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                    seed: torch.Tensor, p: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = attention_fwd(q, k, v, bias, seed, p, scale)
    return o, lse


@short_attention.register_fake
def _(q, k, v, bias, seed, p, scale):
    B, H, S, D = q.shape
    return q.new_empty((B, S, H, D)), q.new_empty((B, H, S), dtype=torch.float32)


@torch.library.custom_op("forgeline::short_attention_backward", mutates_args=())
def short_attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             o: torch.Tensor, lse: torch.Tensor, bias: Optional[torch.Tensor],
                             seed: torch.Tensor, p: float, scale: float
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = attention_bwd(do, q, k, v, o, lse, bias, seed, p, scale)
    return dq, dk, dv


@short_attention_backward.register_fake
def _(do, q, k, v, o, lse, bias, seed, p, scale):
    B, H, S, D = q.shape
    return tuple(q.new_empty((B, S, H, D)) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, bias, seed, p, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, bias, seed)
    ctx.p, ctx.scale = p, scale


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, bias, seed = ctx.saved_tensors
    dq, dk, dv = short_attention_backward(do, q, k, v, o, lse, bias, seed, ctx.p, ctx.scale)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None, None, None, None


short_attention.register_autograd(_backward, setup_context=_setup_context)


def _unpack(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S, 3, H, D) to q, k, v as (B, H, S, D) views."""
    return qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)


@torch.library.custom_op("forgeline::short_attention_qkv", mutates_args=())
def short_attention_qkv(qkv: torch.Tensor, bias: Optional[torch.Tensor], seed: torch.Tensor, p: float,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``short_attention`` on one projection output (B, S, 3, H, D): its gradient is written as
    one tensor, so the fused q/k/v GEMM's backward needs no stack of three."""
    o, lse = attention_fwd(*_unpack(qkv), bias, seed, p, scale)
    return o, lse


@short_attention_qkv.register_fake
def _(qkv, bias, seed, p, scale):
    B, S, _, H, D = qkv.shape
    return qkv.new_empty((B, S, H, D)), qkv.new_empty((B, H, S), dtype=torch.float32)


@torch.library.custom_op("forgeline::short_attention_qkv_backward", mutates_args=())
def short_attention_qkv_backward(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                                 bias: Optional[torch.Tensor], seed: torch.Tensor, p: float,
                                 scale: float) -> torch.Tensor:
    dqkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)
    attention_bwd(do, *_unpack(qkv), o, lse, bias, seed, p, scale, out=(dqkv[:, :, 0], dqkv[:, :, 1], dqkv[:, :, 2]))
    return dqkv


@short_attention_qkv_backward.register_fake
def _(do, qkv, o, lse, bias, seed, p, scale):
    return qkv.new_empty(qkv.shape)


def _setup_qkv(ctx, inputs, output):
    qkv, bias, seed, p, scale = inputs
    o, lse = output
    ctx.save_for_backward(qkv, o, lse, bias, seed)
    ctx.p, ctx.scale = p, scale


def _backward_qkv(ctx, do, _dlse):
    qkv, o, lse, bias, seed = ctx.saved_tensors
    return short_attention_qkv_backward(do, qkv, o, lse, bias, seed, ctx.p, ctx.scale), None, None, None, None


short_attention_qkv.register_autograd(_backward_qkv, setup_context=_setup_qkv)


def kernel_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> bool:
    """Whether the fused kernel can run this call (else sdpa does)."""
    if triton is None or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or q.dim() != 4:
        return False
    B, H, S, D = q.shape
    return (k.shape == q.shape and v.shape == q.shape and k.dtype == q.dtype and v.dtype == q.dtype
            and S <= MAX_SEQ and D in HEAD_DIMS and B * H * S * _block_n(S) < 2**31
            and (mask is None or (mask.dim() == 2 and tuple(mask.shape) == (B, S))))


def key_padding_bias(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) mask, True / 1 for tokens, to the float32 bias the kernel adds to every query's scores."""
    return torch.where(mask.bool(), 0.0, _MASK_BIAS).to(torch.float32).contiguous()


def _seed(dropout: float, device: torch.device) -> torch.Tensor:
    if dropout > 0.0:
        return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)
    return torch.zeros(1, device=device, dtype=torch.int64)


def _sdpa(query, key, value, attention_mask, dropout: float, scale: float) -> torch.Tensor:
    mask = attention_mask
    if mask is not None and mask.dim() == 2:  # key padding (B, S) from padding_mask below
        mask = mask.bool()[:, None, None, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)
    return out.transpose(1, 2).contiguous()


def attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None,
                      dropout: float = 0.0, **kwargs):
    """transformers attention interface: (B, H, S, D) inputs, (B, S, H, D) output, no weights."""
    scale = float(scaling) if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    if kernel_supports(query, key, value, attention_mask):
        bias = None if attention_mask is None else key_padding_bias(attention_mask)
        out, _ = short_attention(query, key, value, bias, _seed(dropout, query.device), float(dropout), scale)
        return out, None
    return _sdpa(query, key, value, attention_mask, dropout, scale), None


def fused_qkv_forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                      past_key_values=None, **kwargs):
    """BertSelfAttention.forward with one GEMM for q, k and v (weights concatenated per call, so the
    parameters and checkpoints stay as they are) feeding the kernel's packed entry point."""
    if past_key_values is not None or kwargs.get("encoder_hidden_states") is not None:
        return type(self).forward(self, hidden_states, attention_mask, past_key_values, **kwargs)
    B, S = hidden_states.shape[:2]
    H, D = self.num_attention_heads, self.attention_head_size
    weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
    bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
    qkv = F.linear(hidden_states, weight, bias).view(B, S, 3, H, D)
    dropout = self.dropout.p if self.training else 0.0
    q, k, v = _unpack(qkv)
    if kernel_supports(q, k, v, attention_mask):
        key_bias = None if attention_mask is None else key_padding_bias(attention_mask)
        out, _ = short_attention_qkv(qkv, key_bias, _seed(dropout, qkv.device), float(dropout), float(self.scaling))
    else:
        out = _sdpa(q, k, v, attention_mask, dropout, float(self.scaling))
    return out.reshape(B, S, H * D), None


def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 mask_function=None, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """transformers mask interface for encoders: the 2-D key padding mask as it is (None without one).
    No ``.all()`` check as flash attention's has: that would sync the host and break compiled graphs."""
    return None if attention_mask is None else attention_mask[:, -kv_length:]


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, padding_mask)


def _set(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = name


def _self_attentions(model) -> list:
    return [m for m in model.modules()
            if all(hasattr(m, a) for a in ("query", "key", "value", "num_attention_heads", "attention_head_size",
                                           "scaling", "dropout"))
            and not getattr(m, "is_decoder", False) and m.query.bias is not None]


def enable(model, fuse_qkv: bool = True, require_triton: bool = True) -> bool:
    """Switch ``model`` to the fused short-sequence attention (and, with ``fuse_qkv``, one q/k/v GEMM
    per layer); False (model unchanged) where Triton is missing or the model's heads do not fit."""
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    if (require_triton and triton is None) or head_dim not in HEAD_DIMS or getattr(cfg, "is_decoder", False):
        return False
    register()
    _set(model, NAME)
    if fuse_qkv:
        for m in _self_attentions(model):
            m.forward = types.MethodType(fused_qkv_forward, m)
    return True


def disable(model) -> None:
    """Back to PyTorch sdpa and the model's own attention modules."""
    for m in _self_attentions(model):
        m.__dict__.pop("forward", None)
    _set(model, "sdpa")


def active(model) -> bool:
    return getattr(model.config, "_attn_implementation", None) == NAME
