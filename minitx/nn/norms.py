"""Normalization layers: LayerNorm (block.5) by the hand-written `functional.layer_norm`, RMSNorm (rmsnorm.1) by
`functional.rms_norm`.

A family picks its norm through the Block's `norm` part (a factory such as `partial(LayerNorm, C, eps=...)`).
"""

from __future__ import annotations

import torch
from torch import nn

from minitx import functional as F


class LayerNorm(nn.Module):
    """LayerNorm over the last dim with a learned gain and shift, (block.5), by `functional.layer_norm`.

    `bias=False` keeps the gain only (nanoGPT's bias=False; `functional.layer_norm` takes no shift)."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model: expected a positive int, got {d_model!r}")
        if not eps > 0:
            raise ValueError(f"eps: expected a positive number, got {eps!r}")
        self.d_model, self.eps = d_model, float(eps)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected last dim {self.d_model}, got shape {tuple(x.shape)}")
        if torch.is_autocast_enabled(x.device.type) and x.dtype != self.weight.dtype:
            # Under autocast (bf16/fp16 activations, fp32 parameters) normalize in fp32 and cast back, as torch
            # autocast runs layer_norm: the mean and variance of a bf16 row lose too many bits otherwise.
            out = F.layer_norm(x.float(), self.weight.float(), _float(self.bias), self.eps)
            return out.to(x.dtype)
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned gain, no shift, (rmsnorm.1), by `functional.rms_norm`: the norm of
    Llama, Mistral and Qwen (Hugging Face's `LlamaRMSNorm`; its `variance_epsilon` is `eps`)."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model: expected a positive int, got {d_model!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps: expected a positive number, got {eps!r}")
        self.d_model, self.eps = d_model, float(eps)
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected last dim {self.d_model}, got shape {tuple(x.shape)}")
        if torch.is_autocast_enabled(x.device.type) and x.dtype != self.weight.dtype:
            return F.rms_norm(x.float(), self.weight.float(), self.eps).to(x.dtype)  # fp32 inside, as LayerNorm
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


def _float(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()
