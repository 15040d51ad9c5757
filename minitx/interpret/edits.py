"""Edits of activations on the way, as hook mappings for `run_with_hooks` / `run_with_cache(hooks=...)`:
zero or mean ablation of attention heads (interp.4) and feed-forward neurons, and patching an activation in
from another run (interp.5).

A head's output is its slice z_h of "attention.z" (B, H, N, D), read by `out_proj` as
out = sum_h z_h W_O,h^T + b_O (the output projection, read head by head), so replacing z_h removes exactly that head's write into the residual
stream (the bias stays). A neuron is one column of the feed-forward's "hidden" (B, N, d_ff).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from minitx.hooks import Hook
from minitx.interpret.cache import ActivationCache, layer_name, run_with_cache

# The axis that counts tokens, per hook point: (B, H, N, D) / (B, H, N, M) inside attention, (B, N, ...) outside.
_HEAD_POINTS = ("q", "k", "v", "z", "pattern")


def token_axis(name: str) -> int:
    """Where the token axis of the activation `name` sits: 2 inside attention (per head), else 1."""
    return 2 if name.rpartition(".")[2] in _HEAD_POINTS else 1


def mean_activation(model: nn.Module, name: str, *args, attention_mask: torch.Tensor | None = None,
                    **kwargs) -> torch.Tensor:
    """The mean of activation `name` over the batch and the real tokens of a reference input (interp.4):
    "attention.z" (B, H, N, D) -> (H, D); "feed_forward.hidden" (B, N, d_ff) -> (d_ff,). `attention_mask` (B, N),
    1 = real token, is also passed to the model when given."""
    if name.endswith(".pattern"):
        raise ValueError("name: a mean attention pattern depends on the key length; ablate attention.z instead")
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    with torch.no_grad():
        _, cache = run_with_cache(model, *args, names=[name], **kwargs)
    value, axis = cache[name].float(), token_axis(name)
    if attention_mask is None:
        weights = torch.ones(value.shape[0], value.shape[axis])
    else:
        weights = attention_mask.float().to(value.device)  # (B, N)
    shape = [value.shape[0]] + [1] * (value.dim() - 1)
    shape[axis] = value.shape[axis]
    w = weights.view(shape)  # broadcast over every axis but batch and tokens
    dims = (0, axis)
    return ((value * w).sum(dims) / w.sum(dims).clamp_min(1.0)).to(cache[name].dtype)


def _replace(with_values: Mapping[int, torch.Tensor | None], axis_of_unit: int) -> Hook:
    def edit(value: torch.Tensor, name: str) -> torch.Tensor:
        value = value.clone()
        for unit, replacement in with_values.items():
            where = [slice(None)] * value.dim()
            where[axis_of_unit] = unit
            if replacement is None:
                value[tuple(where)] = 0.0
            else:  # the mean broadcasts over batch and tokens
                value[tuple(where)] = replacement.to(value.dtype)
        return value
    return edit


def _check_units(what: str, units, size: int) -> None:
    for unit in units:
        if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < size:
            raise ValueError(f"{what}: expected an int in [0, {size}), got {unit!r}")


def ablate_heads(model: nn.Module, heads: Iterable[tuple[int, int]], means: Mapping[int, torch.Tensor] | None = None,
                 stack: str | None = None) -> dict[str, Hook]:
    """Hooks that replace the output z_h of each (layer, head) by 0 (zero ablation) or, with `means`
    {layer: (H, D) from mean_activation(model, ".../attention.z", ref_ids)}, by its mean (interp.4)."""
    by_layer: dict[int, dict[int, torch.Tensor | None]] = {}
    for pair in heads:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"heads: expected (layer, head) pairs, got {pair!r}")
        layer, head = pair
        name = layer_name(model, layer, "attention.z", stack)
        attention = model.get_submodule(name.rpartition(".")[0])
        _check_units("head", [head], attention.n_heads)
        mean = None
        if means is not None:
            if layer not in means:
                raise ValueError(f"means: expected an (H, D) mean for layer {layer}, got layers {sorted(means)}")
            mean = means[layer][head]  # (H, D) -> (D,)
        by_layer.setdefault(layer, {})[head] = mean
    return {layer_name(model, layer, "attention.z", stack): _replace(units, 1)
            for layer, units in by_layer.items()}


def ablate_neurons(model: nn.Module, layer: int, neurons: Iterable[int], mean: torch.Tensor | None = None,
                   stack: str | None = None) -> dict[str, Hook]:
    """Hooks that set the feed-forward activations `neurons` of block `layer` to 0, or to `mean` (d_ff,)."""
    name = layer_name(model, layer, "feed_forward.hidden", stack)
    neurons = list(neurons)
    hidden_width = model.get_submodule(name.rpartition(".")[0]).fc_in.out_features
    _check_units("neurons", neurons, hidden_width)
    return {name: _replace({n: None if mean is None else mean[n] for n in neurons}, -1)}


def patch_from(cache: ActivationCache, name: str, head: int | None = None,
               positions: Iterable[int] | None = None) -> dict[str, Hook]:
    """A hook that replaces activation `name` by the same activation of another run, `cache[name]` (interp.5):
    all of it, or only head `head` (attention points) and/or only the token `positions`."""
    if not isinstance(cache, ActivationCache):
        raise TypeError(f"cache: expected an ActivationCache (run_with_cache), got {type(cache).__name__}")
    source = cache[name]
    axis = token_axis(name)
    positions = None if positions is None else list(positions)

    def patch(value: torch.Tensor, _name: str) -> torch.Tensor:
        if value.shape != source.shape:
            raise ValueError(f"patch_from: {name!r} is {tuple(value.shape)} in this run and "
                             f"{tuple(source.shape)} in the cached one; patch runs of the same shape")
        where: list = [slice(None)] * value.dim()
        if head is not None:
            if axis != 2:
                raise ValueError(f"head: {name!r} has no head axis; patch attention.q/k/v/z/pattern per head")
            where[1] = head
        if positions is not None:
            where[axis] = positions
        value = value.clone()
        value[tuple(where)] = source.to(value.device, value.dtype)[tuple(where)]
        return value
    return {name: patch}
