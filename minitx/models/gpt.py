"""A GPT-2-style decoder built from minitx's blocks (docs/math/decoder.md, labels (dec.*)).

Token + learned position embeddings (dec.1), a stack of pre-LN `EncoderBlock`s run with `is_causal=True`
(the causal mask, dec.2), a final LayerNorm, and an LM head tied to the token embedding (dec.3). The loss is
next-token cross-entropy (dec.4). Module names keep the encoder's (`blocks.{i}.attention.q_proj`, ...), so
LoRA targets, the attention backends and `minitx.gpt2_interop` all see the same parts.

GPT-2 uses the tanh approximation of GELU ("gelu_new", dec.5); minitx's FeedForward runs the exact erf GELU.
`GPTConfig.activation` picks either: "gelu" (exact, the default, minitx's own hand-written backward) or
"gelu_tanh" (GPT-2's, for loading real GPT-2 weights exactly).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as torch_F  # torch's; minitx.functional is `F` elsewhere
from torch import nn

from minitx.attention import available_backends
from minitx.blocks import EncoderBlock, FeedForward, LayerNorm, set_blocks_backend
from minitx.model_inputs import IGNORE_INDEX, check_model_config  # shared with the encoder

__all__ = ["GPTConfig", "GPT", "CausalLMOutput", "gelu_tanh", "IGNORE_INDEX", "ACTIVATIONS"]

ACTIVATIONS = ("gelu", "gelu_tanh")


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, (dec.5): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); autograd differentiates it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class TanhFeedForward(FeedForward):
    """FeedForward with GPT-2's tanh GELU (dec.5) in place of the exact one; same parameters, same names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.dropout(gelu_tanh(self.fc_in(x))))  # (B, N, C) -> (B, N, d_ff) -> (B, N, C)


@dataclass
class GPTConfig:
    """A flat decoder config; every field maps one to one onto a CLI flag of `minitx train-lm`."""

    vocab_size: int = field(default=65, metadata=_help("vocabulary size V"))
    max_position: int = field(default=64, metadata=_help("context length (block size): learned positions"))
    d_model: int = field(default=128, metadata=_help("model width C"))
    n_layers: int = field(default=4, metadata=_help("decoder blocks"))
    n_heads: int = field(default=4, metadata=_help("attention heads H (d_model divisible by it)"))
    d_ff: int = field(default=0, metadata=_help("feed-forward width (0: 4 * d_model, as GPT-2)"))
    dropout: float = field(default=0.0, metadata=_help("dropout on embeddings and residual branches"))
    attention_dropout: float = field(default=0.0, metadata=_help("dropout on attention weights"))
    layer_norm_eps: float = field(default=1e-5, metadata=_help("LayerNorm epsilon (GPT-2: 1e-5)"))
    activation: str = field(default="gelu", metadata=_help("gelu (exact erf) or gelu_tanh (GPT-2's)",
                                                           choices=ACTIVATIONS))
    attention_backend: str = field(default="math", metadata=_help("attention backend: math, sdpa or flash"))
    initializer_range: float = field(default=0.02, metadata=_help("std of the normal initial weights"))
    bias: bool = field(default=True, metadata=_help("biases in linear layers and LayerNorms (GPT-2: yes; "
                                                    "nanoGPT's default: no)"))

    def __post_init__(self) -> None:
        if isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff < 0:
            raise ValueError(f"d_ff: expected an int >= 0 (0: 4 * d_model), got {self.d_ff!r}")
        check_model_config(self, ("vocab_size", "max_position", "d_model", "n_layers", "n_heads"))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {self.activation!r}")
        if self.attention_backend not in available_backends():
            raise ValueError(f"attention_backend: expected one of {available_backends()}, "
                             f"got {self.attention_backend!r}")

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}")
        return cls(**values)


