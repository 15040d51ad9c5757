"""Conformance checks for the pointwise and row-wise math: softmax, norms, activations, losses.

Each check draws a case (shape, dtype, magnitude, flags and a seed), builds float64 inputs from the seed and
calls `cases.check_function`: the learner's values and gradients against minitx's reference at float64, within
twice the reference's own error at the learner's precision plus a floor (attn.13).
"""

from __future__ import annotations

import torch

from minitx.conformance import references as R
from minitx.conformance.cases import Adapter, case, check_function, randn

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = (F32, F32, F16, BF16)  # float32 first: Hypothesis shrinks toward it


def _shape(st, min_dims=1, max_dims=3, max_size=7):
    return st.lists(st.integers(1, max_size), min_size=min_dims, max_size=max_dims).map(tuple)


# ------------------------------------------------------------------------------------------------ softmax

def _softmax_cases(st):
    return st.builds(lambda shape, pick, scale, dtype, seed: case(shape=shape, dim=pick % len(shape) - len(shape),
                                                                  scale=scale, dtype=dtype, seed=seed),
                     _shape(st), st.integers(0, 2), st.sampled_from([1.0, 10.0, 1000.0]), st.sampled_from(DTYPES),
                     st.integers(0, 2**16))


def _softmax_run(fn, c):
    x = randn(c.shape, c.generator(), scale=c.scale)
    if c.dtype in (F16, BF16):
        x = x.clamp(-200, 200)  # half precision: keep exp(x - max) meaningful, not only 0 and 1
    hint = ("exp(x - max) / sum over `dim`: without the max, exp overflows to inf for large logits"
            if c.scale > 100 else "normalise over the `dim` argument (keepdim=True), not a fixed axis")
    check_function("softmax", fn, R.softmax, [x], c.dtype, differentiable=(0,), kwargs={"dim": c.dim},
                   value=("softmax.1", hint), grads={0: ("softmax.3", "dx = y * (g - sum(g * y, dim))")},
                   seed=c.seed)


SOFTMAX = Adapter("softmax", "softmax", "softmax(x, dim=-1)", 1, ("dim",), _softmax_cases,
                  (case(shape=(3, 5), dim=-1, scale=1000.0, dtype=F32, seed=1),
                   case(shape=(4, 3, 2), dim=-3, scale=1.0, dtype=F32, seed=2)), _softmax_run)


# --------------------------------------------------------------------------------------------- layer norm

def _norm_cases(st, eps_values):
    return st.builds(lambda shape, scale, shift, eps, dtype, seed: case(shape=shape, scale=scale, shift=shift,
                                                                        eps=eps, dtype=dtype, seed=seed),
                     _shape(st, max_size=9), st.sampled_from([1.0, 0.1, 10.0]), st.sampled_from([0.0, 5.0]),
                     st.sampled_from(eps_values), st.sampled_from(DTYPES), st.integers(0, 2**16))


def _norm_inputs(c):
    g = c.generator()
    x = randn(c.shape, g, scale=c.scale) + c.shift
    return x, randn(c.shape[-1:], g) + 1.0, randn(c.shape[-1:], g)


def _layer_norm_run(fn, c):
    x, w, b = _norm_inputs(c)
    check_function("layer_norm", fn, R.layer_norm, [x, w, b], c.dtype, differentiable=(0, 1, 2),
                   kwargs={"eps": c.eps},
                   value=("ln.1-ln.4", "mean and *biased* variance (divide by C) over the last dim, eps inside "
                                       "the square root, then * weight + bias; use the eps passed in"),
                   grads={0: ("ln.6", "keep the paths through the mean and the variance (do not detach them)"),
                          1: ("ln.7", "d weight = sum over rows of g * x_hat"),
                          2: ("ln.8", "d bias = sum over rows of g")}, seed=c.seed)


