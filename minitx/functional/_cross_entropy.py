"""Cross-entropy over the labelled rows, with a hand-written backward (docs/math/cross_entropy.md, (ce.*)).

`_cross_entropy_textbook` is (ce.1) as printed, over every row, with -100 rows weighted 0. The Function runs the
fast form (ce.3): only the K labelled rows are read, in the forward (log-sum-exp, (ce.1)) and in the backward
(softmax minus one-hot, (ce.2)), so a full (R, V) log-softmax is never built; the gradient is one zero buffer
with K rows written into it. For a full MLM head (every position's logits, ~15% labelled) that is ~1/7 of the
work and two (R, V) buffers fewer than `torch.nn.functional.cross_entropy`. tests/test_cross_entropy.py proves
the forms equal (values, gradients, gradcheck in float64).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._checks import _check_float_tensor
from minitx.functional._softmax import _compute_dtype

IGNORE_INDEX = -100  # label of positions that carry no loss (as in PyTorch's cross_entropy and HF)


def _cross_entropy_textbook(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """(ce.1) as printed: mean over labelled rows of log sum_v exp(z_v) - z_t, every row computed."""
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)       # (R, V), every row
    keep = targets != ignore_index
    picked = log_probs.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)   # (R,)
    return -(picked * keep).sum() / keep.sum()


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        rows = (targets != ignore_index).nonzero().squeeze(1)                # (K,) labelled rows
        z = logits.index_select(0, rows).to(_compute_dtype(logits.dtype))   # (R, V) -> (K, V), fp16/bf16 -> fp32
        t = targets.index_select(0, rows)                                    # (K,)
        lse = torch.logsumexp(z, dim=-1)                                     # (K,)
        loss = (lse - z.gather(1, t[:, None]).squeeze(1)).sum() / rows.numel()   # (ce.1); 0/0 = nan if K = 0
        probs = z.sub_(lse[:, None]).exp_()                                  # softmax rows, in place (ce.2)
        ctx.save_for_backward(probs, rows, t)
        ctx.shape, ctx.dtype = logits.shape, logits.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        probs, rows, t = ctx.saved_tensors
        scale = grad_loss / max(rows.numel(), 1)
        grad_rows = probs * scale                                            # (ce.2): (p - e_t) / K, times g
        grad_rows[torch.arange(len(t)), t] -= scale
        grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=probs.device)  # (ce.3): unlabelled rows get 0
        return grad.index_copy_(0, rows, grad_rows.to(ctx.dtype)), None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy (ce.1) over the rows whose target is not `ignore_index`: logits (R, V) or (..., V)
    with targets (R,) or (...,); half-precision logits are read in float32 and give a float32 loss (as torch's
    loss under autocast). Backward by hand, (ce.2)-(ce.3). No labelled row: nan, as torch's."""
    flat_logits, flat_targets = checked_rows(logits, targets, ignore_index)
    return _CrossEntropy.apply(flat_logits, flat_targets, int(ignore_index))


def checked_rows(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (..., V) and targets (...,) checked (float logits, int64 targets in [0, V) or ignore_index) and
    flattened to rows: (R, V), (R,). The door of every cross-entropy here (ce.1, ls.1)."""
    _check_float_tensor(logits, "logits")
    if not isinstance(targets, torch.Tensor) or targets.dtype != torch.long:
        raise TypeError(f"targets: expected an int64 tensor, got "
                        f"{targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__}")
    if logits.dim() < 1 or targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets: expected shape {tuple(logits.shape[:-1])} (logits without the last dim), "
                         f"got {tuple(targets.shape)}")
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # (..., V) -> (R, V)
    bad = (flat_targets != ignore_index) & ((flat_targets < 0) | (flat_targets >= logits.shape[-1]))
    if bool(bad.any()):
        raise ValueError(f"targets: expected ids in [0, {logits.shape[-1]}) or {ignore_index}, got "
                         f"{int(flat_targets[bad][0])}")
    return flat_logits, flat_targets
