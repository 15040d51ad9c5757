"""Bottleneck adapters (Houlsby et al., 2019): a small residual MLP after a frozen Linear.

The math is in `docs/math/lora.md`, section "Adapters and BitFit".
"""

from __future__ import annotations

import torch
from torch import nn

from minitx import functional as F
from minitx.peft.targets import (WrappedLinear, find_linear_targets, find_modules, freeze_except, parse_targets,
                                 set_submodule)


class AdapterLinear(WrappedLinear):
    """y = base(x); y + up(GELU(down(y)))  (adapter.1), with `up` zero-initialised so a fresh adapter is the identity.

    `down` (out -> bottleneck) keeps nn.Linear's default init; the frozen base is left untouched.
    """

    def __init__(self, base: nn.Linear, bottleneck: int):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base: expected an nn.Linear, got {type(base).__name__}")
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck < 1:
            raise ValueError(f"bottleneck: expected an int >= 1, got {bottleneck!r}")
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.base = base
        self.down = nn.Linear(base.out_features, bottleneck, **factory)
        self.up = nn.Linear(bottleneck, base.out_features, **factory)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        for p in base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.up(F.gelu(self.down(y)))  # (adapter.1); the residual keeps the base function at init


def apply_adapters(model: nn.Module, target_modules=("out_proj", "fc_out"), bottleneck: int = 16,
                   trainable_modules=()) -> list[str]:
    """Wrap each matched `nn.Linear` in an `AdapterLinear`, in place; return the names wrapped.

    Patterns match as in `apply_lora`. Afterwards only adapter parameters (and `trainable_modules`, e.g. the
    layer norms and classifier Houlsby also train) require grad.
    """
    patterns = parse_targets(target_modules, "target_modules")
    if not patterns:  # wrapping nothing would only freeze the whole model
        raise ValueError("target_modules: expected at least one pattern (e.g. ['out_proj', 'fc_out']), got none")
    names = find_linear_targets(model, patterns, "target_modules")
    kept = find_modules(model, trainable_modules, "trainable_modules")  # checked before anything is wrapped
    for name in names:
        set_submodule(model, name, AdapterLinear(model.get_submodule(name), bottleneck))
    wrappers = [n for n, m in model.named_modules() if isinstance(m, AdapterLinear)]  # earlier calls' too
    adapter_prefixes = tuple(f"{n}.{part}." for n in wrappers for part in ("down", "up"))
    freeze_except(model, kept, keep=lambda pname: pname.startswith(adapter_prefixes))
    return names
