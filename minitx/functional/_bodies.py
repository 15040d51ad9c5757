"""The hand-written bodies the autograd Functions run, registered by name so that `minitx.training.compile` can swap
in `torch.compile`d copies (`--compile`) and put the eager ones back. Eager is the default and the reference."""

from __future__ import annotations

from typing import Callable

import torch

EAGER: dict[str, Callable] = {}   # name -> the function as written
ACTIVE: dict[str, Callable] = {}  # name -> what the Functions call now (EAGER's, or compiled copies)


def body(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` under `name`; the module keeps the plain function (tests call it directly)."""
    def register(fn: Callable) -> Callable:
        EAGER[name] = ACTIVE[name] = fn
        return fn
    return register


def run(name: str, *args):
    """Call the active body registered under `name`."""
    return ACTIVE[name](*args)


def needs_grad(*tensors) -> bool:
    """Will autograd need a backward through these inputs? False under `torch.no_grad()` / `inference_mode` or
    when none requires grad: the ops then run their forward body directly, without a `torch.autograd.Function`
    (whose `apply` costs ~10 us a call and makes the forward keep what only the backward reads)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
