"""Self-attention's three projections (mha.1) as one matrix product, with three parameters kept.

GPT-2 keeps q, k and v in one `c_attn` matrix, so a token's projections are one matrix-vector product. minitx
keeps `q_proj`, `k_proj`, `v_proj` (their names are LoRA's targets and Hugging Face's keys), but lays their
weights side by side in one input-major tensor W = [W_q; W_k; W_v]^T of shape (C, C_q + 2 C_kv): each
parameter is a view of its columns. Without a gradient (decoding, `fill-mask`), x W is one product that reads
the parameters' current values (they are that memory). With a gradient the three projections run as written:
autograd needs the three parameters as the product's inputs, and a per-step copy into one matrix costs what it
saves (measured on the nanoGPT step).

Anything that gives a projection other memory (`model.to(...)`, assigning `.data`, wrapping it with LoRA) or a
forward hook of its own makes `fused_qkv` return None, and the three products run again: never a stale copy,
never a hook skipped.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as torch_module


def fuse_qkv_storage(attention: nn.Module) -> None:
    """Move `attention`'s q/k/v weights (and biases) into one input-major tensor, keeping each Parameter object
    (so an optimizer's references stay valid) and its values; a no-op unless all three are plain nn.Linear."""
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    if not all(type(p) is nn.Linear for p in projections) or len({p.bias is None for p in projections}) != 1:
        attention._qkv_storage = None
        return
    with torch.no_grad():
        weight = torch.cat([p.weight for p in projections]).t().contiguous()  # (C_q + 2 C_kv, C) -> (C, ...)
        bias = None if projections[0].bias is None else torch.cat([p.bias for p in projections])
    start = 0
    for p in projections:
        end = start + p.out_features
        p.weight.data = weight[:, start:end].t()  # (C, out) columns -> (out, C), nn.Linear's shape
        if bias is not None:
            p.bias.data = bias[start:end]
        start = end
    attention._qkv_storage = (weight, bias)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or _global_hooks())


def _global_hooks() -> bool:
    """torch's own registry of hooks on every module (`register_module_forward_hook`)."""
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def fused_qkv(attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W (C_q + 2 C_kv, C) as a transposed view, b or None) for F.linear, or None when the three projections
    no longer live in the shared tensor or a gradient is needed (see the module docstring)."""
    storage = attention.__dict__.get("_qkv_storage")
    if storage is None:
        return None
    weight, bias = storage
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    if type(q) is not nn.Linear or type(k) is not nn.Linear or type(v) is not nn.Linear:
        return None
    if _has_hooks(q) or _has_hooks(k) or _has_hooks(v):  # a user's forward hook on a projection must still run
        return None
    if torch.is_grad_enabled() and (q.weight.requires_grad or k.weight.requires_grad or v.weight.requires_grad
                                    or (bias is not None and (q.bias.requires_grad or k.bias.requires_grad
                                                              or v.bias.requires_grad))):
        return None
    start, size = weight.data_ptr(), weight.element_size()
    if (q.weight.data_ptr() != start or k.weight.data_ptr() != start + q.out_features * size
            or v.weight.data_ptr() != start + (q.out_features + k.out_features) * size
            or q.weight.dtype != weight.dtype or q.weight.stride() != (1, weight.shape[1])):
        return None
    if bias is not None:
        start, size = bias.data_ptr(), bias.element_size()
        if (q.bias.data_ptr() != start or k.bias.data_ptr() != start + q.out_features * size
                or v.bias.data_ptr() != start + (q.out_features + k.out_features) * size
                or q.bias.dtype != bias.dtype):
            return None
    return weight.t(), bias
