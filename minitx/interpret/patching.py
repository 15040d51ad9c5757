"""Activation patching and ablation scans: one forward per layer/head/position, a metric for each.

Patching (interp.5) runs the *corrupted* input with one activation taken from the *clean* run and reports the
metric, also normalised so that 0 is the corrupted run and 1 the clean one (interp.6). Ablation (interp.4)
removes one head at a time and reports the metric.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import torch
from torch import nn

from minitx.interpret.cache import layer_name, run_with_cache, run_with_hooks, stack_of
from minitx.interpret.edits import ablate_heads, patch_from

Metric = Callable[[object], "torch.Tensor | float"]


class PatchResult(NamedTuple):
    patched: torch.Tensor  # the metric with each activation patched: (L, H) per head or (L, N) per position
    clean: float           # the metric of the clean run
    corrupted: float       # the metric of the corrupted run

    def normalized(self) -> torch.Tensor:
        """(interp.6): (patched - corrupted) / (clean - corrupted): 1 = patching this restores the clean run."""
        gap = self.clean - self.corrupted
        if gap == 0:
            raise ValueError("metric: the clean and corrupted runs give the same value; nothing to restore")
        return (self.patched - self.corrupted) / gap


def _value(metric: Metric, output) -> float:
    value = metric(output)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric: expected a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    return float(value)


@torch.no_grad()
def patch_heads(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric, *,
                stack: str | None = None, **model_kwargs) -> PatchResult:
    """The metric of the corrupted run with head (l, h)'s output z_h taken from the clean run, for every head:
    (L, H). `clean` and `corrupted` are input ids of the same shape; `model_kwargs` go to both runs."""
    if not isinstance(clean, torch.Tensor) or not isinstance(corrupted, torch.Tensor) or clean.shape != corrupted.shape:
        raise ValueError("clean, corrupted: expected two id tensors of the same shape, got "
                         f"{getattr(clean, 'shape', type(clean).__name__)} and "
                         f"{getattr(corrupted, 'shape', type(corrupted).__name__)}")
    blocks = stack_of(model, stack)
    names = [f"{b}.attention.z" for b in blocks]
    clean_out, cache = run_with_cache(model, clean, names=names, **model_kwargs)
    base = _value(metric, model(corrupted, **model_kwargs))
    n_heads = model.get_submodule(f"{blocks[0]}.attention").n_heads
    patched = torch.empty(len(blocks), n_heads)
    for layer, name in enumerate(names):
        for head in range(n_heads):
            patched[layer, head] = _value(metric, run_with_hooks(model, corrupted, hooks=patch_from(cache, name, head),
                                                                 **model_kwargs))
    return PatchResult(patched, _value(metric, clean_out), base)


@torch.no_grad()
def patch_residual(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric, *,
                   point: str = "resid_pre", stack: str | None = None, **model_kwargs) -> PatchResult:
    """The metric of the corrupted run with the residual stream at `point` of block l, position i, taken from
    the clean run: (L, N)."""
    if point not in ("resid_pre", "resid_mid", "resid_post"):
        raise ValueError(f"point: expected resid_pre, resid_mid or resid_post, got {point!r}")
    if not isinstance(clean, torch.Tensor) or not isinstance(corrupted, torch.Tensor) or clean.shape != corrupted.shape:
        raise ValueError("clean, corrupted: expected two id tensors of the same shape")
    blocks = stack_of(model, stack)
    names = [f"{b}.{point}" for b in blocks]
    clean_out, cache = run_with_cache(model, clean, names=names, **model_kwargs)
    base = _value(metric, model(corrupted, **model_kwargs))
    patched = torch.empty(len(blocks), clean.shape[1])
    for layer, name in enumerate(names):
        for position in range(clean.shape[1]):
            out = run_with_hooks(model, corrupted, hooks=patch_from(cache, name, positions=[position]), **model_kwargs)
            patched[layer, position] = _value(metric, out)
    return PatchResult(patched, _value(metric, clean_out), base)


@torch.no_grad()
def ablate_each_head(model: nn.Module, metric: Metric, *args, means: Mapping[int, torch.Tensor] | None = None,
                     stack: str | None = None, **model_kwargs) -> torch.Tensor:
    """(L, H): the metric of `model(*args, **model_kwargs)` with head (l, h) zero- or mean-ablated (interp.4)."""
    blocks = stack_of(model, stack)
    n_heads = model.get_submodule(layer_name(model, 0, "attention", stack)).n_heads
    out = torch.empty(len(blocks), n_heads)
    for layer in range(len(blocks)):
        for head in range(n_heads):
            hooks = ablate_heads(model, [(layer, head)], means, stack)
            out[layer, head] = _value(metric, run_with_hooks(model, *args, hooks=hooks, **model_kwargs))
    return out
