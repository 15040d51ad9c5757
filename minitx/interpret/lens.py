"""Reading the residual stream in the vocabulary: the logit lens (interp.7) and direct logit attribution per
head (interp.8)-(interp.10).

What a family must provide for these (the cache itself needs only Blocks):
  - a decoder: `final_norm` (minitx's LayerNorm or RMSNorm) and `lm_head(hidden)`, a linear map without bias to
    the logits (GPT and Llama have both);
  - a masked LM: `bert.final_norm` (None for post-LN) and `mlm_head(hidden, decoder_weight)` (BertForMaskedLM).
Direct logit attribution also needs pre-LN blocks (norm_first): with post-LN, a norm inside every block mixes
the heads' writes and the stream is no sum of them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from einops import rearrange
from torch import nn

from minitx.interpret.cache import ActivationCache
from minitx.nn.norms import LayerNorm, RMSNorm


def readout(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's own map from a residual stream (..., C) to logits (..., V), final norm included."""
    if callable(getattr(model, "lm_head", None)) and isinstance(getattr(model, "final_norm", None), nn.Module):
        return lambda x: model.lm_head(model.final_norm(x))
    bert, head = getattr(model, "bert", None), getattr(model, "mlm_head", None)
    if bert is not None and head is not None:
        def mlm(x):
            x = x if bert.final_norm is None else bert.final_norm(x)
            return head(x, bert.embeddings.token.weight)
        return mlm
    raise TypeError(f"model: expected a decoder with final_norm and lm_head, or a masked LM with bert and mlm_head, "
                    f"got {type(model).__name__}")


def logit_lens(model: nn.Module, cache: ActivationCache, stack: str | None = None) -> torch.Tensor:
    """(L + 1, B, N, V): the readout applied to the stream entering block 0 and leaving each block (interp.7).
    The last row is the model's own logits."""
    read = readout(model)
    blocks = cache.blocks(stack)
    streams = [cache[f"{blocks[0]}.resid_pre"]] + [cache[f"{b}.resid_post"] for b in blocks]
    with torch.no_grad():
        return torch.stack([read(x) for x in streams])


class LogitAttribution(NamedTuple):
    """Each part of the final residual stream's contribution to one logit per position (interp.9), (B, N) each:
    they sum to that logit exactly (interp.10), with the final norm's scale taken from the real run."""

    embed: torch.Tensor      # (B, N): the embeddings (the stream entering block 0)
    heads: torch.Tensor      # (L, H, B, N): each head's z_h W_O,h^T
    attn_bias: torch.Tensor  # (L, B, N): out_proj's bias
    ffn: torch.Tensor        # (L, B, N): each feed-forward's output
    norm_bias: torch.Tensor  # (B, N): the final norm's shift read out
    cross_attn: torch.Tensor  # (L, B, N): each cross-attention sublayer's output (zeros without one)

    def total(self) -> torch.Tensor:
        return (self.embed + self.heads.sum((0, 1)) + self.attn_bias.sum(0) + self.ffn.sum(0) + self.norm_bias
                + self.cross_attn.sum(0))


def _frozen_norm(norm: nn.Module, x: torch.Tensor):
    """(center, scale, shift) with norm(x) = center(x) * scale + shift at this x: the norm as a linear map once
    its statistic σ is frozen (interp.8)."""
    if isinstance(norm, LayerNorm):
        x = x.float()
        sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)  # (B, N, 1)
        return (lambda c: c - c.mean(-1, keepdim=True)), norm.weight / sigma, norm.bias
    if isinstance(norm, RMSNorm):
        sigma = torch.sqrt(x.float().pow(2).mean(-1, keepdim=True) + norm.eps)
        return (lambda c: c), norm.weight / sigma, None
    raise TypeError(f"final_norm: expected a LayerNorm or an RMSNorm, got {type(norm).__name__}")


@torch.no_grad()
def direct_logit_attribution(model: nn.Module, cache: ActivationCache, target: torch.Tensor,
                             stack: str | None = None) -> LogitAttribution:
    """How much each head (and the embeddings, each feed-forward, the biases) writes directly into the logit of
    `target` (B, N) token ids at each position, through the frozen final norm and the unembedding
    (interp.8)-(interp.10). A pre-LN decoder only; needs "attention.z", "ffn_out" and the residual streams cached."""
    blocks = cache.blocks(stack)
    norm, unembed = getattr(model, "final_norm", None), getattr(model, "lm_head", None)
    if not isinstance(norm, nn.Module) or not callable(unembed):
        raise TypeError(f"model: expected a decoder with final_norm and lm_head, got {type(model).__name__}")
    if not all(model.get_submodule(b).norm_first for b in blocks):
        raise ValueError("model: direct logit attribution needs pre-LN blocks (norm_first=True); in a post-LN "
                         "block the norm after each sublayer mixes the heads' writes")
    final = cache[f"{blocks[-1]}.resid_post"]
    if not isinstance(target, torch.Tensor) or target.shape != final.shape[:2]:
        raise ValueError(f"target: expected token ids of shape {tuple(final.shape[:2])}, got "
                         f"{tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}")
    center, scale, shift = _frozen_norm(norm, final)

    def read(c: torch.Tensor) -> torch.Tensor:  # (..., B, N, C) -> (..., B, N)
        logits = unembed(center(c.float()) * scale)
        return logits.gather(-1, target.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)  # (interp.9)
    embed = read(cache[f"{blocks[0]}.resid_pre"])
    heads, biases, ffns, crosses = [], [], [], []
    for b in blocks:
        attention = model.get_submodule(f"{b}.attention")
        z = cache[f"{b}.attention.z"].float()  # (B, H, N, D)
        w = rearrange(attention.out_proj.weight.float(), "c (h d) -> h d c", h=attention.n_heads)  # (C, H D)
        writes = torch.einsum("bhnd,hdc->hbnc", z, w)  # (H, B, N, C): z_h W_O,h^T, one head at a time
        heads.append(read(writes))
        bias = attention.out_proj.bias
        biases.append(read(bias.float().expand_as(final)) if bias is not None else torch.zeros_like(embed))
        ffns.append(read(cache[f"{b}.ffn_out"]))
        cross = model.get_submodule(b).cross_attention is not None
        crosses.append(read(cache[f"{b}.cross_attn_out"]) if cross else torch.zeros_like(embed))
    norm_bias = torch.zeros_like(embed)
    if shift is not None:
        logits = unembed(shift.float().expand_as(final))
        norm_bias = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return LogitAttribution(embed, torch.stack(heads), torch.stack(biases), torch.stack(ffns), norm_bias,
                            torch.stack(crosses))