LAYER_NORM = Adapter("layer_norm", "layer_norm", "layer_norm(x, weight, bias, eps=1e-5)", 3, ("eps",),
                     lambda st: _norm_cases(st, [1e-5, 0.1]),
                     (case(shape=(2, 1), scale=1.0, shift=0.0, eps=1e-5, dtype=F32, seed=3),
                      case(shape=(3, 6), scale=0.1, shift=5.0, eps=0.1, dtype=F32, seed=4),
                      case(shape=(4, 5), scale=1.0, shift=0.0, eps=1e-5, dtype=F32, seed=5)), _layer_norm_run)


def _rms_norm_run(fn, c):
    x, w, _ = _norm_inputs(c)
    check_function("rms_norm", fn, R.rms_norm, [x, w], c.dtype, differentiable=(0, 1), kwargs={"eps": c.eps},
                   value=("rmsnorm.1", "x / sqrt(mean(x^2, last dim) + eps) * weight: no mean subtracted, eps "
                                       "inside the root, the mean (not the sum) of squares"),
                   grads={0: ("rmsnorm.3", "keep the path through the root mean square (do not detach it)"),
                          1: ("rmsnorm.4", "d weight = sum over rows of g * x / rms")}, seed=c.seed)


RMS_NORM = Adapter("rms_norm", "rms_norm", "rms_norm(x, weight, eps=1e-6)", 2, ("eps",),
                   lambda st: _norm_cases(st, [1e-6, 0.1]),
                   (case(shape=(3, 6), scale=0.1, shift=5.0, eps=0.1, dtype=F32, seed=6),
                    case(shape=(2, 5), scale=1.0, shift=0.0, eps=1e-6, dtype=F32, seed=7)), _rms_norm_run)


# ------------------------------------------------------------------------------------------- activations

def _pointwise_cases(st):
    return st.builds(lambda shape, scale, dtype, seed: case(shape=shape, scale=scale, dtype=dtype, seed=seed),
                     _shape(st, max_size=9), st.sampled_from([1.0, 3.0]), st.sampled_from(DTYPES),
                     st.integers(0, 2**16))


def _pointwise(name, reference, value, grad):
    def run(fn, c):
        x = randn(c.shape, c.generator(), scale=c.scale)
        check_function(name, fn, reference, [x], c.dtype, differentiable=(0,), kwargs={}, value=value,
                       grads={0: grad}, seed=c.seed)
    return run


GELU = Adapter("gelu", "gelu", "gelu(x)", 1, (), _pointwise_cases,
               (case(shape=(64,), scale=1.0, dtype=F32, seed=8),),
               _pointwise("gelu", R.gelu, ("gelu.1", "the exact form x * Phi(x) = x * (1 + erf(x / sqrt(2))) / 2, "
                                                     "not the tanh or sigmoid approximation"),
                          ("gelu.2", "d/dx = Phi(x) + x * phi(x)")))
SILU = Adapter("silu", "silu", "silu(x)", 1, (), _pointwise_cases, (case(shape=(64,), scale=3.0, dtype=F32, seed=9),),
               _pointwise("silu", R.silu, ("silu.1", "silu(x) = x * sigmoid(x)"),
                          ("silu.2", "d/dx = sigmoid(x) * (1 + x * (1 - sigmoid(x)))")))


def _swiglu_cases(st):
    return st.builds(lambda lead, c_, f, dtype, seed: case(lead=lead, C=c_, F=f, dtype=dtype, seed=seed),
                     _shape(st, 1, 2, 4), st.integers(1, 6), st.integers(1, 7), st.sampled_from(DTYPES),
                     st.integers(0, 2**16))


def _swiglu_run(fn, c):
    g = c.generator()
    x = randn(c.lead + (c.C,), g)
    wg, wu, wd = randn((c.F, c.C), g), randn((c.F, c.C), g), randn((c.C, c.F), g)
    check_function("swiglu", fn, R.swiglu, [x, wg, wu, wd], c.dtype, differentiable=(0, 1, 2, 3), kwargs={},
                   value=("swiglu.1", "(silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T: SiLU on the gate only, "
                                      "weights in nn.Linear's (out, in) layout"),
                   grads={i: ("swiglu.2-swiglu.3", "let autograd see every product (no detach)") for i in range(4)},
                   seed=c.seed)


