"""Which modules a PEFT method touches: name patterns, freezing everything else, and counting what trains.

A pattern is either a plain string, matched as PEFT does (the module's full name equals it or ends with
"." + it, so "q_proj" finds "encoder.layers.0.attention.q_proj"), or a regular expression that must
`re.fullmatch` the full name, given as a compiled `re.Pattern` or as a string "re:<regex>".
"""

from __future__ import annotations

import re
from typing import Callable

from torch import nn

Pattern = str | re.Pattern


class WrappedLinear(nn.Module):
    """A PEFT wrapper around a frozen `base` nn.Linear (LoRALinear, AdapterLinear): its base is not a target again."""

    base: nn.Linear


def parse_targets(patterns, arg: str) -> list[Pattern]:
    """Normalise one pattern or an iterable of them; "re:..." strings become compiled patterns."""
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    try:
        patterns = list(patterns)
    except TypeError:
        raise TypeError(f"{arg}: expected a name, a regex or a sequence of them, got {type(patterns).__name__}")
    out: list[Pattern] = []
    for p in patterns:
        if isinstance(p, re.Pattern):
            out.append(p)
        elif isinstance(p, str) and p.startswith("re:"):
            try:
                out.append(re.compile(p[3:]))
            except re.error as e:
                raise ValueError(f"{arg}: pattern {p!r} is not a valid regex ({e})") from None
        elif isinstance(p, str) and p:
            out.append(p)
        else:
            raise TypeError(f"{arg}: expected non-empty str or re.Pattern entries, got {p!r}")
    return out


def matches(name: str, pattern: Pattern) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    return name == pattern or name.endswith("." + pattern)


def _show(pattern: Pattern) -> str:
    return f"re:{pattern.pattern}" if isinstance(pattern, re.Pattern) else pattern


def plain_linears(model: nn.Module) -> list[str]:
    """Full names of the `nn.Linear` modules not already inside a PEFT wrapper (whose base is a Linear too)."""
    wrapped = [n for n, m in model.named_modules() if isinstance(m, WrappedLinear)]
    return [n for n, m in model.named_modules()
            if type(m) is nn.Linear and n and not any(n.startswith(w + ".") or w == "" for w in wrapped)]


def find_linear_targets(model: nn.Module, patterns: list[Pattern], arg: str) -> list[str]:
    """The Linear names matched by any pattern; a pattern that matches none is a ValueError naming it."""
    linears = plain_linears(model)
    for p in patterns:
        if not any(matches(n, p) for n in linears):
            shown = ", ".join(linears[:8]) + (" ..." if len(linears) > 8 else "")
            raise ValueError(f"{arg}: pattern {_show(p)!r} matches no nn.Linear in the model; "
                             f"Linear modules available: [{shown}]")
    return [n for n in linears if any(matches(n, p) for p in patterns)]


def find_modules(model: nn.Module, patterns, arg: str) -> list[str]:
    """Names of the modules (any type) matched by `patterns`; a pattern that matches none is a ValueError."""
    patterns = parse_targets(patterns, arg) if patterns else []
    names = [n for n, _ in model.named_modules() if n and any(matches(n, p) for p in patterns)]
    for p in patterns:
        if not any(matches(n, p) for n in names):
            raise ValueError(f"{arg}: pattern {_show(p)!r} matches no module in the model")
    return names


def freeze_except(model: nn.Module, kept_modules: list[str], keep: Callable[[str], bool]) -> None:
    """requires_grad only for parameters `keep(name)` accepts and those inside the modules named `kept_modules`."""
    prefixes = tuple(m + "." for m in kept_modules)
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name) or name.startswith(prefixes))


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted `name` (e.g. "layers.0.q_proj") with `module`."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def trainable_parameters_report(model: nn.Module) -> tuple[int, int, float]:
    """(trainable, total, trainable / total), counting elements; total includes the added PEFT parameters."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, total, (trainable / total if total else 0.0)


def parameter_table(models: dict[str, nn.Module]) -> str:
    """A printable table, one row per method: {"full": m0, "LoRA r=8": m1, ...} -> trainable, total, share."""
    if not isinstance(models, dict):
        raise TypeError(f"models: expected a dict name -> nn.Module, got {type(models).__name__}")
    width = max([len("method")] + [len(k) for k in models])
    lines = [f"{'method':<{width}}  {'trainable':>12}  {'total':>12}  {'share':>8}"]
    for name, model in models.items():
        trainable, total, share = trainable_parameters_report(model)
        lines.append(f"{name:<{width}}  {trainable:>12,}  {total:>12,}  {share:>8.3%}")
    return "\n".join(lines)
