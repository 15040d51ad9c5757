"""Hook points: named places inside a module where an activation can be read or replaced on the way.

Every `MultiHeadAttention`, `FeedForward` and `Block` lists its points in `hook_points` (e.g. a block's
"resid_mid", an attention's "pattern") and passes each activation through `self.hook(name, value)`. With no
hook added that is one falsy-dict test, so an unhooked model pays nothing measurable. A hook is
`fn(value, name) -> value or None`: it sees the activation under its full name ("blocks.1.attention.q") and may
return a replacement (ablation, patching) or None to leave it as it is.

    with using_hooks(model, {"blocks.0.attention.pattern": save}):   # names: hook_names(model)
        model(ids)

The interpretability tools (activation caches, ablation, patching) are built on this and nothing else.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.modules import module as torch_module

Hook = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class HookHandle:
    """What `add_hook` returns: `handle.remove()` takes the hook out again."""

    def __init__(self, owner: "HookPoints", point: str, fn: Hook) -> None:
        self._owner, self._point, self._fn = owner, point, fn

    def remove(self) -> None:
        fns = self._owner._hooks.get(self._point, [])
        if self._fn in fns:
            fns.remove(self._fn)
        if not fns:
            self._owner._hooks.pop(self._point, None)


class HookPoints:
    """Mixin for an nn.Module with named hook points. Subclasses set `hook_points` and call `self.hook(...)`."""

    hook_points: tuple[str, ...] = ()
    _hooks: dict[str, list[Hook]]
    _hook_prefix: str = ""

    def add_hook(self, point: str, fn: Hook, full_name: str | None = None) -> HookHandle:
        """Call `fn(value, full_name)` on the activation at `point` in every forward, until removed."""
        if point not in self.hook_points:
            raise ValueError(f"point: expected one of {self.hook_points} for {type(self).__name__}, got {point!r}")
        if not callable(fn):
            raise TypeError(f"fn: expected a callable fn(value, name), got {type(fn).__name__}")
        if "_hooks" not in self.__dict__:
            self._hooks = {}
        self._hooks.setdefault(point, []).append(fn)
        self._hook_names = {**self.__dict__.get("_hook_names", {}), point: full_name or point}
        return HookHandle(self, point, fn)

    def hooked(self, point: str) -> bool:
        """Is any hook listening at `point`? (Lets a module compute an activation only when it is wanted.)"""
        hooks = self.__dict__.get("_hooks")
        return bool(hooks) and point in hooks

    def hook(self, point: str, value: torch.Tensor) -> torch.Tensor:
        """`value`, or what the hooks at `point` replace it with (in the order they were added)."""
        hooks = self.__dict__.get("_hooks")
        if not hooks or point not in hooks:
            return value
        name = self._hook_names.get(point, point)
        for fn in list(hooks[point]):
            out = fn(value, name)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != value.shape:
                    raise ValueError(f"hook at {name!r}: expected None or a tensor of shape {tuple(value.shape)}, "
                                     f"got {getattr(out, 'shape', type(out).__name__)}")
                value = out
        return value


def torch_hooks_on(module: nn.Module) -> bool:
    """Would calling `module` run a PyTorch forward hook (its own, or a global one)? The fast paths that skip a
    module's call (`minitx.nn.dropout.drop`, `minitx.nn.linear.lookup`, `minitx.attention.fused_qkv`) ask first,
    so a user's hook never goes unrun."""
    return bool(module._forward_hooks or module._forward_pre_hooks or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks)


def hook_names(model: nn.Module) -> list[str]:
    """Every full hook name in `model`, e.g. "blocks.0.resid_mid", "blocks.0.attention.pattern"."""
    return [f"{prefix}.{point}" if prefix else point
            for prefix, module in model.named_modules() if isinstance(module, HookPoints)
            for point in module.hook_points]


def add_hooks(model: nn.Module, fns: Mapping[str, Hook]) -> list[HookHandle]:
    """Add `fns` by full name (see `hook_names`); a name that matches no hook point is an error."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for full_name, fn in fns.items():
            prefix, _, point = full_name.rpartition(".")
            module = modules.get(prefix)
            if not isinstance(module, HookPoints) or point not in module.hook_points:
                raise ValueError(f"hook name: {full_name!r} is no hook point of this model; see hook_names(model), "
                                 f"e.g. {hook_names(model)[:3]}")
            handles.append(module.add_hook(point, fn, full_name))
    except Exception:
        for handle in handles:
            handle.remove()
        raise
    return handles


@contextmanager
def using_hooks(model: nn.Module, fns: Mapping[str, Hook]) -> Iterator[list[HookHandle]]:
    """`add_hooks` for the duration of a `with` block; the hooks are removed on the way out, even on error."""
    handles = add_hooks(model, fns)
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
