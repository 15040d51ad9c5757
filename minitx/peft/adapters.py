"""Bottleneck adapters (Houlsby et al., 2019), BitFit (Ben Zaken et al., 2022) and trainable-parameter counts.

The math is in `docs/math/lora.md`, section "Adapters and BitFit".
"""

from __future__ import annotations

import torch
from torch import nn

from minitx import functional as F
from minitx.peft.targets import (find_linear_targets, find_modules, freeze_except, parse_targets,
                                 set_submodule)


class AdapterLinear(nn.Module):
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


def apply_bitfit(model: nn.Module, trainable_modules=()) -> list[str]:
    """Leave only bias terms (every parameter named "bias", layer norms' included) and `trainable_modules`
    trainable (bitfit.1); return the names of the trainable parameters."""
    kept = find_modules(model, trainable_modules, "trainable_modules")
    freeze_except(model, kept, keep=lambda pname: pname.rsplit(".", 1)[-1] == "bias")
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_parameters_report(model: nn.Module) -> tuple[int, int, float]:
    """(trainable, total, trainable / total), counting elements; total includes the added PEFT parameters."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, total, (trainable / total if total else 0.0)


def parameter_table(models: dict[str, nn.Module]) -> str:
    """A printable table, one row per method: {"full": m0, "LoRA r=8": m1, ...} -> trainable, total, share."""
    if not isinstance(models, dict):
        raise TypeError(f"models: expected a dict name -> nn.Module, got {type(models).__name__}")
    width = max([len("method")] + [len(k) for k in models])
    lines = [f"{'method':<{width}}  {'trainable':>12}  {'total':>12}  {'share':>8}"]
    for name, model in models.items():
        trainable, total, share = trainable_parameters_report(model)
        lines.append(f"{name:<{width}}  {trainable:>12,}  {total:>12,}  {share:>8.3%}")
    return "\n".join(lines)
