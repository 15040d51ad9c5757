"""A Llama-style decoder built from minitx's Blocks (docs/math/decoder.md, rms_norm.md, swiglu.md, positional.md).

What changes from GPT-2 (`minitx.models.gpt`), one part at a time, each a part handed to the same pre-norm Block:
RMSNorm instead of LayerNorm (rmsnorm.1); a SwiGLU feed-forward instead of the GELU MLP (swiglu.4); rotary
positions applied to q and k inside attention instead of a learned table added to the input (pos.4);
grouped-query attention, `n_kv_heads` key/value heads shared by groups of query heads (1: multi-query), so the
KV cache holds `n_kv_heads` heads; no biases anywhere; an LM head tied or untied. Optionally Mistral's sliding
window: each token sees itself and the `sliding_window - 1` tokens before it, through the attention front door
(the flash kernel takes it natively). The loss (dec.4), the cache (dec.6)-(dec.9) and the output type are GPT's,
so `minitx.generate` drives both.

`norm`, `feed_forward` and `position` put GPT-2's part back in one place (the ablations of the Shakespeare
comparison and of lesson 13); Hugging Face's `LlamaForCausalLM` is the default, (rms, swiglu, rope), which
`minitx.interop.llama` converts exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as torch_F  # torch's; minitx.functional is `F` elsewhere
from torch import nn

from minitx.attention.backends import available_backends
from minitx.attention.cache import KVCache
from minitx.attention.multi_head import MultiHeadAttention
from minitx.config import FlatConfig, option
from minitx.models.gpt import CausalLMOutput, next_token_loss
from minitx.models.inputs import check_ids, check_model_config, key_padding_mask
from minitx.nn.block import Block, set_blocks_backend
from minitx.nn.dropout import drop
from minitx.nn.linear import lay_out_for, lookup, store_input_major
from minitx.nn.feed_forward import FeedForward, SwiGLU
from minitx.nn.norms import LayerNorm, RMSNorm
from minitx.positional.rope import RotaryEmbedding

NORMS = ("rms", "layer")
FEED_FORWARDS = ("swiglu", "gelu")
POSITIONS = ("rope", "learned")


@dataclass
class LlamaConfig(FlatConfig):
    """A flat Llama-style decoder config; every field maps one to one onto a CLI flag."""

    vocab_size: int = option(65, "vocabulary size V")
    max_position: int = option(64, "context length (RoPE has no table; generation keeps this many tokens)")
    d_model: int = option(128, "model width C")
    n_layers: int = option(4, "decoder blocks")
    n_heads: int = option(4, "attention heads H (d_model divisible by it)")
    n_kv_heads: int = option(0, "key/value heads (0: n_heads; fewer: grouped-query attention, 1: multi-query)")
    d_ff: int = option(0, "feed-forward width (0: 8 C / 3 rounded up to a multiple of 8 for SwiGLU, 4 C for GELU)")
    rms_norm_eps: float = option(1e-6, "epsilon of every norm (Llama: 1e-6 or 1e-5)")
    rope_theta: float = option(10000.0, "RoPE base (Llama 2: 1e4, Llama 3: 5e5)")
    tie_embeddings: bool = option(True, "LM head tied to the token embedding (Llama 3.2 1B/3B: yes; 8B: no)")
    sliding_window: int = option(0, "Mistral's sliding window: each token sees the last this many (0: all)")
    dropout: float = option(0.0, "dropout on embeddings and residual branches")
    attention_dropout: float = option(0.0, "dropout on attention weights")
    attention_backend: str = option("sdpa", "attention backend: sdpa (PyTorch's, the fastest here), math (the readable "
                                    "one), flash or any registered one",
                                    choices=available_backends)
    initializer_range: float = option(0.02, "std of the normal initial weights")
    norm: str = option("rms", "rms (Llama) or layer (ablation: GPT-2's LayerNorm, without shift)", choices=NORMS)
    feed_forward: str = option("swiglu", "swiglu (Llama) or gelu (ablation: GPT-2's MLP, bias-free)",
                               choices=FEED_FORWARDS)
    position: str = option("rope", "rope (Llama) or learned (ablation: GPT-2's learned table)", choices=POSITIONS)

    def __post_init__(self) -> None:
        check_model_config(self, ("vocab_size", "max_position", "d_model", "n_layers", "n_heads"))
        for name in ("d_ff", "sliding_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        kv = self.n_kv_heads
        if isinstance(kv, bool) or not isinstance(kv, int) or kv < 0 or (kv and self.n_heads % kv):
            raise ValueError(f"n_kv_heads: expected 0 or a divisor of n_heads={self.n_heads}, got {kv!r}")
        for name, value, low in (("rms_norm_eps", self.rms_norm_eps, 0.0), ("rope_theta", self.rope_theta, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
                raise ValueError(f"{name}: expected a number > {low:g}, got {value!r}")
        if self.position == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model: RoPE rotates pairs, so the head dim d_model / n_heads must be even, "
                             f"got {self.d_model} / {self.n_heads}")
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(f"tie_embeddings: expected a bool, got {self.tie_embeddings!r}")
        for name, choices in (("norm", NORMS), ("feed_forward", FEED_FORWARDS), ("position", POSITIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_width(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.feed_forward == "gelu":
            return 4 * self.d_model
        return 8 * math.ceil(8 * self.d_model / 3 / 8)  # (swiglu.4): the weights of a 4C GELU MLP

    @property
    def window(self) -> tuple[int, int] | None:
        """The front door's (left, right) for `sliding_window` W: key j allowed iff i - W < j <= i."""
        return (self.sliding_window - 1, 0) if self.sliding_window else None


