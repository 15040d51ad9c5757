"""Dropout where it acts, and nothing where it does not."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks


def drop(dropout: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """`dropout(x)`, skipping the module call when it is the identity (eval mode, or p = 0) and no hook would
    see it: at batch 1 the call itself (~3 us through `nn.Module.__call__`) costs as much as a small layer's
    arithmetic. A forward hook on the module (or a global one) still runs, as it would without this."""
    if dropout.training and dropout.p > 0:
        return dropout(x)
    if dropout._forward_hooks or dropout._forward_pre_hooks or _global_forward_hooks or _global_forward_pre_hooks:
        return dropout(x)
    return x
