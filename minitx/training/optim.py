"""The optimizer by hand: AdamW's update (opt.1)-(opt.2), which parameters decay (opt.4), each step's rate (opt.5)-(opt.7).

`minitx.training.loop` builds `AdamW` from `parameter_groups` and sets every group's rate to `lr_at(step)` before each
update, so the whole schedule is a function of the step and a resumed run needs no scheduler state.
Math: docs/math/optimization.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from minitx.training.config import TrainConfig

__all__ = ["AdamW", "lr_at", "parameter_groups"]


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (1-based): warmup (opt.5), then linear (opt.6) or cosine (opt.7)
    decay from `lr` to `min_lr_ratio * lr` at `max_steps`, or the original Transformer's lr sqrt(W / step)
    (tf.8). Pure: the schedule's whole state is the step."""
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")
    peak, warmup, total = config.lr, config.warmup_steps, config.max_steps
    if step <= warmup and warmup > 0:
        return peak * step / warmup
    if config.schedule == "constant":
        return peak
    if config.schedule == "noam":  # (tf.8): Vaswani et al.'s inverse square root, peaking at lr after warmup
        return peak * math.sqrt(max(warmup, 1) / max(step, 1))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    r = config.min_lr_ratio
    if config.schedule == "linear":
        return peak * (1.0 - (1.0 - r) * progress)
    return peak * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups by the rule (opt.4): decay (opt.2) on every trainable tensor with 2+ dimensions (linear
    weights, embedding tables), none on 1-D ones (biases, LayerNorm scales and shifts, the embeddings'
    LayerNorm). Frozen parameters (requires_grad=False, as under LoRA or BitFit) are left out entirely."""
    decay, no_decay = {}, {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay)[name] = p
    if not decay and not no_decay:
        raise ValueError("model: expected at least one parameter with requires_grad=True, found none")
    groups = [{"params": list(d.values()), "param_names": list(d), "weight_decay": wd}
              for d, wd in ((decay, weight_decay), (no_decay, 0.0)) if d]
    return groups


class AdamW:
    """AdamW (opt.1)-(opt.2) written out, for plain tensors on any device.

    It does torch.optim.AdamW's arithmetic in torch's own order, so the two agree bit for bit, and its
    `state_dict` has torch's layout, so checkpoints load into either (tests/test_adamw.py). Two paths, as torch:
    `foreach=False`, a loop over the tensors (torch's single-tensor path); `foreach=True`, the same update as
    one multi-tensor `torch._foreach_*` op per line of the equations over each (device, dtype) group, so the
    Python-side cost per step no longer grows with the number of tensors (torch's `_multi_tensor_adam`).
    `foreach=None` (the default) takes the multi-tensor path, as torch does on CUDA; on a CPU it is faster too
    (docs/math/optimization.md), in chunks of FOREACH_CHUNK_NUMEL elements that stay in cache across its ops
    and keep its extra memory that of the single-tensor path. Where they agree
    (docs/math/optimization.md, "One tensor at a time or all at once"): on a CPU torch's foreach ops run the
    single-tensor op per tensor, so both paths give the same bits; on CUDA the single-tensor path divides by
    √(1 − β2^t) as a multiplication by its reciprocal (ATen's CUDA division by a host scalar) while the
    multi-tensor path divides, so the two may differ in the last bit, each still equal to torch's same path.
    In bfloat16/float16 on a CPU torch's own foreach path differs from its single-tensor one (`_foreach_mul_`
    rounds 1 − ηλ and β2 to the tensor's dtype first); minitx's multi-tensor path keeps the single-tensor bits.
    It is not a `torch.optim.Optimizer`: that base class imports torch._dynamo
    when its first parameter group is added, ~145 MiB of resident memory that a CPU training run never uses.
    Per step t and tensor θ with gradient g (tensors without a gradient are skipped, as torch skips them):

        θ ← θ (1 − ηλ)                                    decoupled decay, if λ ≠ 0      (opt.2)
        m ← m + (1 − β1)(g − m)       = β1 m + (1 − β1) g                               (opt.1)
        v ← β2 v + (1 − β2) g²                                                          (opt.1)
        θ ← θ − η/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)  = θ − η m̂ / (√v̂ + ε)         (opt.2)
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 foreach: bool | None = None):
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                         "foreach": foreach}
        _check_hyperparameters(self.defaults, "AdamW")
        groups = list(params)
        if not groups:
            raise ValueError("params: expected at least one tensor or parameter group, got none")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        seen: set[int] = set()
        for i, group in enumerate(groups):
            group = {**self.defaults, **group, "params": list(group["params"])}
            group["betas"] = tuple(group["betas"])
            _check_hyperparameters(group, f"params[{i}]")
            for p in group["params"]:
                if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                    raise TypeError(f"params[{i}]: expected floating-point tensors, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"params[{i}]: a tensor appears in more than one parameter group")
                seen.add(id(p))
            self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every tensor that has a gradient; returns closure() (re-evaluated with grad) if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW: sparse gradients are not supported")
                if p not in self.state:  # torch's lazy initialisation: step on the CPU as float32, moments zero
                    self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                     "exp_avg_sq": torch.zeros_like(p)}
            if group["foreach"] is False:
                self._single_tensor(group, params)
            else:
                for chunk in _foreach_chunks(params):
                    self._multi_tensor(group, chunk)
        return loss

    def _single_tensor(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """(opt.1)-(opt.2) one tensor at a time, in torch's order (its `_single_tensor_adam`)."""
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            state["step"] += 1
            t = state["step"].item()
            if decay != 0:
                p.mul_(1 - lr * decay)
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            step_size = lr / (1 - beta1 ** t)
            denom = (state["exp_avg_sq"].sqrt() / (1 - beta2 ** t) ** 0.5).add_(eps)
            p.addcdiv_(state["exp_avg"], denom, value=-step_size)

    def _multi_tensor(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """(opt.1)-(opt.2) for tensors of one device and dtype, each line one foreach op over all of them, in
        the order of torch's `_multi_tensor_adam` (so each tensor sees the single-tensor path's operations)."""
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        steps = [s["step"] for s in states]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_add_(steps, 1.0)
        if decay != 0:
            torch._foreach_mul_(params, _factor(1 - lr * decay, params[0]))
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, _factor(beta2, params[0]))
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        ts = [s.item() for s in steps]  # host floats: the bias corrections are Python scalars, as in torch
        step_sizes = [(lr / (1 - beta1 ** t)) * -1 for t in ts]
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, [(1 - beta2 ** t) ** 0.5 for t in ts])
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: tensors numbered in group order, state keyed by number, groups listing them."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        groups = [{**_TORCH_GROUP_FLAGS, **{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from `state_dict()` or from torch.optim.AdamW's; the groups must match in number and size."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("state_dict: expected a dict with 'state' and 'param_groups' (an optimizer's state)")
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"state_dict: has {len(saved)} parameter groups, this optimizer {len(self.param_groups)}")
        params = {}
        for i, (mine, theirs) in enumerate(zip(self.param_groups, saved)):
            if len(theirs["params"]) != len(mine["params"]):
                raise ValueError(f"state_dict: group {i} has {len(theirs['params'])} tensors, this optimizer's "
                                 f"{len(mine['params'])}")
            if theirs.get("amsgrad") or theirs.get("maximize"):
                raise ValueError(f"state_dict: group {i} is AMSGrad or maximizing, which minitx's AdamW is not")
            params.update(zip(theirs["params"], mine["params"]))
        state = {}
        for key, s in state_dict["state"].items():
            p = params[key]
            moments = {k: s[k].to(device=p.device, dtype=p.dtype).clone() for k in ("exp_avg", "exp_avg_sq")}
            if any(m.shape != p.shape for m in moments.values()):
                raise ValueError(f"state_dict: tensor {key}'s moments have shape {tuple(s['exp_avg'].shape)}, "
                                 f"the parameter {tuple(p.shape)}")
            state[p] = {"step": torch.as_tensor(float(s["step"]), dtype=torch.float32).clone(), **moments}
        for mine, theirs in zip(self.param_groups, saved):
            mine.update({k: (tuple(v) if k == "betas" else v) for k, v in theirs.items()
                         if k in self.defaults or k == "param_names"})
        self.state = state

    def __repr__(self) -> str:
        return f"AdamW({len(self.param_groups)} groups, {self.defaults})"


