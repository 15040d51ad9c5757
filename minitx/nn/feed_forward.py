"""Position-wise feed-forward networks: the MLP of (block.6), with the exact GELU or GPT-2's tanh one, and
Llama's gated SwiGLU (swiglu.4).

A family picks its feed-forward through the Block's `feed_forward` part.
"""

from __future__ import annotations

import torch
from torch import nn

from minitx import functional as F
from minitx.checks import check_probability
from minitx.hooks import HookPoints
from minitx.nn.dropout import drop

ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": F.gelu_tanh}  # (gelu.1) exact, (dec.5) GPT-2's approximation
# every activation FeedForward takes: the GELUs and the original Transformer's max(0, x) (its gradient is a 0/1
# mask, torch's own); GPT's config offers ACTIVATIONS only
FEED_FORWARD_ACTIVATIONS = {**ACTIVATIONS, "relu": torch.relu}


class FeedForward(HookPoints, nn.Module):
    """Position-wise MLP, (block.6): fc_out(Drop(act(fc_in(x)))), C -> d_ff -> C.

    `activation` "gelu" (exact erf, minitx's hand-written backward), "gelu_tanh" (GPT-2's, dec.5) or "relu"
    (the original Transformer's).
    `dropout` sits after the activation (as in torch.nn.TransformerEncoderLayer); BERT and GPT-2 have none
    there, so their blocks build this with 0. The dropout after `fc_out` belongs to the block.
    Hook point "hidden" (B, N, d_ff): the activations after the nonlinearity, one per neuron.
    """

    hook_points = ("hidden",)

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "gelu", bias: bool = True):
        super().__init__()
        check_probability("dropout", dropout)
        if activation not in FEED_FORWARD_ACTIVATIONS:
            raise ValueError(f"activation: expected one of {tuple(FEED_FORWARD_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self._act = FEED_FORWARD_ACTIVATIONS[activation]
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hook("hidden", self._act(self.fc_in(x)))  # (B, N, C) -> (B, N, d_ff)
        return self.fc_out(drop(self.dropout, hidden))  # (B, N, d_ff) -> (B, N, C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class SwiGLU(HookPoints, nn.Module):
    """Llama's feed-forward, (swiglu.4): down_proj(Drop(swiglu(gate_proj(x), up_proj(x)))), C -> d_ff -> C.

    Three matrices, 3 C d_ff weights (a GELU MLP has 2 C d_ff: at d_ff = 8C/3 the two hold the same count).
    Bias-free by default, as Llama; the names are Hugging Face's (`gate_proj`, `up_proj`, `down_proj`), so
    LoRA targets and `minitx.interop.llama` use them as is. Hook point "hidden" (B, N, d_ff): the gated
    activations, one per neuron, as FeedForward's.
    """

    hook_points = ("hidden",)

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        check_probability("dropout", dropout)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hook("hidden", F.swiglu(self.gate_proj(x), self.up_proj(x)))  # (B, N, C) -> (B, N, d_ff)
        return self.down_proj(drop(self.dropout, hidden))  # (B, N, d_ff) -> (B, N, C)
