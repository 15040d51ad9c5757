"""SiLU and SwiGLU with hand-written backwards (docs/math/swiglu.md, labels (silu.*), (swiglu.*)).

SiLU (the swish with beta = 1) is x sigma(x), (silu.1); its derivative sigma(x) (1 + x (1 - sigma(x))), (silu.2),
reuses the forward's sigma. SwiGLU multiplies a SiLU-gated branch by a linear one, (swiglu.1), the heart of the
Llama feed-forward (swiglu.4); its backward (swiglu.2)-(swiglu.3) needs silu and silu' of the gate, recomputed from
one sigmoid. Half precision is computed in float32 and cast back.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from minitx.functional._bodies import body, needs_grad, run
from minitx.functional._checks import _check_float_tensor, _check_same
from minitx.functional._softmax import _compute_dtype


def _silu_and_grad(x: torch.Tensor, need_grad: bool):
    """(silu.1) and, when asked, (silu.2) from the same sigma(x): (silu(x), silu'(x) or None)."""
    s = torch.sigmoid(x)                                     # sigma(x), stable at both ends
    y = x * s                                                # (silu.1)
    if not need_grad:
        return y, None
    grad = torch.mul(x, s).neg_().add_(x).add_(1.0).mul_(s)  # (silu.2) sigma (1 + x - x sigma)
    return y, grad


@body("silu.forward")
def _silu_forward(x: torch.Tensor, need_grad: bool):
    """(silu.1)-(silu.2) in the compute dtype; y cast back to x's dtype."""
    y, grad = _silu_and_grad(x.to(_compute_dtype(x.dtype)), need_grad)
    return y.to(x.dtype), grad


class _SiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, need_grad):
        y, grad = run("silu.forward", x, need_grad)
        if grad is not None:
            ctx.save_for_backward(grad)                      # silu'(x), saved in place of x
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (grad,) = ctx.saved_tensors
        return (grad_y.to(grad.dtype) * grad).to(grad_y.dtype), None   # (silu.2) elementwise chain rule


@body("swiglu.forward")
def _swiglu_forward(gate: torch.Tensor, up: torch.Tensor):
    """(swiglu.1) in the compute dtype: silu(gate) * up."""
    dtype = _compute_dtype(gate.dtype)
    silu_gate, _ = _silu_and_grad(gate.to(dtype), False)
    return silu_gate.mul_(up.to(dtype)).to(gate.dtype)


@body("swiglu.backward")
def _swiglu_backward(grad_y: torch.Tensor, gate: torch.Tensor, up: torch.Tensor):
    """(swiglu.2)-(swiglu.3): (g up silu'(gate), g silu(gate)), silu and silu' from one sigmoid."""
    dtype = _compute_dtype(gate.dtype)
    g = grad_y.to(dtype)
    silu_gate, silu_grad = _silu_and_grad(gate.to(dtype), True)
    grad_gate = silu_grad.mul_(up.to(dtype)).mul_(g)         # (swiglu.2)
    grad_up = silu_gate.mul_(g)                              # (swiglu.3)
    return grad_gate.to(grad_y.dtype), grad_up.to(grad_y.dtype)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)                      # the inputs; sigma(gate) is recomputed
        return run("swiglu.forward", gate, up)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        gate, up = ctx.saved_tensors
        return run("swiglu.backward", grad_y, gate, up)      # (swiglu.2)-(swiglu.3)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (swish), x * sigmoid(x), (silu.1); hand-written derivative (silu.2). As `torch.nn.functional.silu`."""
    _check_float_tensor(x, "x")
    if not needs_grad(x):  # inference: the forward (silu.1) alone, no Function
        return run("silu.forward", x, False)[0]
    return _SiLU.apply(x, True)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU, silu(gate) * up, (swiglu.1); hand-written backward (swiglu.2)-(swiglu.3). `gate` and `up` have
    the same shape (the two d_ff-wide projections of the Llama feed-forward, (swiglu.4))."""
    _check_float_tensor(gate, "gate")
    _check_float_tensor(up, "up")
    _check_same(gate, up, "up")
    if up.shape != gate.shape:
        raise ValueError(f"up: expected the shape of gate {tuple(gate.shape)}, got {tuple(up.shape)}")
    if not needs_grad(gate, up):  # inference: the forward (swiglu.1) alone, no Function
        return run("swiglu.forward", gate, up)
    return _SwiGLU.apply(gate, up)
