"""The original Transformer (Vaswani et al. 2017): an encoder-decoder built from minitx's Blocks
(docs/math/encoder_decoder.md, labels (tf.*)).

Source and target tokens are embedded, scaled by sqrt(C) and given fixed sinusoidal positions (tf.1). The
encoder is a stack of bidirectional Blocks over the source, its only mask the source padding (tf.2). The decoder
is a stack of Blocks with a cross-attention sublayer: causal self-attention over the target (tf.3), then
attention from every target position to the encoder's output with the source padding mask (tf.4), then the
feed-forward. The output projection is the target embedding itself, tied (tf.5). Post-LN as in the paper
(pre-LN as an option, with a final norm after each stack). Trained with teacher forcing (tf.6) and
label-smoothed cross-entropy (ls.1).

The decoder's cache (`new_cache()`) keeps per layer the self-attention keys/values of the target so far
(dec.6) and the cross-attention keys/values of the encoder's output, projected once (tf.7).

`position_layout` says how the sines and cosines sit in the table: "interleaved" is the paper's formula
(pos.1), PE[p, 2i] = sin, PE[p, 2i+1] = cos; "halves" puts every sine first and every cosine after, as
tensor2tensor, fairseq and Marian do (the same numbers, the channels permuted), so MarianMT loads exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as torch_F  # torch's; minitx.functional is `F` elsewhere
from torch import nn

from minitx.attention.backends import available_backends
from minitx.attention.cache import KVCache
from minitx.attention.multi_head import MultiHeadAttention
from minitx.checks import check_probability
from minitx.config import FlatConfig, option
from minitx.functional import IGNORE_INDEX, label_smoothed_cross_entropy
from minitx.models.inputs import check_ids, check_model_config, key_padding_mask
from minitx.nn.block import Block, set_blocks_backend
from minitx.nn.dropout import drop
from minitx.nn.linear import store_input_major
from minitx.nn.feed_forward import FEED_FORWARD_ACTIVATIONS, FeedForward
from minitx.nn.norms import LayerNorm
from minitx.positional.absolute import sinusoidal_table

POSITION_LAYOUTS = ("interleaved", "halves")


@dataclass
class TransformerConfig(FlatConfig):
    """A flat encoder-decoder config; every field maps one to one onto a CLI flag of `minitx train-seq2seq`."""

    vocab_size: int = option(64, "source vocabulary size (and the target's, with shared embeddings)")
    tgt_vocab_size: int = option(0, "target vocabulary size (0: vocab_size; must be 0 with shared embeddings)")
    share_embeddings: bool = option(True, "one embedding for source and target (the output projection is "
                                    "always tied to the target embedding)")
    max_position: int = option(128, "longest source or target sequence (sinusoidal table length)")
    d_model: int = option(128, "model width C")
    n_encoder_layers: int = option(3, "encoder blocks")
    n_decoder_layers: int = option(3, "decoder blocks")
    n_heads: int = option(4, "attention heads H (d_model divisible by it)")
    d_ff: int = option(0, "feed-forward width (0: 4 * d_model, as the paper's 512 -> 2048)")
    dropout: float = option(0.1, "dropout on embeddings and residual branches (the paper's P_drop)")
    attention_dropout: float = option(0.0, "dropout on attention weights")
    activation_dropout: float = option(0.0, "dropout after the feed-forward's activation")
    activation: str = option("relu", "feed-forward activation: relu (the paper's), gelu or gelu_tanh",
                             choices=tuple(FEED_FORWARD_ACTIVATIONS))
    norm_first: bool = option(False, "pre-LN blocks (default: post-LN, as in the paper)")
    layer_norm_eps: float = option(1e-5, "LayerNorm epsilon")
    scale_embedding: bool = option(True, "multiply embeddings by sqrt(d_model) (tf.1)")
    position_layout: str = option("interleaved", "sinusoid channels: interleaved (the paper's formula) or "
                                  "halves (sines then cosines: tensor2tensor, fairseq, Marian)",
                                  choices=POSITION_LAYOUTS)
    attention_backend: str = option("sdpa", "attention backend: sdpa (PyTorch's, the fastest here), math (the readable "
                                    "one), flash or any registered one",
                                    choices=available_backends)
    pad_token_id: int = option(0, "padding id (decoder outputs after the end are filled with it)")
    decoder_start_token_id: int = option(1, "the token the decoder starts from")
    eos_token_id: int = option(2, "end of sequence: generation stops a sequence when it appears")

    def __post_init__(self) -> None:
        for name in ("tgt_vocab_size", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0 (0: the default), got {value!r}")
        check_model_config(self, ("vocab_size", "max_position", "d_model", "n_encoder_layers", "n_decoder_layers",
                                  "n_heads"))
        for name in ("share_embeddings", "norm_first", "scale_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if self.share_embeddings and self.tgt_vocab_size not in (0, self.vocab_size):
            raise ValueError(f"tgt_vocab_size: shared embeddings need one vocabulary; got {self.tgt_vocab_size} "
                             f"with vocab_size={self.vocab_size} (set share_embeddings=False)")
        if self.activation not in FEED_FORWARD_ACTIVATIONS:
            raise ValueError(f"activation: expected one of {tuple(FEED_FORWARD_ACTIVATIONS)}, got {self.activation!r}")
        if self.position_layout not in POSITION_LAYOUTS:
            raise ValueError(f"position_layout: expected one of {POSITION_LAYOUTS}, got {self.position_layout!r}")
        check_probability("activation_dropout", self.activation_dropout)
        for name in ("pad_token_id", "decoder_start_token_id", "eos_token_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.target_vocab_size:
                raise ValueError(f"{name}: expected a target id in [0, {self.target_vocab_size}), got {value!r}")

    @property
    def target_vocab_size(self) -> int:
        return self.tgt_vocab_size or self.vocab_size

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model


class Seq2SeqOutput(NamedTuple):
    logits: torch.Tensor            # (B, T, V_tgt)
    loss: Optional[torch.Tensor]    # label-smoothed cross-entropy (ls.1) over labelled positions, or None
    encoder_output: torch.Tensor    # (B, S, C): pass it back in to skip the encoder
    cache: Optional["EncoderDecoderCache"]


class EncoderDecoderCache:
    """The decoder's cache: per layer, the target's self-attention keys/values so far (dec.6) and the encoder
    output's cross-attention keys/values, projected on the first step and reused after (tf.7)."""

    def __init__(self, n_layers: int) -> None:
        self.self_attention = KVCache(n_layers)
        self.cross_attention = KVCache(n_layers)

    def __len__(self) -> int:
        return len(self.self_attention)

    @property
    def length(self) -> int:
        """Target tokens cached so far."""
        return self.self_attention.length

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search follows its surviving hypotheses)."""
        self.self_attention.reorder(index)
        self.cross_attention.reorder(index)


def transformer_block(config: TransformerConfig, cross_attention: bool) -> Block:
    """One encoder block (cross_attention=False) or decoder block (True), from the Block's parts."""
    def attention() -> MultiHeadAttention:
        return MultiHeadAttention(config.d_model, config.n_heads, dropout=config.attention_dropout,
                                  backend=config.attention_backend)
    feed_forward = FeedForward(config.d_model, config.ff_width, dropout=config.activation_dropout,
                               activation=config.activation)
    return Block(attention(), feed_forward, partial(LayerNorm, config.d_model, eps=config.layer_norm_eps),
                 norm_first=config.norm_first, dropout=config.dropout,
                 cross_attention=attention() if cross_attention else None)


