"""The optimizer's rules as pure functions: which parameters decay (opt.4), and each step's rate (opt.5)-(opt.7).

`minitx.train` builds AdamW from `parameter_groups` and sets every group's rate to `lr_at(step)` before each
update, so the whole schedule is a function of the step and a resumed run needs no scheduler state.
Math: docs/math/optimization.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from minitx.train_config import TrainConfig

__all__ = ["lr_at", "parameter_groups"]


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (1-based): warmup (opt.5), then linear (opt.6) or cosine (opt.7)
    decay from `lr` to `min_lr_ratio * lr` at `max_steps`. Pure: the schedule's whole state is the step."""
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")
    peak, warmup, total = config.lr, config.warmup_steps, config.max_steps
    if step <= warmup and warmup > 0:
        return peak * step / warmup
    if config.schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    r = config.min_lr_ratio
    if config.schedule == "linear":
        return peak * (1.0 - (1.0 - r) * progress)
    return peak * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups by the rule (opt.4): decay (opt.2) on every trainable tensor with 2+ dimensions (linear
    weights, embedding tables), none on 1-D ones (biases, LayerNorm scales and shifts, the embeddings'
    LayerNorm). Frozen parameters (requires_grad=False, as under LoRA or BitFit) are left out entirely."""
    decay, no_decay = {}, {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay)[name] = p
    if not decay and not no_decay:
        raise ValueError("model: expected at least one parameter with requires_grad=True, found none")
    groups = [{"params": list(d.values()), "param_names": list(d), "weight_decay": wd}
              for d, wd in ((decay, weight_decay), (no_decay, 0.0)) if d]
    return groups
