"""Run a model and keep its activations (`run_with_cache`), or run it with activations edited on the way
(`run_with_hooks`). Both add hooks at the model's hook points (minitx.hooks) for one forward and take them out
again, so the model is unchanged afterwards and an unhooked forward pays nothing.

What a family must provide: its residual blocks are `minitx.nn.block.Block`s (their MultiHeadAttention and
FeedForward carry the rest of the hook points). Blocks that sit side by side in one ModuleList form a *stack*
("blocks" in the GPT, "bert.blocks" in BERT; an encoder-decoder has two), and a layer is named by its index in
its stack. Nothing else is needed for the cache, the edits, the attention maps and patching; the logit lens and
direct logit attribution also need a readout (minitx.interpret.lens).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from minitx.hooks import Hook, add_hooks, hook_names
from minitx.nn.block import Block


def block_stacks(model: nn.Module) -> dict[str, list[str]]:
    """{stack name: [block names in order]}, e.g. {"blocks": ["blocks.0", "blocks.1"]} for the GPT."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    stacks: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Block):
            stacks.setdefault(name.rpartition(".")[0], []).append(name)
    return stacks


def stack_of(model: nn.Module, stack: str | None = None) -> list[str]:
    """The block names of `stack`, or of the model's only stack when `stack` is None."""
    stacks = block_stacks(model)
    if not stacks:
        raise ValueError(f"model: expected a model built from minitx Blocks, got a {type(model).__name__} "
                         "without any")
    if stack is None:
        if len(stacks) > 1:
            raise ValueError(f"stack: this model has several stacks of blocks, name one of {sorted(stacks)}")
        return next(iter(stacks.values()))
    if stack not in stacks:
        raise ValueError(f"stack: expected one of {sorted(stacks)}, got {stack!r}")
    return stacks[stack]


def layer_name(model: nn.Module, layer: int, point: str, stack: str | None = None) -> str:
    """The full hook name of `point` ("resid_post", "attention.z", ...) in block `layer` of a stack."""
    blocks = stack_of(model, stack)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer: expected an int in [0, {len(blocks)}), got {layer!r}")
    return f"{blocks[layer]}.{point}"


class ActivationCache(Mapping[str, torch.Tensor]):
    """The activations of one forward by full hook name, plus `stack(point)` to line a point up over layers."""

    def __init__(self, activations: Mapping[str, torch.Tensor], stacks: Mapping[str, list[str]]) -> None:
        self._activations = dict(activations)
        self._stacks = {k: list(v) for k, v in stacks.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._activations:
            raise KeyError(f"{name!r} was not cached; cached: {sorted(self._activations)[:4]}...")
        return self._activations[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._activations)

    def __len__(self) -> int:
        return len(self._activations)

    def blocks(self, stack: str | None = None) -> list[str]:
        """The block names of `stack` (None: the only stack), as in `stack_of`."""
        if stack is None:
            if len(self._stacks) != 1:
                raise ValueError(f"stack: this cache holds several stacks, name one of {sorted(self._stacks)}")
            return next(iter(self._stacks.values()))
        if stack not in self._stacks:
            raise ValueError(f"stack: expected one of {sorted(self._stacks)}, got {stack!r}")
        return self._stacks[stack]

    def stack(self, point: str, stack: str | None = None) -> torch.Tensor:
        """`point` of every block, stacked: e.g. "attention.pattern" -> (L, B, H, N, M)."""
        return torch.stack([self[f"{block}.{point}"] for block in self.blocks(stack)])


Names = Iterable[str] | Callable[[str], bool] | None


def _select(model: nn.Module, names: Names) -> list[str]:
    every = hook_names(model)
    if names is None:
        return every
    if callable(names):
        return [n for n in every if names(n)]
    if isinstance(names, str):
        raise TypeError("names: expected an iterable of hook names or a predicate, got a str (wrap it in a list)")
    chosen = list(names)
    unknown = [n for n in chosen if n not in set(every)]
    if unknown:
        raise ValueError(f"names: {unknown[:3]} are no hook points of this model; see hook_names(model)")
    return chosen


def _hook_sets(hooks: Mapping[str, Hook] | Sequence[Mapping[str, Hook]] | None) -> list[Mapping[str, Hook]]:
    if hooks is None:
        return []
    if isinstance(hooks, Mapping):
        return [hooks]
    if isinstance(hooks, (list, tuple)) and all(isinstance(h, Mapping) for h in hooks):
        return list(hooks)
    raise TypeError(f"hooks: expected a mapping {{hook name: fn}} or a list of them, got {type(hooks).__name__}")


def run_with_hooks(model: nn.Module, *args, hooks: Mapping[str, Hook] | Sequence[Mapping[str, Hook]] | None = None,
                   **kwargs):
    """`model(*args, **kwargs)` with `hooks` ({full hook name: fn(value, name) -> value or None}, or a list of
    such mappings, applied in order) added for this one forward; e.g. `hooks=ablate_heads(model, [(1, 3)])`."""
    with ExitStack() as stack:
        for fns in _hook_sets(hooks):
            handles = add_hooks(model, fns)
            stack.callback(lambda hs=handles: [h.remove() for h in hs])
        return model(*args, **kwargs)


def run_with_cache(model: nn.Module, *args, names: Names = None, detach: bool = True,
                   hooks: Mapping[str, Hook] | Sequence[Mapping[str, Hook]] | None = None, **kwargs):
    """(output, ActivationCache): `model(*args, **kwargs)` with every activation (or `names`: a list of full hook
    names or a predicate on them) kept; the residual stream of every block (resid_pre, resid_mid, resid_post),
    each sublayer's output, the attention pattern, q, k, v and z per head, and the feed-forward activations.

    `hooks` edit activations first (as in `run_with_hooks`); the cache then holds the edited values. With
    `detach=False` the cached tensors stay in the autograd graph (for gradients with respect to them).
    Caching "attention.pattern" makes attention compute its weights on the math path for this forward. Call a
    masked LM without `labels`: with them its last block runs at the labelled rows only, past its hook points."""
    kept: dict[str, torch.Tensor] = {}

    def keep(value: torch.Tensor, name: str) -> None:
        kept[name] = value.detach() if detach else value
    saving = {name: keep for name in _select(model, names)}
    output = run_with_hooks(model, *args, hooks=[*_hook_sets(hooks), saving], **kwargs)
    return output, ActivationCache(kept, block_stacks(model))
