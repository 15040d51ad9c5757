"""BitFit (Ben Zaken et al., 2022): train the bias terms only (bitfit.1, docs/math/lora.md "Adapters and BitFit")."""

from __future__ import annotations

from torch import nn

from minitx.peft.targets import find_modules, freeze_except


def apply_bitfit(model: nn.Module, trainable_modules=()) -> list[str]:
    """Leave only bias terms (every parameter named "bias", layer norms' included) and `trainable_modules`
    trainable (bitfit.1); return the names of the trainable parameters."""
    kept = find_modules(model, trainable_modules, "trainable_modules")
    freeze_except(model, kept, keep=lambda pname: pname.rsplit(".", 1)[-1] == "bias")
    return [n for n, p in model.named_parameters() if p.requires_grad]