def llama_block(config: LlamaConfig) -> Block:
    """A pre-norm block (block.3)-(block.4) with Llama's parts: RMSNorm, RoPE + grouped-query attention without
    biases, SwiGLU; made causal by the caller's `is_causal=True`."""
    c = config
    rotary = RotaryEmbedding(c.d_model // c.n_heads, base=c.rope_theta) if c.position == "rope" else None
    attention = MultiHeadAttention(c.d_model, c.n_heads, dropout=c.attention_dropout, bias=False,
                                   backend=c.attention_backend, n_kv_heads=c.kv_heads, rotary=rotary)
    if c.feed_forward == "swiglu":
        feed_forward: nn.Module = SwiGLU(c.d_model, c.ff_width)
    else:
        feed_forward = FeedForward(c.d_model, c.ff_width, activation="gelu", bias=False)
    if c.norm == "rms":
        norm = partial(RMSNorm, c.d_model, eps=c.rms_norm_eps)
    else:
        norm = partial(LayerNorm, c.d_model, eps=c.rms_norm_eps, bias=False)
    return Block(attention, feed_forward, norm, norm_first=True, dropout=c.dropout)


class Llama(nn.Module):
    """Token embedding, causal pre-norm Blocks (RMSNorm, RoPE + GQA attention, SwiGLU), final RMSNorm, LM head.

    The decoding interface is GPT's: `forward(input_ids, attention_mask, targets, position_ids, cache)` ->
    `CausalLMOutput`, `new_cache()`, `config.max_position`, `set_attention_backend`, `embed`, `lm_head`."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config: expected a LlamaConfig, got {type(config).__name__}")
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_position, config.d_model) if config.position == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(llama_block(config) for _ in range(config.n_layers))
        if config.norm == "rms":
            self.final_norm: nn.Module = RMSNorm(config.d_model, eps=config.rms_norm_eps)
        else:
            self.final_norm = LayerNorm(config.d_model, eps=config.rms_norm_eps, bias=False)
        self.head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        # laid out input-major once initialised, as GPT's; the LM head's weight follows the mode (see `train`)
        store_input_major(self)
        lay_out_for(self.token.weight if self.head is None else self.head.weight, inference=not self.training)

    def train(self, mode: bool = True) -> "Llama":
        """As nn.Module.train, and the LM head's matrix (tied or not) laid out for the mode, as GPT's
        (minitx.nn.linear.lay_out_for): (C, V) row-major to decode, (V, C) to train."""
        super().train(mode)
        lay_out_for(self.token.weight if self.head is None else self.head.weight, inference=not mode)
        return self

    def reset_parameters(self) -> None:
        """N(0, initializer_range) weights, unit norm gains, and, as minitx's GPT (GPT-2's rule), the projections
        that write into the residual stream (out_proj, down_proj / fc_out) scaled by 1/sqrt(2 n_layers), so the
        two families differ in their parts only."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("out_proj.weight", "down_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def set_attention_backend(self, backend: str) -> None:
        """Switch every block's attention backend (math, sdpa, flash) without touching the weights."""
        set_blocks_backend(self.blocks, backend)
        self.config.attention_backend = backend

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) -> (B, N, C): the token embedding (positions enter inside attention, by RoPE), then dropout;
        with `position="learned"` (the ablation) plus the learned table, as GPT's (dec.1)."""
        check_ids("input_ids", input_ids, None, 0, self.config.vocab_size)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected a (B, N) tensor of token ids, got {tuple(input_ids.shape)}")
        x = lookup(self.token, input_ids)  # E[ids], E maybe stored input-major (minitx.nn.linear)
        if self.position is not None:
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]  # (1, N)
            x = x + self.position(position_ids)
        return drop(self.dropout, x)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """logits = h E^T with the token embedding E when tied (dec.3), else h W_out^T; no bias."""
        weight = self.token.weight if self.head is None else self.head.weight
        return torch_F.linear(hidden, weight)  # (B, N, C) @ (C, V) -> (B, N, V)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None) -> CausalLMOutput:
        """Logits for the next token at every position, as `GPT.forward`: `targets[b, i]` is the token after
        `input_ids[b, i]` (IGNORE_INDEX: no loss); `attention_mask` (B, M) 1 = real token. With `cache`, the N
        new tokens sit after the M - N cached ones (RoPE rotates them at those positions), attend to every
        cached key through the bottom-right causal mask (dec.9), and their keys/values (n_kv_heads heads, after
        RoPE) are appended."""
        past = 0 if cache is None else self._check_cache(cache, input_ids)
        n = input_ids.shape[1] if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 else 0
        if position_ids is None:
            if past + n > self.config.max_position:
                raise ValueError(f"input_ids: sequence length {past + n} exceeds max_position="
                                 f"{self.config.max_position}")
            position_ids = torch.arange(past, past + n, device=input_ids.device)[None]  # (1, N)
        elif not isinstance(position_ids, torch.Tensor) or position_ids.shape[-1] != n \
                or position_ids.is_floating_point() or int(position_ids.max()) >= self.config.max_position:
            raise ValueError(f"position_ids: expected integer positions (B, {n}) below max_position="
                             f"{self.config.max_position}, got {position_ids!r}")
        x = self.embed(input_ids, position_ids)
        padding = key_padding_mask(attention_mask, (input_ids.shape[0], past + n))  # (B, M)
        rope_positions = position_ids if self.position is None else None
        for i, block in enumerate(self.blocks):
            # (dec.2), bottom-right over a cache (dec.9); a sliding window keeps the last W keys
            x = block(x, padding, is_causal=True, positions=rope_positions,
                      cache=None if cache is None else cache[i], window=self.config.window)
        hidden = self.final_norm(x)
        logits = self.lm_head(hidden)
        loss = None if targets is None else next_token_loss(logits, targets)
        return CausalLMOutput(logits, loss, hidden, cache)

    def new_cache(self) -> KVCache:
        """An empty KV cache for this model: one layer per block, each storing n_kv_heads heads."""
        return KVCache(len(self.blocks))

    def _check_cache(self, cache, input_ids) -> int:
        if not isinstance(cache, KVCache) or len(cache) != len(self.blocks):
            raise TypeError(f"cache: expected a KVCache with {len(self.blocks)} layers (model.new_cache()), "
                            f"got {cache!r}")
        return cache.length
