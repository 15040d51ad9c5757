"""Dropout where it acts, and nothing where it does not."""

from __future__ import annotations

import torch
from torch import nn

from minitx.hooks import torch_hooks_on


def drop(dropout: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """`dropout(x)`, skipping the module call when it is the identity (eval mode, or p = 0) and no hook would
    see it: at batch 1 the call itself (~3 us through `nn.Module.__call__`) costs as much as a small layer's
    arithmetic. A forward hook on the module (or a global one) still runs, as it would without this."""
    return dropout(x) if dropout.training and dropout.p > 0 or torch_hooks_on(dropout) else x
