"""Normalization layers: LayerNorm (block.5) by the hand-written `functional.layer_norm`, RMSNorm (rmsnorm.1) by
`functional.rms_norm`.

A family picks its norm through the Block's `norm` part (a factory such as `partial(LayerNorm, C, eps=...)`).
"""

from __future__ import annotations

import torch
from torch import nn

from minitx import functional as F


class _Norm(nn.Module):
    """What both norms share: a gain over the last dim of width `d_model`, its argument checks, and the rule
    under autocast (bf16/fp16 activations, fp32 parameters): normalize in fp32 and cast back, as torch's
    autocast runs layer_norm — the statistics of a bf16 row lose too many bits otherwise."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model: expected a positive int, got {d_model!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps: expected a positive number, got {eps!r}")
        self.d_model, self.eps = d_model, float(eps)
        self.weight = nn.Parameter(torch.ones(d_model))

    def normalize(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected last dim {self.d_model}, got shape {tuple(x.shape)}")
        weight = self.weight
        if x.dtype != weight.dtype and torch.is_autocast_enabled(x.device.type):
            return self.normalize(x.float(), weight.float()).to(x.dtype)
        return self.normalize(x, weight)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


class LayerNorm(_Norm):
    """LayerNorm over the last dim with a learned gain and shift, (block.5), by `functional.layer_norm`.

    `bias=False` keeps the gain only (nanoGPT's bias=False; `functional.layer_norm` takes no shift)."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(d_model, eps)
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def normalize(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None and bias.dtype != weight.dtype:
            bias = bias.to(weight.dtype)
        return F.layer_norm(x, weight, bias, self.eps)


class RMSNorm(_Norm):
    """RMSNorm over the last dim with a learned gain, no shift, (rmsnorm.1), by `functional.rms_norm`: the norm of
    Llama, Mistral and Qwen (Hugging Face's `LlamaRMSNorm`; its `variance_epsilon` is `eps`)."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__(d_model, eps)

    def normalize(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, weight, self.eps)