def shift_tokens_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """(tf.6) teacher forcing: the decoder reads [start] + labels[:-1] and is asked for labels; an ignored label
    (-100) is read as padding. labels (B, T) -> decoder_input_ids (B, T)."""
    shifted = torch.full_like(labels, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)


class Transformer(nn.Module):
    """Encoder-decoder Transformer, (tf.1)-(tf.7). Module names follow the Block's (`encoder.{i}.attention.q_proj`,
    `decoder.{i}.cross_attention.k_proj`, ...), so LoRA targets, hooks and backends see the usual parts."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config: expected a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.d_model)  # source (and target, when shared)
        self.tgt_token = None if config.share_embeddings else nn.Embedding(config.target_vocab_size, config.d_model)
        table = sinusoidal_table(config.max_position, config.d_model)  # (L, C), the paper's interleaved (pos.1)
        if config.position_layout == "halves":
            order = torch.cat([torch.arange(0, config.d_model, 2), torch.arange(1, config.d_model, 2)])
            table = table[:, order]  # (L, C): sines first, then cosines
        self.register_buffer("positions", table, persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(transformer_block(config, False) for _ in range(config.n_encoder_layers))
        self.decoder = nn.ModuleList(transformer_block(config, True) for _ in range(config.n_decoder_layers))
        norm = partial(LayerNorm, config.d_model, eps=config.layer_norm_eps)
        self.encoder_norm = norm() if config.norm_first else None  # pre-LN leaves the stream unnormalised
        self.decoder_norm = norm() if config.norm_first else None
        self.reset_parameters()
        store_input_major(self)  # laid out for decoding once initialised (minitx.nn.linear)

    @property
    def target_embedding(self) -> nn.Embedding:
        return self.token if self.tgt_token is None else self.tgt_token

    def reset_parameters(self) -> None:
        """Xavier-uniform matrices (as the Annotated Transformer), zero biases, unit norm gains; embeddings
        N(0, 1/C), so that the sqrt(C)-scaled embedding (tf.1) has unit variance, the sinusoids' scale."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif p.ndim == 1:
                nn.init.zeros_(p)
            elif "token" in name:
                nn.init.normal_(p, 0.0, self.config.d_model ** -0.5)
            else:
                nn.init.xavier_uniform_(p)

    def set_attention_backend(self, backend: str) -> None:
        """Switch every block's attention backend (self- and cross-attention), weights untouched."""
        set_blocks_backend(list(self.encoder) + list(self.decoder), backend)
        self.config.attention_backend = backend

    def embed(self, ids: torch.Tensor, embedding: nn.Embedding, start: int = 0) -> torch.Tensor:
        """(tf.1): E[ids] sqrt(C) + PE[start : start + N], then dropout. (B, N) -> (B, N, C)."""
        n = ids.shape[1]
        if start + n > self.config.max_position:
            raise ValueError(f"input_ids: {start} + {n} positions exceed max_position={self.config.max_position}")
        scale = math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0
        return drop(self.dropout, embedding(ids) * scale + self.positions[start:start + n])

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(tf.2): the source (B, S) through the bidirectional encoder -> (B, S, C); attention_mask (B, S) 1 = real."""
        check_ids("input_ids", input_ids, None, 0, self.config.vocab_size)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected (B, S) token ids, got shape {tuple(input_ids.shape)}")
        padding = key_padding_mask(attention_mask, tuple(input_ids.shape))  # (B, S) True = real
        x = self.embed(input_ids, self.token)
        for block in self.encoder:
            x = block(x, padding)  # (tf.2): every source token sees every real source token
        return x if self.encoder_norm is None else self.encoder_norm(x)

    def decode(self, decoder_input_ids: torch.Tensor, encoder_output: torch.Tensor,
               attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
               cache: EncoderDecoderCache | None = None) -> torch.Tensor:
        """Decoder hidden states (B, T, C). attention_mask (B, S): the source's padding (tf.4);
        decoder_attention_mask (B, past + T): the target's (tf.3). With `cache`, the T tokens follow the cached ones."""
        check_ids("decoder_input_ids", decoder_input_ids, None, 0, self.config.target_vocab_size)
        if decoder_input_ids.dim() != 2:
            raise ValueError(f"decoder_input_ids: expected (B, T) token ids, got {tuple(decoder_input_ids.shape)}")
        b, t = decoder_input_ids.shape
        if not isinstance(encoder_output, torch.Tensor) or encoder_output.dim() != 3 \
                or encoder_output.shape[0] != b or encoder_output.shape[2] != self.config.d_model:
            got = tuple(encoder_output.shape) if isinstance(encoder_output, torch.Tensor) else type(encoder_output)
            raise ValueError(f"encoder_output: expected ({b}, S, {self.config.d_model}), got {got}")
        if cache is not None and (not isinstance(cache, EncoderDecoderCache) or len(cache) != len(self.decoder)):
            raise TypeError(f"cache: expected an EncoderDecoderCache with {len(self.decoder)} layers "
                            f"(model.new_cache()), got {cache!r}")
        past = 0 if cache is None else cache.length
        source_padding = key_padding_mask(attention_mask, tuple(encoder_output.shape[:2]))  # (B, S)
        target_padding = key_padding_mask(decoder_attention_mask, (b, past + t))  # (B, past + T)
        x = self.embed(decoder_input_ids, self.target_embedding, start=past)
        for i, block in enumerate(self.decoder):
            # (tf.3) causal + target padding for self-attention; (tf.4) source padding for cross-attention
            x = block(x, target_padding, is_causal=True, context=encoder_output, context_padding_mask=source_padding,
                      cache=None if cache is None else cache.self_attention[i],
                      cross_cache=None if cache is None else cache.cross_attention[i])
        return x if self.decoder_norm is None else self.decoder_norm(x)

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(tf.5): logits = h E_tgt^T, the projection tied to the target embedding. (B, T, C) -> (B, T, V)."""
        return torch_F.linear(hidden, self.target_embedding.weight)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, label_smoothing: float = 0.0, *,
                encoder_output: torch.Tensor | None = None,
                cache: EncoderDecoderCache | None = None) -> Seq2SeqOutput:
        """Logits for the next target token at every decoder position. labels (B, T): the token each position
        should produce (IGNORE_INDEX: no loss); `shift_tokens_right(labels, ...)` makes decoder_input_ids (tf.6).
        encoder_output: a previous `encode` of the same source, to skip the encoder (generation does)."""
        if encoder_output is None:
            encoder_output = self.encode(input_ids, attention_mask)
        hidden = self.decode(decoder_input_ids, encoder_output, attention_mask, decoder_attention_mask, cache)
        logits = self.output_logits(hidden)
        loss = None
        if labels is not None:
            loss = label_smoothed_cross_entropy(logits, labels, label_smoothing)  # (ls.1)
        return Seq2SeqOutput(logits, loss, encoder_output, cache)

    def new_cache(self) -> EncoderDecoderCache:
        """An empty decoder cache: self- and cross-attention keys/values for every decoder block."""
        return EncoderDecoderCache(len(self.decoder))
