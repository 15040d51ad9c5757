"""Self-attention's three projections (mha.1) as one matrix product when nothing needs their gradients.

GPT-2 keeps q, k and v in one `c_attn` matrix, so a decoded token's projections are one matrix-vector product.
minitx keeps `q_proj`, `k_proj`, `v_proj` (their names are LoRA's targets and Hugging Face's keys) and, in eval
mode, lays their weights side by side in one input-major tensor W = [W_q; W_k; W_v]^T of shape (C, C_q + 2 C_kv):
each parameter is a view of its columns, so under no_grad x W is one product that reads the parameters' current
values (they are that memory). In training mode each weight has its own dense input-major tensor again: a
strided view of a shared matrix would make its gradient and AdamW's update run across the grain (16% of a
GPT-2-small step). `MultiHeadAttention.train` switches between the two; values never change.

Anything that gives a projection other memory (`.to(...)` is followed by a re-fuse; assigning `.data`, wrapping
it with LoRA) or a forward hook of its own makes `fused_qkv` return None, and the three products run: never a
stale copy, never a hook skipped.
"""

from __future__ import annotations

import torch
from torch import nn

from minitx.hooks import torch_hooks_on


def _projections(attention: nn.Module):
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    if all(type(p) is nn.Linear for p in projections) and len({p.bias is None for p in projections}) == 1:
        return projections
    return None


def fuse_qkv_storage(attention: nn.Module) -> None:
    """Lay q/k/v's weights (and biases) side by side in one input-major tensor, keeping each Parameter object
    and its values. Nothing is copied when they already are (eval() on an eval-mode model), and nothing
    happens unless all three are plain nn.Linear, biased alike (then the three products stay)."""
    if _in_storage(attention, grad=False):
        return
    attention._qkv_storage = None
    projections = _projections(attention)
    if projections is None:
        return
    with torch.no_grad():
        weight = torch.cat([p.weight for p in projections]).t().contiguous()  # (C_q + 2 C_kv, C) -> (C, ...)
        bias = None if projections[0].bias is None else torch.cat([p.bias for p in projections])
    offsets, start = [], 0
    for p in projections:
        end = start + p.out_features
        p.weight.data = weight[:, start:end].t()  # (C, out) columns -> (out, C), nn.Linear's shape
        if p.weight.grad is not None:  # a strided view's gradient is row-major (autograd's layout contract)
            p.weight.grad = p.weight.grad.contiguous()
        if bias is not None:
            p.bias.data = bias[start:end]
        offsets.append(start)
        start = end
    attention._qkv_storage = (weight, bias, weight.t(), tuple(offsets))


def unfuse_qkv_storage(attention: nn.Module) -> None:
    """Give each of q/k/v its own dense input-major weight (and bias) again: the layout training wants."""
    storage = attention.__dict__.get("_qkv_storage")
    attention._qkv_storage = None
    projections = _projections(attention)
    if storage is None or projections is None:
        return
    with torch.no_grad():
        for p in projections:
            p.weight.data = p.weight.t().contiguous().t()  # (out, C) view -> its own (C, out) row-major
            if p.weight.grad is not None:  # a dense parameter's gradient takes its layout
                p.weight.grad = p.weight.grad.t().contiguous().t()
            if p.bias is not None:
                p.bias.data = p.bias.clone()


def fused_qkv(attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W (C_q + 2 C_kv, C) as a transposed view, b or None) for F.linear, or None when a projection no longer
    lives in the shared tensor, has a forward hook, or a gradient is needed (see the module docstring).

    Called once per self-attention forward, so it reads the module's dicts directly (nn.Module.__getattr__
    would cost a microsecond an attribute)."""
    if not _in_storage(attention, torch.is_grad_enabled()):
        return None
    weight, bias, weight_t, _ = attention._qkv_storage
    return weight_t, bias


def _in_storage(attention: nn.Module, grad: bool) -> bool:
    """Do q/k/v still live in the shared tensor, unhooked, and (with `grad`) need no gradient?"""
    storage = attention.__dict__.get("_qkv_storage")
    if storage is None:
        return False
    weight, bias, _, offsets = storage
    modules, size = attention._modules, weight.element_size()
    w_start, b_start = weight.data_ptr(), None if bias is None else bias.data_ptr()
    for name, offset in zip(("q_proj", "k_proj", "v_proj"), offsets):
        p = modules[name]
        if type(p) is not nn.Linear or torch_hooks_on(p):
            return False  # LoRA-wrapped, or a user's hook (its own or a global one) that must run
        w, b = p._parameters["weight"], p._parameters["bias"]
        if w.data_ptr() != w_start + offset * size or w.dtype != weight.dtype or (grad and w.requires_grad):
            return False
        if bias is not None and (b is None or b.data_ptr() != b_start + offset * size or (grad and b.requires_grad)):
            return False
    return True
