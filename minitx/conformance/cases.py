"""What every conformance check shares: the failure it raises, the accuracy rule, inputs made from a seed.

A check compares the learner's function with minitx's reference on one drawn *case* (sizes, flags, a seed for
the tensors). Values and gradients are held to FlashAttention's rule, the one minitx holds its own backends to
(attn.13): the error against a float64 reference may be at most twice the error of the reference itself run at
the same precision, plus a floor that grows with the values' magnitude (FLOOR below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The floor of the accuracy rule, per dtype, times max(1, largest reference value): float32 round-off of a few
# dozen operations, and one or two units in the last place of a half-precision result.
FLOOR = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
INSTALL_HINT = "pip install 'minitx[check]'"


class Mismatch(AssertionError):
    """One way an adapter breaks its contract: what differs, where, the equation it breaks, a hint.

    `case` is filled in by the runner with the input that showed it (the smallest Hypothesis found)."""

    def __init__(self, what: str, label: str, hint: str):
        super().__init__(what)
        self.what, self.label, self.hint = what, label, hint
        self.case: str | None = None


def require_hypothesis():
    """Hypothesis draws the inputs; it is an optional dependency (the `check` extra), imported on first use."""
    try:
        import hypothesis
    except ImportError as e:
        raise ImportError(f"minitx check needs Hypothesis, which is not installed: {INSTALL_HINT}") from e
    return hypothesis


@dataclass(frozen=True)
class Case:
    """One drawn input: named sizes and flags, and the seed its tensors are made from."""
    fields: tuple[tuple[str, object], ...]

    def __getattr__(self, name):
        for key, value in self.fields:
            if key == name:
                return value
        raise AttributeError(name)

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed) * 7919 + salt)

    def __str__(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self.fields)


def case(**fields) -> Case:
    return Case(tuple(fields.items()))


def _short(v) -> str:
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    return repr(v)


def randn(shape, g: torch.Generator, dtype=torch.float64, scale: float = 1.0) -> torch.Tensor:
    """Standard normal values times `scale`, drawn in float64 and rounded once to `dtype`."""
    return (torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale).to(dtype)


def call(name: str, fn, *args, **kwargs):
    """Run the learner's function; an exception inside it is a failure of that adapter, reported as one."""
    try:
        return fn(*args, **kwargs)
    except Mismatch:
        raise
    except Exception as e:  # noqa: BLE001 (any error in the learner's code is that adapter's failure)
        raise Mismatch(f"{name} raised {type(e).__name__}: {' '.join(str(e).split())[:200]}", "",
                       "it must accept every input the contract allows (shapes, masks, dtypes)") from None


def as_tensor(name: str, out, shape, dtype) -> torch.Tensor:
    """The learner's output must be a tensor of the contract's shape and the input's dtype."""
    if not isinstance(out, torch.Tensor):
        raise Mismatch(f"{name} returned {type(out).__name__}, expected a Tensor", "", "return a torch.Tensor")
    if tuple(out.shape) != tuple(shape):
        raise Mismatch(f"{name} returned shape {tuple(out.shape)}, expected {tuple(shape)}", "",
                       "check which dim you reduce over and the order of transposes")
    if out.dtype != dtype:
        raise Mismatch(f"{name} returned dtype {_short(out.dtype)}, expected {_short(dtype)} (the input's)", "",
                       "compute in float32 if you like, but cast the result back to the input's dtype")
    return out


def compare(what: str, got: torch.Tensor, ref64: torch.Tensor, ref_same: torch.Tensor | None, dtype: torch.dtype,
            label: str, hint: str) -> None:
    """Raise Mismatch unless max|got - ref64| <= 2 max|ref_same - ref64| + FLOOR[dtype] max(1, max|ref64|)."""
    got64, ref64 = got.detach().to(torch.float64), ref64.detach().to(torch.float64)
    bad = torch.isfinite(ref64) & ~torch.isfinite(got64)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise Mismatch(f"{what}: {got64[where].item()} at index {where} where the reference is "
                       f"{ref64[where].item():.6g}", label, hint)
    err = (got64 - ref64).abs().nan_to_num(nan=math.inf)
    err_ref = 0.0 if ref_same is None else float((ref_same.detach().to(torch.float64) - ref64).abs().max())
    magnitude = float(ref64.abs().max()) if ref64.numel() else 0.0
    tol = 2.0 * err_ref + FLOOR[dtype] * max(1.0, magnitude)
    if err.numel() and float(err.max()) > tol:
        where = tuple(int(i) for i in (err == err.max()).nonzero()[0])
        raise Mismatch(f"{what} differ: max error {float(err.max()):.3g} at index {where} (got "
                       f"{got64[where].item():.6g}, expected {ref64[where].item():.6g}; tolerance {tol:.2g})",
                       label, hint)


