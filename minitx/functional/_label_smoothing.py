"""Label-smoothed cross-entropy with a hand-written backward (docs/math/label_smoothing.md, (ls.*)).

The original Transformer trains against a softened target: probability 1 - eps on the true token and eps spread
evenly over the whole vocabulary (ls.1), which is `torch.nn.functional.cross_entropy(label_smoothing=eps)`.
The loss needs no (R, V) target matrix: per labelled row it is lse(z) - (1 - eps) z_t - eps mean_v z_v (ls.2),
and its gradient is the softmax minus that same soft target (ls.3). As in `_cross_entropy.py`, only the K
labelled rows are read; ignored rows get a zero gradient (ls.4). `_label_smoothing_textbook` is (ls.1) as
printed, the full target distribution built and dotted with the log-probabilities.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._cross_entropy import IGNORE_INDEX, checked_rows
from minitx.functional._softmax import _compute_dtype


def _label_smoothing_textbook(logits: torch.Tensor, targets: torch.Tensor, smoothing: float,
                              ignore_index: int) -> torch.Tensor:
    """(ls.1) as printed: -sum_v q_v log p_v with q = (1 - eps) e_t + eps / V, averaged over labelled rows."""
    log_probs = torch.log_softmax(logits, dim=-1)                                   # (R, V)
    keep = targets != ignore_index
    q = torch.full_like(log_probs, smoothing / logits.shape[-1])                    # eps / V everywhere
    q.scatter_add_(1, targets.clamp(min=0)[:, None], torch.full_like(log_probs[:, :1], 1 - smoothing))
    return -((q * log_probs).sum(-1) * keep).sum() / keep.sum()


class _LabelSmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, smoothing, ignore_index):
        rows = (targets != ignore_index).nonzero().squeeze(1)                      # (K,) labelled rows
        z = logits.index_select(0, rows).to(_compute_dtype(logits.dtype))         # (R, V) -> (K, V)
        t = targets.index_select(0, rows)                                          # (K,)
        lse = torch.logsumexp(z, dim=-1)                                           # (K,)
        per_row = lse - (1 - smoothing) * z.gather(1, t[:, None]).squeeze(1) - smoothing * z.mean(-1)  # (ls.2)
        loss = per_row.sum() / rows.numel()                                        # 0/0 = nan if K = 0, as torch
        probs = z.sub_(lse[:, None]).exp_()                                        # softmax rows, in place
        ctx.save_for_backward(probs, rows, t)
        ctx.smoothing, ctx.shape, ctx.dtype = smoothing, logits.shape, logits.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        probs, rows, t = ctx.saved_tensors
        scale = grad_loss / max(rows.numel(), 1)
        eps, v = ctx.smoothing, probs.shape[-1]
        grad_rows = (probs - eps / v) * scale                                      # (ls.3): (p - q) g / K
        grad_rows[torch.arange(len(t)), t] -= (1 - eps) * scale
        grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=probs.device)        # (ls.4): ignored rows get 0
        return grad.index_copy_(0, rows, grad_rows.to(ctx.dtype)), None, None, None


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1,
                                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean label-smoothed cross-entropy (ls.1)-(ls.2) over the rows whose target is not `ignore_index`: what
    `torch.nn.functional.cross_entropy(logits, targets, label_smoothing=smoothing)` computes. logits (R, V) or
    (..., V), targets (R,) or (...,); smoothing 0 is plain cross-entropy (ce.1). Backward by hand, (ls.3)-(ls.4)."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing: expected a number in [0, 1], got {smoothing!r}")
    flat_logits, flat_targets = checked_rows(logits, targets, ignore_index)
    return _LabelSmoothedCrossEntropy.apply(flat_logits, flat_targets, float(smoothing), int(ignore_index))
