"""Dropout where it acts, and nothing where it does not."""

from __future__ import annotations

import torch
from torch import nn


def drop(dropout: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """`dropout(x)`, skipping the module call when it is the identity (eval mode, or p = 0): at batch 1 the
    call itself (~3 us through `nn.Module.__call__`) costs as much as a small layer's arithmetic."""
    return dropout(x) if dropout.training and dropout.p > 0 else x
