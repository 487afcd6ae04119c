"""Reference for forgeline/training/kernels/short_attention.py, shared by its tests and
benchmarks/gpu_train_probe.py.

The kernel draws its dropout mask from Philox inside the kernel. To check the backward pass against
plain PyTorch, the dropped probability matrix is read back through the forward kernel itself: with
v one-hot over a chunk of keys, the output rows are that chunk of the dropped probabilities."""

from __future__ import annotations

import torch


def dropped_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, seed: torch.Tensor,
                  p: float, scale: float) -> torch.Tensor:
    """(B, H, S, S): softmax probabilities after the kernel's dropout (kept ones scaled by 1/(1-p))."""
    from forgeline.training.kernels.short_attention import attention_fwd

    B, H, S, D = q.shape
    out = torch.zeros(B, H, S, S, device=q.device, dtype=torch.float32)
    for start in range(0, S, D):
        v = torch.zeros(B, S, H, D, device=q.device, dtype=q.dtype)
        n = min(D, S - start)
        v[:, start:start + n, :, :n] = torch.eye(n, device=q.device, dtype=q.dtype)[:, None, :]
        o, _ = attention_fwd(q, k, v.transpose(1, 2), bias, seed, p, scale)
        out[..., start:start + n] = o.transpose(1, 2)[..., :n].float()
    return out


def reference_grads(q, k, v, bias, scale: float, p: float, p_dropped: torch.Tensor, do: torch.Tensor):
    """Output (B, S, H, D) and gradients of q, k, v (B, H, S, D) in float32 for a given dropped
    probability matrix (the kernel's, from ``dropped_probs``)."""
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    s = qf @ kf.transpose(-1, -2) * scale
    if bias is not None:
        s = s + bias[:, None, None, :]
    probs = torch.softmax(s, dim=-1)
    keep = (p_dropped != 0).float()
    probs = probs * keep / (1.0 - p) if p > 0 else probs
    out = (probs @ vf).transpose(1, 2)
    out.backward(do.float())
    return out.detach(), qf.grad, kf.grad, vf.grad
