"""LoRA (Hu et al., 2021): a frozen `nn.Linear` plus a trainable low-rank update, with a hand-written backward.

The math, with the equation labels cited below, is in `docs/math/lora.md`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from minitx.peft.targets import (find_linear_targets, find_modules, freeze_except, parse_targets, set_submodule,
                                 WrappedLinear)


class LoRAFunction(torch.autograd.Function):
    """y = x W^T + b + s (x_d A^T) B^T with x_d = x * mask, and its backward written out by hand.

    Forward is (lora.1); backward is (lora.2) for A, (lora.3) for B, (lora.4) for x, in the row-major batch form:
    with X (T, in) the flattened input and G = dL/dy (T, out),
        dA = s (G B)^T X_d,   dB = s G^T (X_d A^T),   dX = G W + s (G B A) * mask.
    `mask` is the (already 1/(1-p)-scaled) dropout mask, or None; it is reused in backward, never redrawn.
    The frozen base gets dW = G^T X and db = sum_t G only if something asks for them.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling: float, mask):
        # Under autocast every operand runs in the autocast dtype, as nn.Linear's matmuls would; the saved
        # tensors are those copies, so backward multiplies matching dtypes and casts each gradient back.
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype, lora_A.dtype, lora_B.dtype)
        dtype = _autocast_dtype(x)
        if dtype is not None:
            x, weight, lora_A, lora_B = (t.to(dtype) for t in (x, weight, lora_A, lora_B))
            bias = None if bias is None else bias.to(dtype)
            mask = None if mask is None else mask.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            x_d = x if mask is None else x * mask
            u = x_d @ lora_A.T  # (..., in) -> (..., r): the rank-r bottleneck
            # The frozen path is exactly nn.Linear's op, so with B = 0 the output is bit-for-bit the base output.
            y = torch.nn.functional.linear(x, weight, bias) + scaling * (u @ lora_B.T)  # (..., r) -> (..., out)
            # (lora.1)
        ctx.save_for_backward(x, weight, lora_A, lora_B, mask, u)
        ctx.scaling = scaling
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lora_A, lora_B, mask, u = ctx.saved_tensors
        s = ctx.scaling
        g = grad_out.to(x.dtype).reshape(-1, grad_out.shape[-1])  # (..., out) -> (T, out)
        x2 = x.reshape(-1, x.shape[-1])  # (..., in) -> (T, in)
        u2 = u.reshape(-1, u.shape[-1])  # (..., r) -> (T, r)
        m2 = None if mask is None else mask.reshape(-1, mask.shape[-1])  # (..., in) -> (T, in)
        x_d = x2 if m2 is None else x2 * m2
        gb = g @ lora_B  # (T, r): the gradient arriving at the bottleneck
        dx = dw = db = da = dbb = None
        if ctx.needs_input_grad[0]:
            d_lora = s * (gb @ lora_A)  # (T, in): back through A, then through the dropout mask
            if m2 is not None:
                d_lora = d_lora * m2
            dx = (g @ weight + d_lora).reshape(x.shape)  # (T, in) -> (..., in)   (lora.4)
        if ctx.needs_input_grad[1]:
            dw = g.T @ x2
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        if ctx.needs_input_grad[3]:
            da = s * (gb.T @ x_d)  # (lora.2)
        if ctx.needs_input_grad[4]:
            dbb = s * (g.T @ u2)  # (lora.3)
        grads = (dx, dw, db, da, dbb)
        return (*(None if g_ is None else g_.to(t) for g_, t in zip(grads, ctx.dtypes)), None, None)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would run a matmul on `x` in; None outside autocast."""
    device = x.device.type
    if x.is_floating_point() and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


class LoRALinear(WrappedLinear):
    """A frozen `base` Linear plus the low-rank path s * B A, s = alpha / r (alpha / sqrt(r) with rsLoRA) (lora.5).

    `lora_A` (r, in_features) starts kaiming-uniform (a=sqrt(5)) as in PEFT; `lora_B` (out_features, r) starts at
    zero, so a fresh LoRALinear computes exactly `base` (lora.1 with B = 0); the two train r (in + out) parameters
    (lora.7). `merge()` folds s B A into the base weight (lora.6) and the forward then uses the base alone (so A
    and B get no gradient until `unmerge()`).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base: expected an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r: expected an int >= 1, got {r!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0 or not math.isfinite(alpha):
            raise ValueError(f"alpha: expected a finite number > 0, got {alpha!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.base = base
        self.r, self.alpha, self.dropout, self.use_rslora = r, float(alpha), float(dropout), bool(use_rslora)
        self.scaling = self.alpha / (math.sqrt(r) if use_rslora else r)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        for p in base.parameters():
            p.requires_grad_(False)
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, dropout={self.dropout}, "
                f"merged={self.merged}")

    def _dropout_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.training or self.dropout == 0.0:
            return None
        keep = 1.0 - self.dropout
        return torch.empty_like(x).bernoulli_(keep) / keep  # inverted dropout: E[mask] = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            if self.training and torch.is_grad_enabled() and (self.lora_A.requires_grad or self.lora_B.requires_grad):
                # the merged forward never reads A and B: training it would give them no gradient
                raise RuntimeError("LoRALinear: this layer is merged (W holds W + s B A), so lora_A and lora_B "
                                   "would get no gradient; call unmerge() before training (or eval() to infer)")
            return self.base(x)  # W already holds W + s B A (lora.6)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dim {self.in_features}, got shape {tuple(x.shape)}")
        return LoRAFunction.apply(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling,
                                  self._dropout_mask(x))

    def delta_weight(self) -> torch.Tensor:
        """s B A (out, in), computed in float32 and cast to the base weight's dtype (lora.6)."""
        delta = self.scaling * (self.lora_B.detach().float() @ self.lora_A.detach().float())
        return delta.to(self.base.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s B A (lora.6). Refused, weights untouched, if the result would not be finite."""
        if self.merged:
            raise RuntimeError("merge: this LoRALinear is already merged")
        merged = (self.base.weight.float() + self.delta_weight().float()).to(self.base.weight.dtype)
        if not torch.isfinite(merged).all():
            raise ValueError("merge: W + scaling * B @ A is not finite (NaN/inf in lora_A, lora_B or overflow "
                             f"in {self.base.weight.dtype}); weights left unchanged")
        self.base.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s B A: undoes `merge()` up to floating-point rounding."""
        if not self.merged:
            raise RuntimeError("unmerge: this LoRALinear is not merged")
        self.base.weight.copy_((self.base.weight.float() - self.delta_weight().float()).to(self.base.weight.dtype))
        self.merged = False


def apply_lora(model: nn.Module, target_modules, r: int, alpha: float, dropout: float = 0.0,
               use_rslora: bool = False, trainable_modules=()) -> list[str]:
    """Wrap every `nn.Linear` matched by `target_modules` in a `LoRALinear`, in place; return the names wrapped.

    Matching (as PEFT for strings): "q_proj" matches a module named "q_proj" or ending in ".q_proj"; a string
    "re:<regex>" or a compiled `re.Pattern` must `re.fullmatch` the full module name. A pattern that matches no
    Linear raises ValueError. Afterwards only lora_A/lora_B, and the parameters of modules matched by
    `trainable_modules` (same rules, e.g. ("classifier",)), require grad.
    """
    patterns = parse_targets(target_modules, "target_modules")
    if not patterns:  # wrapping nothing would only freeze the whole model
        raise ValueError("target_modules: expected at least one pattern (e.g. ['q_proj', 'v_proj']), got none")
    names = find_linear_targets(model, patterns, "target_modules")
    kept = find_modules(model, trainable_modules, "trainable_modules")  # checked before anything is wrapped
    for name in names:
        set_submodule(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout, use_rslora))
    freeze_except(model, kept, keep=lambda pname: pname.rsplit(".", 1)[-1] in ("lora_A", "lora_B"))
    return names


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRALinear (lora.6) and put its plain base `nn.Linear` back in its place; returns `model`.

    Atomic: every module's merged weight is computed and checked first, so a non-finite one (named in the
    ValueError) leaves the whole model as it was, no module merged."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    merged = {}
    with torch.no_grad():
        for name, module in wrapped:
            if not module.merged:
                weight = (module.base.weight.float() + module.delta_weight().float()).to(module.base.weight.dtype)
                if not torch.isfinite(weight).all():
                    raise ValueError(f"merge_lora: {name or 'model'}: W + scaling * B @ A is not finite (NaN/inf in "
                                     f"lora_A, lora_B, or overflow); no module was merged")
                merged[name] = weight
        for name, module in wrapped:
            if name in merged:
                module.base.weight.copy_(merged[name])
                module.merged = True
    for name, module in wrapped:
        if name == "":
            return module.base
        set_submodule(model, name, module.base)
    return model


def _lora_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters()
            if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B") or p.requires_grad}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fine-tuned state only: every lora_A/lora_B, plus every parameter still trainable (e.g. the modules kept
    with `apply_lora(..., trainable_modules=...)`). Detached clones, keyed by the full parameter name."""
    return {n: p.detach().clone() for n, p in _lora_keys(model).items()}


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strictly load what `lora_state_dict` saved into a model prepared the same way (same `apply_lora` call)."""
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict of tensors, got {type(state).__name__}")
    own = _lora_keys(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise ValueError(f"state: missing key(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        raise ValueError(f"state: unexpected key(s) {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for name, param in own.items():
        value = state[name]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state: key {name!r}: expected a Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"state: key {name!r}: expected a floating-point tensor (a weight), got {value.dtype}")
        if tuple(state[name].shape) != tuple(param.shape):
            raise ValueError(f"state: key {name!r} has shape {tuple(state[name].shape)}, "
                             f"the model expects {tuple(param.shape)}")
    for name, param in own.items():
        param.copy_(state[name])


__all__ = ["LoRAFunction", "LoRALinear", "apply_lora", "merge_lora", "lora_state_dict", "load_lora_state_dict"]
