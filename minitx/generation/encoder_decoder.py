"""Generation from an encoder-decoder (minitx.Transformer): the encoder runs once, the decoder step by step.

The source is encoded once (tf.2). The decoder starts from `decoder_start_token_id` and keeps a cache (tf.7):
its self-attention keys/values grow by one token per step (dec.6), the cross-attention keys/values of the
encoder's output are projected on the first step and read back on every later one. Greedy and sampling choose
each token with `sample_next`; a sequence that has produced EOS is filled with padding until every sequence has
ended (as Hugging Face's greedy search). Beam search (`minitx.generation.beam`) runs on the same step.
The loop calls the model's `encode`, `forward(..., encoder_output=, cache=)` and `new_cache()` only.
"""

from __future__ import annotations

import torch
from torch import nn

from minitx.generation.beam import beam_search
from minitx.generation.sampling import sample_next


def is_encoder_decoder(model: nn.Module) -> bool:
    return hasattr(model, "encode") and hasattr(getattr(model, "config", None), "decoder_start_token_id")


def _check_length(model, max_new_tokens: int) -> None:
    if max_new_tokens + 1 > model.config.max_position:
        raise ValueError(f"max_new_tokens: the decoder holds max_position={model.config.max_position} tokens "
                         f"with its start token, got {max_new_tokens}")


def _step_fn(model, source, encoder_output, attention_mask, use_cache):
    """step(sequences (R, L), reorder) -> next-token logits (R, V): the new tokens only, over the cache."""
    cache = model.new_cache() if use_cache else None

    def step(sequences, reorder=None):
        if cache is None:
            return model(source, sequences, attention_mask, encoder_output=encoder_output).logits[:, -1]
        if reorder is not None:
            cache.reorder(reorder)
        new = sequences[:, cache.length:]  # (R, L) -> (R, L - cached)
        return model(source, new, attention_mask, encoder_output=encoder_output, cache=cache).logits[:, -1]
    return step


@torch.no_grad()
def generate_encoder_decoder(model: nn.Module, source: torch.Tensor, max_new_tokens: int, temperature: float,
                             top_k, top_p, generator, use_cache: bool, attention_mask: torch.Tensor | None,
                             num_beams: int, length_penalty: float, early_stopping) -> torch.Tensor:
    """Decoder ids (B, 1 + G), G <= max_new_tokens: the start token, then the generated tokens."""
    _check_length(model, max_new_tokens)
    config = model.config
    start = torch.full((source.shape[0], 1), config.decoder_start_token_id, dtype=torch.long, device=source.device)
    if max_new_tokens == 0:
        return start
    encoder_output = model.encode(source, attention_mask)  # (tf.2): once
    if num_beams > 1:
        # every hypothesis of row b reads row b's source: expand once, then the cache follows the beams
        def expand(t):
            return None if t is None else t.repeat_interleave(num_beams, dim=0)  # (B, ...) -> (B K, ...)
        step = _step_fn(model, expand(source), expand(encoder_output), expand(attention_mask), use_cache)
        return beam_search(step, start, num_beams, 1 + max_new_tokens, config.eos_token_id, config.pad_token_id,
                           length_penalty, early_stopping)
    step = _step_fn(model, source, encoder_output, attention_mask, use_cache)
    ids, running = start, torch.ones(source.shape[0], dtype=torch.bool, device=source.device)
    for _ in range(max_new_tokens):
        token = sample_next(step(ids), temperature, top_k, top_p, generator)  # (B,)
        token = torch.where(running, token, config.pad_token_id)  # an ended sequence is padded
        ids = torch.cat([ids, token[:, None]], dim=1)
        running &= token != config.eos_token_id
        if not bool(running.any()):
            break
    return ids
