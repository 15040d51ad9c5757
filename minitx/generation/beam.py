"""Beam search, with Hugging Face's bookkeeping exactly (docs/beam_search.md, labels (beam.*)).

Beam search keeps the `num_beams` best partial sequences ("hypotheses") of every batch row instead of one. Each
step scores every continuation of every running hypothesis by its summed log-probability (beam.1), keeps the
2K best (beam.2), sends those that end (EOS, or the length limit) among the top K to a list of finished
hypotheses scored with the length penalty (beam.3), and continues with the K best that did not end (beam.4).
A row stops when its K-th finished score can no longer be beaten (beam.5), or, with `early_stopping=True`,
as soon as K hypotheses have finished; the answer is the best finished hypothesis (beam.6).

This module knows nothing of models: `step(sequences, reorder)` returns the next-token logits of every running
hypothesis; before it runs, the caller's cache must follow the hypotheses that survived (`reorder`, the flat
index of each one's parent). So one loop serves a decoder-only LM and an encoder-decoder alike.
"""

from __future__ import annotations

from typing import Callable

import torch

NEG = -1.0e9  # "impossible" as Hugging Face writes it: a score no real log-probability sum reaches


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (B, K, ...) -> (B, K', ...) picking along the beam axis with index (B, K')."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def check_beam_options(num_beams, length_penalty, early_stopping) -> None:
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams: expected an int >= 1, got {num_beams!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise ValueError(f"length_penalty: expected a number (1.0: average log-probability per token), "
                         f"got {length_penalty!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping: expected True, False or 'never', got {early_stopping!r}")


@torch.no_grad()
def beam_search(step: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], prompt: torch.Tensor,
                num_beams: int, max_length: int, eos_token_id: int | None, pad_token_id: int,
                length_penalty: float = 1.0, early_stopping: bool | str = False) -> torch.Tensor:
    """The best hypothesis per row, (B, P + G): the prompt (B, P), then G <= max_length - P generated tokens,
    padded with `pad_token_id` after an early EOS (G is the longest returned hypothesis).

    step(sequences (B K, L), reorder (B K,) | None) -> logits (B K, V) for the next token of each hypothesis;
    hypotheses b K .. b K + K - 1 belong to row b. length_penalty: a finished hypothesis of G tokens scores
    sum log p / G ** length_penalty (beam.3); early_stopping: True, False or "never", as Hugging Face's."""
    check_beam_options(num_beams, length_penalty, early_stopping)
    b, p = prompt.shape
    k, device = num_beams, prompt.device
    if max_length <= p:
        raise ValueError(f"max_length: expected more than the prompt's {p} tokens, got {max_length}")
    keep = 2 * k  # with one EOS id: enough candidates that K can go on even if K of them just ended
    top_k_mask = torch.arange(keep, device=device) < k  # only the K best may enter the finished list

    running = torch.full((b, k, max_length), pad_token_id, dtype=torch.long, device=device)
    running[:, :, :p] = prompt[:, None]
    running_scores = torch.zeros(b, k, device=device)
    running_scores[:, 1:] = NEG  # all beams start equal: only the first one's continuations count at step 1
    finished = running.clone()
    finished_scores = torch.full((b, k), NEG, device=device)
    finished_lengths = torch.zeros(b, k, dtype=torch.long, device=device)
    is_finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    reorder, cur = None, p
    while True:
        logits = step(running[:, :, :cur].reshape(b * k, cur), reorder)  # (B K, cur) -> (B K, V)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        v = log_probs.shape[-1]
        scores = (log_probs.view(b, k, v) + running_scores[:, :, None]).view(b, k * v)  # (beam.1)
        top_scores, top_index = torch.topk(scores, keep)  # (beam.2): (B, 2K), best first
        parent, token = top_index // v, top_index % v
        candidates = _gather(running, parent)  # (B, 2K, L)
        candidates[:, :, cur] = token
        ends = torch.zeros_like(token, dtype=torch.bool) if eos_token_id is None else token == eos_token_id
        ends |= cur + 1 >= max_length  # the length limit ends every candidate

        # (beam.4): the K best candidates that did not end keep running
        alive_scores = top_scores + ends.float() * NEG
        survivors = torch.topk(alive_scores, k).indices  # (B, K)
        running, running_scores = _gather(candidates, survivors), _gather(alive_scores, survivors)
        parents = _gather(parent, survivors)  # (B, K): which old hypothesis each survivor extends

        # (beam.3): candidates ending among the top K join the finished list, scored with the length penalty
        just_finished = ends & top_k_mask
        generated = cur + 1 - p
        candidate_scores = top_scores / (generated ** length_penalty)
        full = is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        candidate_scores += full.float() * NEG  # early_stopping=True and K already finished: no more
        candidate_scores += (~improvable).float() * NEG  # (beam.5) said this row cannot improve
        candidate_scores += (~just_finished).float() * NEG
        merged_scores = torch.cat([finished_scores, candidate_scores], dim=1)  # (B, 3K)
        best = torch.topk(merged_scores, k).indices
        finished = _gather(torch.cat([finished, candidates], dim=1), best)
        finished_scores = _gather(merged_scores, best)
        lengths = torch.full_like(token, generated)
        finished_lengths = _gather(torch.cat([finished_lengths, lengths], dim=1), best)
        is_finished = _gather(torch.cat([is_finished, just_finished], dim=1), best)

        reorder = (parents + torch.arange(b, device=device)[:, None] * k).view(b * k)  # flat parent rows
        cur += 1
        # (beam.5): can the best running hypothesis still beat the worst finished one?
        if early_stopping == "never" and length_penalty > 0:
            best_length = max_length - p  # a positive penalty favours length: assume it runs to the end
        else:
            best_length = cur - p
        best_possible = running_scores[:, :1] / (best_length ** length_penalty)
        worst = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, NEG)  # (B, K)
        improvable = improvable & (best_possible > worst).any(dim=-1, keepdim=True)
        stop = (not bool(improvable.any())) or (bool(is_finished.all()) and early_stopping is True) \
            or bool(ends.all())
        if stop:
            break
    # (beam.6): the best finished hypothesis of each row, cut to the longest one returned
    length = p + int(finished_lengths[:, 0].max())
    return finished[:, 0, :length]