def grads_of(name: str, inputs: list[torch.Tensor], out: torch.Tensor, upstream: torch.Tensor) -> list:
    """d(sum(out * upstream)) / d(inputs) through the learner's graph; a missing one is a failure."""
    if not out.requires_grad:
        raise Mismatch(f"{name}: the output carries no gradient (requires_grad=False)", "",
                       "do not detach, use .data, .item() or numpy inside the function")
    try:
        grads = torch.autograd.grad(out, inputs, upstream, allow_unused=True)
    except Exception as e:  # noqa: BLE001 (a custom backward of the learner's that fails)
        raise Mismatch(f"{name}: backward raised {type(e).__name__}: {' '.join(str(e).split())[:200]}", "",
                       "if you wrote a backward, check the shapes it returns") from None
    for g, x in zip(grads, inputs):
        if g is None:
            raise Mismatch(f"{name}: no gradient reached an input of shape {tuple(x.shape)}", "",
                           "do not detach an input or build its contribution outside autograd")
    return list(grads)


def close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> bool:
    """Loosely equal (10x the floor): used only to name which known mistake a wrong output matches."""
    got64, ref64 = got.detach().to(torch.float64), ref.detach().to(torch.float64)
    if got64.shape != ref64.shape or not torch.isfinite(got64).all():
        return False
    scale = max(1.0, float(ref64.abs().max())) if ref64.numel() else 1.0
    return float((got64 - ref64).abs().max()) <= 10 * FLOOR[dtype] * scale if ref64.numel() else True


def check_function(name: str, user, reference, inputs: list[torch.Tensor], dtype: torch.dtype, *,
                   differentiable: tuple[int, ...], kwargs: dict, value: tuple[str, str],
                   grads: dict[int, tuple[str, str]], seed: int, shape=None, explain=None) -> None:
    """Values, then gradients, of user(*inputs, **kwargs) against reference at float64 and at `dtype`.

    `inputs` are float64 masters (integer tensors pass through); `differentiable` indexes the ones that get a
    gradient; `value` and each `grads[i]` are (label, hint); `explain(got, inputs_at_dtype)` may return a better
    (label, hint) for a wrong value, e.g. which known mistake the output matches.
    """
    def at(d, requires_grad):
        out = []
        for i, t in enumerate(inputs):
            if isinstance(t, torch.Tensor):  # ints (n_heads), floats (alpha) and None pass as they are
                t = t.to(d) if t.is_floating_point() else t.clone()
            out.append(t.requires_grad_(True) if requires_grad and i in differentiable else t)
        return out

    mine, ref64_in, ref_in = at(dtype, True), at(torch.float64, True), at(dtype, True)
    ref64, ref_same = reference(*ref64_in, **kwargs), reference(*ref_in, **kwargs)
    got = as_tensor(name, call(name, user, *mine, **kwargs), ref64.shape if shape is None else shape, dtype)
    try:
        compare("values", got, ref64, ref_same, dtype, *value)
    except Mismatch as m:
        if explain is not None:
            try:
                better = explain(got.detach(), [t.detach() if isinstance(t, torch.Tensor) else t
                                                for t in at(dtype, False)])
            except Exception:  # noqa: BLE001 (naming the mistake is a courtesy; the mismatch stands without it)
                better = None
            if better is not None:
                m.label, m.hint = better
        raise
    if not differentiable:
        return
    upstream64 = randn(ref64.shape, torch.Generator().manual_seed(seed + 1))
    wanted = [mine[i] for i in differentiable]
    user_grads = grads_of(name, wanted, got, upstream64.to(dtype))
    g64 = torch.autograd.grad(ref64, [ref64_in[i] for i in differentiable], upstream64, allow_unused=True)
    g_same = torch.autograd.grad(ref_same, [ref_in[i] for i in differentiable], upstream64.to(ref_same.dtype),
                                 allow_unused=True)
    for i, mine_g, r64, rs in zip(differentiable, user_grads, g64, g_same):
        r64 = torch.zeros_like(inputs[i]) if r64 is None else r64
        label, hint = grads[i]
        compare(f"gradients of input {i + 1} ({tuple(inputs[i].shape)})", mine_g, r64, rs, dtype, label, hint)


@dataclass(frozen=True)
class Adapter:
    """One row of the contract: the function a learner writes and how it is checked.

    `call` is the signature as the user sees it (printed on a usage error); `positional` and `keywords` are what
    the check passes, so `inspect.signature(fn).bind` proves the function can take them. `cases(st)` returns a
    Hypothesis strategy of Case; `edges` always run first (fully masked rows, large logits, odd sizes); `run(fn,
    case)` raises Mismatch.
    """
    name: str
    function: str
    call: str
    positional: int
    keywords: tuple[str, ...]
    cases: object
    edges: tuple[Case, ...]
    run: object
    max_examples: int | None = None  # a statistical check draws many samples per case: it needs fewer cases
