"""Optional `torch.compile` of minitx's hand-written bodies (`--compile` in `minitx pretrain` / `finetune`).

What is compiled: the bodies the autograd Functions of `minitx.functional` run (GELU's forward, LayerNorm's
forward and backward, softmax's forward and backward, inside attention too), registered in
`minitx.functional._bodies`. The Functions, and so the documented backward formulas, stay as they are; only
the elementwise chains inside them are fused by Inductor. Matmuls, dropout's random draws and the optimizer
stay eager, and so does everything when the flag is off (the default; the tests run eager).

Measured (docs/benchmarking.md, benchmarks/results/cpu_compile.*): the first steps pay the compile time, then
each step runs at the steady-state ratio reported there. Whole-model compilation is not offered: it was slower
than eager on the CPU, for transformers too, and took minutes to compile (issue 11).
"""

from __future__ import annotations

import torch

from minitx.functional import _bodies

_COMPILED: dict = {}  # (name, dynamic) -> its torch.compile wrapper


def compile_bodies(dynamic: bool | None = None) -> list[str]:
    """Swap every registered body for a `torch.compile`d copy (compiled lazily, on its first call); returns
    the names. Idempotent. `dynamic` is passed to torch.compile (None: its default shape policy)."""
    for name, fn in _bodies.EAGER.items():
        if (name, dynamic) not in _COMPILED:  # one wrapper per body, so switching back and forth reuses it
            _COMPILED[name, dynamic] = torch.compile(fn, dynamic=dynamic)
        _bodies.ACTIVE[name] = _COMPILED[name, dynamic]
    return sorted(_bodies.EAGER)


def eager_bodies() -> None:
    """Put the eager bodies back (what runs by default)."""
    _bodies.ACTIVE.update(_bodies.EAGER)


def is_compiled() -> bool:
    return any(_bodies.ACTIVE[name] is not fn for name, fn in _bodies.EAGER.items())


def apply_compile(enabled: bool) -> None:
    """What a recipe's `compile` field does: compile the bodies if `enabled`, else leave them eager."""
    if enabled:
        compile_bodies()
    else:
        eager_bodies()
