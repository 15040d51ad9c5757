"""How a linear layer's weight sits in memory: input-major, as GPT-2's `Conv1D` keeps it.

`nn.Linear` stores W as (out, in), row-major, and computes x W^T. Nothing in the math changes if the same
(out, in)-shaped parameter is a transposed view of an (in, out) row-major tensor: the state dict, Hugging Face's
names and shapes, LoRA and the optimizers see the same parameter. What changes is the matrix-vector product of
decoding (one row of x against a weight too large for the cache): x W with W (in, out) row-major streams each
row of W once and is 1.4-1.8x faster on this project's CPUs than x W^T over an (out, in) matrix (the LM head of
GPT-2 small: 6.4 ms against 11.4 ms, one thread), and a training step of GPT-2 small at batch 1 x 64 is 12% faster
(1.22 vs 1.38 s); at larger batches the matrix-matrix products run at the same speed either way
(tests/test_blocks.py checks values and gradients are unchanged). The tied LM heads, whose gradients and AdamW
update are slower transposed, change layout with the model's mode (`lay_out_for`).
"""

from __future__ import annotations

import torch
from torch import nn

from minitx.hooks import torch_hooks_on


def input_major(weight: nn.Parameter) -> nn.Parameter:
    """The same (out, in) matrix as a new Parameter whose memory is the (in, out) row-major transpose."""
    if weight.dim() != 2 or weight.stride(0) == 1:  # already input-major (alone, or in a fused q/k/v tensor)
        return weight
    stored = weight.detach().t().contiguous()  # (out, in) -> (in, out), row-major
    return nn.Parameter(stored.t(), requires_grad=weight.requires_grad)  # shape (out, in) again


def store_input_major(module: nn.Module) -> nn.Module:
    """Re-store the weight of every `nn.Linear` in `module` (itself included) as the transpose of an (in, out)
    row-major tensor; values, shapes, names and `requires_grad` unchanged. Returns `module`. (In eval mode an
    attention's q/k/v are then laid side by side in one: minitx.attention.fused_qkv.)"""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            layer.weight = input_major(layer.weight)
    return module


def lay_out_for(weight: nn.Parameter, inference: bool) -> None:
    """Give `weight` (out, in) the layout the mode wants, in place (same Parameter, same values): input-major
    for inference (decoding's matrix-vector products), nn.Linear's (out, in) row-major for training, where a
    large transposed matrix costs its gradients and AdamW's update (10% of a GPT-2-small step for the tied
    (50257, 768) LM head). A no-op when the layout is already the wanted one."""
    if (weight.stride(0) == 1) == inference:
        return
    def relaid(t: torch.Tensor) -> torch.Tensor:
        return t.t().contiguous().t() if inference else t.contiguous()
    with torch.no_grad():
        weight.data = relaid(weight.data)
        if weight.grad is not None:  # a gradient being accumulated keeps the parameter's layout
            weight.grad = relaid(weight.grad)


def lookup(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """embedding(ids), (..., C), for an embedding whose E (V, C) may be stored input-major, as the tied LM heads
    keep it: then the ids' columns of E^T (C, V). Indexing E's rows directly would give the same numbers, but its
    backward builds a (V, C) row-major gradient that must be added into E's transposed layout element by element
    (at V = 50257, C = 768 that costs 15% of a GPT-2-small training step); this one's gradient comes out in E's
    own layout. The module itself runs when E is ordinary storage or a PyTorch hook would see the call."""
    weight = embedding.weight
    if weight.stride(0) != 1 or torch_hooks_on(embedding):
        return embedding(ids)
    columns = weight.t().index_select(1, ids.reshape(-1))  # (C, V) -> (C, *ids)
    return columns.t().reshape(*ids.shape, weight.shape[1])  # (C, B N) -> (B N, C) -> (..., C)