class CausalLMOutput(NamedTuple):
    logits: torch.Tensor            # (B, N, V)
    loss: Optional[torch.Tensor]    # next-token cross-entropy (dec.4), or None without targets
    hidden: torch.Tensor            # (B, N, C), after the final LayerNorm


def decoder_block(config: GPTConfig) -> EncoderBlock:
    """A pre-LN block (block.3)-(block.4), GPT-2's layout; made causal by the caller's `is_causal=True`."""
    block = EncoderBlock(config.d_model, config.n_heads, config.ff_width, dropout=config.dropout,
                         attention_dropout=config.attention_dropout, norm_first=True,
                         layer_norm_eps=config.layer_norm_eps, backend=config.attention_backend)
    if config.activation == "gelu_tanh":
        block.feed_forward = TanhFeedForward(config.d_model, config.ff_width)
    if not config.bias:
        _drop_biases(block)
    return block


def _drop_biases(module: nn.Module) -> None:
    """nanoGPT's bias=False: every nn.Linear and LayerNorm bias removed (None: functional.layer_norm and
    torch's linear take no shift)."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, LayerNorm)) and sub.bias is not None:
            sub.bias = None


class GPT(nn.Module):
    """Embeddings (dec.1), causal pre-LN blocks (dec.2), final LayerNorm, tied LM head (dec.3)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config: expected a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_position, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(decoder_block(config) for _ in range(config.n_layers))
        self.final_norm = LayerNorm(config.d_model, eps=config.layer_norm_eps)
        if not config.bias:
            _drop_biases(self.final_norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's init: N(0, 0.02) weights, zero biases, and the two projections that write into the residual
        stream (out_proj, fc_out) scaled by 1/sqrt(2 n_layers), so the stream's variance does not grow with depth."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif p.ndim == 1:
                nn.init.zeros_(p)
            elif name.endswith(("out_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def set_attention_backend(self, backend: str) -> None:
        """Switch every block's attention backend (math, sdpa, flash) without touching the weights."""
        set_blocks_backend(self.blocks, backend)
        self.config.attention_backend = backend

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(dec.1): token embedding + learned position embedding, then dropout. (B, N) -> (B, N, C)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids: expected a (B, N) tensor of token ids, got {got}")
        n = input_ids.shape[1]
        if position_ids is None:
            if n > self.config.max_position:
                raise ValueError(f"input_ids: sequence length {n} exceeds max_position={self.config.max_position}")
            position_ids = torch.arange(n, device=input_ids.device)[None]  # (1, N)
        elif position_ids.shape[-1] != n or int(position_ids.max()) >= self.config.max_position:
            raise ValueError(f"position_ids: expected (B, {n}) positions < {self.config.max_position}, "
                             f"got shape {tuple(position_ids.shape)}, max {int(position_ids.max())}")
        return self.dropout(self.token(input_ids) + self.position(position_ids))

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(dec.3): logits = h E^T with E the token embedding itself (tied; no bias, as GPT-2)."""
        return torch_F.linear(hidden, self.token.weight)  # (B, N, C) @ (C, V) -> (B, N, V)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> CausalLMOutput:
        """Logits for the next token at every position; `targets[b, i]` is the token after `input_ids[b, i]`
        (IGNORE_INDEX: no loss). `attention_mask` (B, N): 1 = real token, 0 = padding (as in HF)."""
        x = self.embed(input_ids, position_ids)
        key_mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} (1 = real token), "
                                 f"got {tuple(attention_mask.shape)}")
            key_mask = attention_mask.bool()  # (B, M), True = real token
        for block in self.blocks:
            x = block(x, attention_mask=key_mask, is_causal=True)  # (dec.2): key j allowed iff j <= i
        hidden = self.final_norm(x)
        logits = self.lm_head(hidden)
        loss = None if targets is None else next_token_loss(logits, targets)
        return CausalLMOutput(logits, loss, hidden)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(dec.4): mean over positions with a target of -log softmax(logits)[target]. logits (B, N, V)."""
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets: expected shape {tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    return torch_F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
