"""A GPT-2-style decoder built from minitx's Blocks (docs/math/decoder.md, labels (dec.*)).

Token + learned position embeddings (dec.1), a stack of pre-LN Blocks run with `is_causal=True` (the causal
mask, dec.2), a final LayerNorm, and an LM head tied to the token embedding (dec.3). The loss is next-token
cross-entropy (dec.4). Module names keep the encoder's (`blocks.{i}.attention.q_proj`, ...), so LoRA targets,
the attention backends and `minitx.interop.gpt2` all see the same parts. `forward(..., cache=KVCache)` decodes
incrementally: each block's attention appends to its layer of the cache (dec.6)-(dec.9).

GPT-2 uses the tanh approximation of GELU ("gelu_new", dec.5); `GPTConfig.activation` picks either: "gelu"
(exact, the default, minitx's own hand-written backward) or "gelu_tanh" (GPT-2's, for loading real GPT-2
weights exactly). `n_kv_heads` below `n_heads` gives grouped-query attention (not in GPT-2; for experiments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as torch_F  # torch's; minitx.functional is `F` elsewhere
from torch import nn

from minitx.attention.backends import available_backends
from minitx.attention.cache import KVCache
from minitx.config import FlatConfig, option
from minitx.functional import IGNORE_INDEX
from minitx.models.inputs import check_model_config, key_padding_mask
from minitx.nn.block import Block, set_blocks_backend, standard_block
from minitx.nn.dropout import drop
from minitx.nn.linear import lay_out_for, lookup, store_input_major
from minitx.nn.feed_forward import ACTIVATIONS
from minitx.nn.norms import LayerNorm


@dataclass
class GPTConfig(FlatConfig):
    """A flat decoder config; every field maps one to one onto a CLI flag of `minitx train-lm`."""

    vocab_size: int = option(65, "vocabulary size V")
    max_position: int = option(64, "context length (block size): learned positions")
    d_model: int = option(128, "model width C")
    n_layers: int = option(4, "decoder blocks")
    n_heads: int = option(4, "attention heads H (d_model divisible by it)")
    n_kv_heads: int = option(0, "key/value heads (0: n_heads; fewer: grouped-query attention, 1: multi-query)")
    d_ff: int = option(0, "feed-forward width (0: 4 * d_model, as GPT-2)")
    dropout: float = option(0.0, "dropout on embeddings and residual branches")
    attention_dropout: float = option(0.0, "dropout on attention weights")
    layer_norm_eps: float = option(1e-5, "LayerNorm epsilon (GPT-2: 1e-5)")
    activation: str = option("gelu", "gelu (exact erf) or gelu_tanh (GPT-2's)", choices=tuple(ACTIVATIONS))
    attention_backend: str = option("sdpa", "attention backend: sdpa (PyTorch's, the fastest here), math (the readable "
                                    "one), flash or any registered one",
                                    choices=available_backends)
    initializer_range: float = option(0.02, "std of the normal initial weights")
    bias: bool = option(True, "biases in linear layers and LayerNorms (GPT-2: yes; nanoGPT's default: no)")

    def __post_init__(self) -> None:
        if isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff < 0:
            raise ValueError(f"d_ff: expected an int >= 0 (0: 4 * d_model), got {self.d_ff!r}")
        kv = self.n_kv_heads
        if isinstance(kv, bool) or not isinstance(kv, int) or kv < 0 or (kv and self.n_heads % kv):
            raise ValueError(f"n_kv_heads: expected 0 or a divisor of n_heads={self.n_heads}, got {kv!r}")
        check_model_config(self, ("vocab_size", "max_position", "d_model", "n_layers", "n_heads"))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {tuple(ACTIVATIONS)}, got {self.activation!r}")

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model


class CausalLMOutput(NamedTuple):
    logits: torch.Tensor            # (B, N, V)
    loss: Optional[torch.Tensor]    # next-token cross-entropy (dec.4), or None without targets
    hidden: torch.Tensor            # (B, N, C), after the final LayerNorm
    cache: Optional[KVCache] = None  # the cache passed in, now holding these tokens' keys and values too


def decoder_block(config: GPTConfig) -> Block:
    """A pre-LN block (block.3)-(block.4), GPT-2's layout; made causal by the caller's `is_causal=True`.
    `bias=False` (nanoGPT's) builds every linear layer and LayerNorm without a shift."""
    return standard_block(config.d_model, config.n_heads, config.ff_width, dropout=config.dropout,
                          attention_dropout=config.attention_dropout, norm_first=True,
                          layer_norm_eps=config.layer_norm_eps, backend=config.attention_backend,
                          activation=config.activation, bias=config.bias, n_kv_heads=config.n_kv_heads or None)


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
        self.final_norm = LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.reset_parameters()
        # Laid out input-major once initialised (init draws fill memory in storage order): every Linear
        # (minitx.nn.linear); the tied LM head follows the mode (see `train`).
        store_input_major(self)
        lay_out_for(self.token.weight, inference=not self.training)

    def train(self, mode: bool = True) -> "GPT":
        """As nn.Module.train, and the tied LM head's matrix laid out for the mode (minitx.nn.linear.lay_out_for):
        (C, V) row-major in eval mode, where each decoded token is a matrix-vector product over all of E, 1.8x
        faster than over (V, C); (V, C) in training mode, where its gradients and AdamW's update are faster.
        The values never change; switching costs one copy of E."""
        super().train(mode)
        lay_out_for(self.token.weight, inference=not mode)
        return self

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
        tokens = lookup(self.token, input_ids)  # E[ids], E stored input-major (minitx.nn.linear)
        return drop(self.dropout, tokens + self.position(position_ids))

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(dec.3): logits = h E^T with E the token embedding itself (tied; no bias, as GPT-2)."""
        return torch_F.linear(hidden, self.token.weight)  # (B, N, C) @ (C, V) -> (B, N, V)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None) -> CausalLMOutput:
        """Logits for the next token at every position; `targets[b, i]` is the token after `input_ids[b, i]`
        (IGNORE_INDEX: no loss). `attention_mask` (B, M): 1 = real token, 0 = padding (as in HF).

        With `cache` (a `KVCache(n_layers)`), `input_ids` are the tokens after the M - N cached ones: they sit
        at positions M - N.. (unless `position_ids` says otherwise), attend to every cached key through the
        bottom-right causal mask (dec.9), and are appended to the cache; `attention_mask` then covers all M."""
        past = 0 if cache is None else self._check_cache(cache, input_ids)
        if position_ids is None and past:
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)[None]  # (1, N)
        x = self.embed(input_ids, position_ids)
        padding = key_padding_mask(attention_mask, (input_ids.shape[0], past + input_ids.shape[1]))  # (B, M)
        for i, block in enumerate(self.blocks):
            # (dec.2): key j allowed iff j <= i (+ M - N over a cache, dec.9)
            x = block(x, padding, is_causal=True, cache=None if cache is None else cache[i])
        hidden = self.final_norm(x)
        logits = self.lm_head(hidden)
        loss = None if targets is None else next_token_loss(logits, targets)
        return CausalLMOutput(logits, loss, hidden, cache)

    def new_cache(self) -> KVCache:
        """An empty KV cache for this model: one layer per block."""
        return KVCache(len(self.blocks))

    def _check_cache(self, cache, input_ids) -> int:
        if not isinstance(cache, KVCache) or len(cache) != len(self.blocks):
            raise TypeError(f"cache: expected a KVCache with {len(self.blocks)} layers (model.new_cache()), "
                            f"got {cache!r}")
        past, n = cache.length, input_ids.shape[1] if isinstance(input_ids, torch.Tensor) else 0
        if past + n > self.config.max_position:
            raise ValueError(f"input_ids: {past} cached + {n} new tokens exceed max_position="
                             f"{self.config.max_position}")
        return past


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(dec.4): mean over positions with a target of -log softmax(logits)[target]. logits (B, N, V)."""
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets: expected shape {tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    return torch_F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
