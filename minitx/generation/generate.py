"""Text generation from a causal LM or an encoder-decoder, with and without a KV cache (docs/math/decoder.md,
(dec.6)-(dec.9)); greedy, sampling and beam search (`minitx.generation.beam`, docs/beam_search.md).

This is the sampling loop only: the model computes the logits, and with `use_cache` it keeps the keys and
values of every token so far in the `KVCache` it is handed (`minitx.attention.cache`), so each step feeds it
just the newest token (dec.7). The loop never looks inside the model: any causal LM with `forward(ids,
cache=...)`, `new_cache()` and `config.max_position` (minitx's GPT and the families to come) is generated from.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import nn

from minitx.generation.beam import beam_search, check_beam_options
from minitx.generation.encoder_decoder import generate_encoder_decoder, is_encoder_decoder
from minitx.generation.sampling import sample_next


def _check_args(model, ids, max_new_tokens, temperature, top_k, top_p, seed) -> None:
    if not (isinstance(model, nn.Module) and hasattr(model, "new_cache")
            and hasattr(getattr(model, "config", None), "max_position")):
        raise TypeError(f"model: expected a minitx causal LM (a GPT: forward(ids, cache=...), new_cache(), "
                        f"config.max_position), got {type(model).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] == 0 or ids.dtype != torch.long:
        got = (tuple(ids.shape), ids.dtype) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"ids: expected a non-empty (B, N) long tensor of token ids, got {got}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature: expected a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"seed: expected None or an int in [0, 2**63) (a torch.Generator seed), got {seed!r}")
    vocab = getattr(model.config, "vocab_size", None)
    if isinstance(vocab, int) and ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < vocab):
        raise ValueError(f"ids: expected token ids in [0, {vocab}) (the model's vocab_size), got values from "
                         f"{int(ids.min())} to {int(ids.max())}")


@torch.no_grad()
def iter_generate(model: nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield each new token (B,) as soon as it is chosen. The context is the last max_position tokens, as in
    nanoGPT; once the cache holds a full window it is rebuilt from the window (positions are absolute)."""
    _check_args(model, ids, max_new_tokens, temperature, top_k, top_p, seed)
    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=ids.device).manual_seed(seed)
    window, cache, pending = model.config.max_position, None, ids
    try:
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = model(ids[:, -window:]).logits[:, -1]
            else:
                if cache is None or cache.length + pending.shape[1] > window:
                    cache, pending = model.new_cache(), ids[:, -window:]  # (re)fill from the window
                logits = model(pending, cache=cache).logits[:, -1]  # the model appends to its cache
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            ids = torch.cat([ids, token[:, None]], dim=1)
            pending = token[:, None]
            yield token
    finally:
        model.train(was_training)


def generate(model: nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True, *, attention_mask: torch.Tensor | None = None, num_beams: int = 1,
             length_penalty: float = 1.0, early_stopping: bool | str = False) -> torch.Tensor:
    """A causal LM: `ids` (B, N) followed by `max_new_tokens` generated tokens, (B, N + max_new_tokens).
    An encoder-decoder (minitx.Transformer): `ids` is the source (B, S), `attention_mask` (B, S) its padding
    (1 = real); returns the decoder's ids (B, 1 + G): the start token, then G <= max_new_tokens tokens,
    stopping once every sequence has produced EOS and padding the ones that ended first (as Hugging Face).

    temperature 0 is greedy decoding; `seed` makes sampling repeatable (a private torch.Generator).
    num_beams > 1 is beam search (with temperature 0): `length_penalty` and `early_stopping` (True, False,
    "never") as Hugging Face defines them, docs/beam_search.md. A causal LM's beams run to max_new_tokens
    (it has no EOS) within its max_position."""
    check_beam_options(num_beams, length_penalty, early_stopping)
    if num_beams > 1 and temperature != 0:
        raise ValueError(f"temperature: beam search here is deterministic; pass temperature=0 with "
                         f"num_beams={num_beams}, got {temperature!r}")
    if is_encoder_decoder(model):
        _check_args_seq2seq(model, ids, max_new_tokens, temperature, top_k, top_p, seed)
        was_training = model.training
        model.eval()
        generator = None if seed is None else torch.Generator(device=ids.device).manual_seed(seed)
        try:
            return generate_encoder_decoder(model, ids, max_new_tokens, temperature, top_k, top_p, generator,
                                            use_cache, attention_mask, num_beams, length_penalty, early_stopping)
        finally:
            model.train(was_training)
    if attention_mask is not None:
        raise ValueError("attention_mask: expected None for a causal LM (the prompt has no padding here); "
                         "it is the source's padding for an encoder-decoder")
    if num_beams > 1:
        return _beam_causal_lm(model, ids, max_new_tokens, num_beams, length_penalty, early_stopping, use_cache)
    new = list(iter_generate(model, ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache))
    return torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids.clone()


def _check_args_seq2seq(model, ids, max_new_tokens, temperature, top_k, top_p, seed) -> None:
    if not (isinstance(model, nn.Module) and hasattr(model, "new_cache")):
        raise TypeError(f"model: expected a minitx encoder-decoder (a Transformer), got {type(model).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] == 0 or ids.dtype != torch.long:
        got = (tuple(ids.shape), ids.dtype) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"ids: expected a non-empty (B, S) long tensor of source ids, got {got}")
    _check_args(model, ids, max_new_tokens, temperature, top_k, top_p, seed)


@torch.no_grad()
def _beam_causal_lm(model, ids, max_new_tokens, num_beams, length_penalty, early_stopping, use_cache):
    _check_args(model, ids, max_new_tokens, 0, None, None, None)
    if ids.shape[1] + max_new_tokens > model.config.max_position:
        raise ValueError(f"max_new_tokens: beam search keeps the whole sequence in the context; "
                         f"{ids.shape[1]} + {max_new_tokens} exceed max_position={model.config.max_position}")
    if max_new_tokens == 0:
        return ids.clone()
    cache = model.new_cache() if use_cache else None

    def step(sequences, reorder):
        if cache is None:
            return model(sequences).logits[:, -1]
        if reorder is not None:
            cache.reorder(reorder)
        return model(sequences[:, cache.length:], cache=cache).logits[:, -1]
    was_training = model.training
    model.eval()
    try:
        return beam_search(step, ids, num_beams, ids.shape[1] + max_new_tokens, None, 0, length_penalty,
                           early_stopping)
    finally:
        model.train(was_training)