SWIGLU = Adapter("swiglu", "swiglu", "swiglu(x, w_gate, w_up, w_down)", 4, (), _swiglu_cases,
                 (case(lead=(2, 3), C=4, F=6, dtype=F32, seed=10),), _swiglu_run)


# ---------------------------------------------------------------------------------------------- losses

def _ce_cases(st):
    return st.builds(lambda r, v, scale, ignore, drop, seed: case(R=r, V=v, scale=scale, ignore_index=ignore,
                                                                 ignored=drop, dtype=F32, seed=seed),
                     st.integers(1, 8), st.integers(2, 9), st.sampled_from([1.0, 10.0, 1e4]),
                     st.sampled_from([-100, -1]), st.sampled_from([0.0, 0.4]), st.integers(0, 2**16))


def _ce_run(fn, c):
    g = c.generator()
    logits = randn((c.R, c.V), g, scale=c.scale)
    targets = torch.randint(0, c.V, (c.R,), generator=g)
    drop = torch.rand(c.R, generator=g) < c.ignored
    drop[0] = False  # at least one labelled row
    targets[drop] = c.ignore_index
    hint = ("log-sum-exp with the max subtracted: exp overflows for large logits" if c.scale > 100 else
            "mean over the rows whose target is not ignore_index (the one passed in), of logsumexp(z) - z_target")
    check_function("cross_entropy", fn, R.cross_entropy, [logits, targets], c.dtype, differentiable=(0,),
                   kwargs={"ignore_index": c.ignore_index}, value=("ce.1", hint),
                   grads={0: ("ce.2", "(softmax(z) - one_hot(t)) / K on labelled rows, 0 on ignored rows")},
                   seed=c.seed)


CROSS_ENTROPY = Adapter("cross_entropy", "cross_entropy", "cross_entropy(logits, targets, ignore_index=-100)", 2,
                        ("ignore_index",), _ce_cases,
                        (case(R=6, V=5, scale=1e4, ignore_index=-100, ignored=0.0, dtype=F32, seed=11),
                         case(R=8, V=4, scale=1.0, ignore_index=-1, ignored=0.4, dtype=F32, seed=12)), _ce_run)


def _lm_cases(st):
    return st.builds(lambda b, n, v, scale, seed: case(B=b, N=n, V=v, scale=scale, dtype=F32, seed=seed),
                     st.integers(1, 3), st.integers(2, 6), st.integers(2, 9), st.sampled_from([1.0, 10.0]),
                     st.integers(0, 2**16))


def _lm_run(fn, c):
    g = c.generator()
    logits = randn((c.B, c.N, c.V), g, scale=c.scale)
    ids = torch.randint(0, c.V, (c.B, c.N), generator=g)
    check_function("causal_lm_loss", fn, R.causal_lm_loss, [logits, ids], c.dtype, differentiable=(0,), kwargs={},
                   value=("dec.4", "shift: logits[:, :-1] predict ids[:, 1:]; mean over the B * (N - 1) pairs"),
                   grads={0: ("dec.4", "the last position has no target: its logits get zero gradient")},
                   seed=c.seed)


CAUSAL_LM_LOSS = Adapter("causal_lm_loss", "causal_lm_loss", "causal_lm_loss(logits, ids)", 2, (), _lm_cases,
                         (case(B=2, N=5, V=7, scale=1.0, dtype=F32, seed=13),), _lm_run)

__all__ = ["SOFTMAX", "LAYER_NORM", "RMS_NORM", "GELU", "SILU", "SWIGLU", "CROSS_ENTROPY", "CAUSAL_LM_LOSS"]