# Keys torch.optim.AdamW keeps in every group, so a state_dict written here loads into torch's unchanged.
_TORCH_GROUP_FLAGS = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                      "differentiable": False, "fused": None, "decoupled_weight_decay": True}


# The multi-tensor path runs seven ops, each over a whole chunk: chunks of at most this many elements (512 KiB per
# float32 list) keep a chunk's parameters, gradients and moments in cache from one op to the next (one chunk of a
# whole nanoGPT-size model streams it through memory seven times: 1.3x the loop's time on a CPU, where 2^17 gives
# 0.9x), and the step's extra memory (the denominators) that of one chunk or the largest tensor, as the loop's.
FOREACH_CHUNK_NUMEL = 1 << 17


def _factor(value: float, like: torch.Tensor) -> float | torch.Tensor:
    """The factor of a `_foreach_mul_`. On a CPU a Python number there is first rounded to the tensors' dtype
    (in bfloat16 1 − ηλ = 0.97 becomes 0.96875, β2 = 0.999 becomes 0.99609375), where `Tensor.mul_` keeps it in
    float32: a float64 0-dim tensor instead gives `Tensor.mul_`'s bits. Elsewhere the number, as torch passes it."""
    return torch.tensor(value, dtype=torch.float64) if like.device.type == "cpu" else value


def _foreach_chunks(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """`params` split by (device, dtype) (a foreach op takes tensors of one kind), then into runs of at most
    FOREACH_CHUNK_NUMEL elements (a larger tensor alone), order kept."""
    kinds: dict[tuple[torch.device, torch.dtype], list[list[torch.Tensor]]] = {}
    sizes: dict[tuple[torch.device, torch.dtype], int] = {}
    for p in params:
        key, n = (p.device, p.dtype), p.numel()
        chunks = kinds.setdefault(key, [[]])
        if chunks[-1] and sizes[key] + n > FOREACH_CHUNK_NUMEL:
            chunks.append([])
            sizes[key] = 0
        chunks[-1].append(p)
        sizes[key] = sizes.get(key, 0) + n
    return [chunk for chunks in kinds.values() for chunk in chunks]


def _check_hyperparameters(h: dict[str, Any], where: str) -> None:
    lr, betas, eps, decay = h["lr"], h["betas"], h["eps"], h["weight_decay"]
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr >= 0.0:
        raise ValueError(f"{where}: lr must be a number >= 0, got {lr!r}")
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"{where}: betas must be two numbers in [0, 1), got {betas!r}")
    if not isinstance(eps, (int, float)) or not eps >= 0.0:
        raise ValueError(f"{where}: eps must be a number >= 0, got {eps!r}")
    if not isinstance(decay, (int, float)) or not decay >= 0.0:
        raise ValueError(f"{where}: weight_decay must be a number >= 0, got {decay!r}")
    if h["foreach"] not in (None, True, False):
        raise ValueError(f"{where}: foreach must be True, False or None, got {h['foreach']!r}")
