"""One-number tensors, made once.

`t.mul_(0.5)` or `t.add_(eps)` wraps the Python number in a 0-dim double tensor and converts it to t's dtype
on every call (an `aten::_to_copy`, a few microseconds: at batch 1 the ops themselves cost little more).
The fast forms instead pass numbers as `alpha=`/`value=` arguments (no tensor at all) or, where an op has no
such argument, as a 0-dim tensor of the right dtype kept here.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=256)
def scalar(value: float, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """A 0-dim tensor holding `value`, shared by every caller that asks for the same one; read only. Made
    outside inference mode, so one first built under `torch.inference_mode()` still serves a training step."""
    with torch.inference_mode(False):
        return torch.tensor(value, dtype=dtype, device=device)


def same_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x.to(dtype)` without the dispatch when it is already that dtype (the common case, ~1 us saved a call)."""
    return x if x.dtype == dtype else x.to(dtype)
