"""Run the conformance checks on a learner's adapters: `minitx check ADAPTERS.py`, `check(module)`.

Every adapter the module defines is checked on the cases Hypothesis draws (after a few fixed edge cases); a
failing case is shrunk to the smallest input that still fails. One line per adapter: PASS, FAIL (what differs,
where, on which input, the docs/math label of the broken equation, a hint) or SKIP; then a summary.
Exit status of the command: 0 all provided adapters pass, 1 one fails, 2 a usage error.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minitx.conformance.cases import Adapter, Mismatch, require_hypothesis
from minitx.conformance.checks_attention import (LORA_LINEAR, MULTI_HEAD_ATTENTION, ROPE, SCALED_DOT_PRODUCT_ATTENTION,
                                                 SINUSOIDAL_POSITIONS)
from minitx.conformance.checks_math import (CAUSAL_LM_LOSS, CROSS_ENTROPY, GELU, LAYER_NORM, RMS_NORM, SILU, SOFTMAX,
                                            SWIGLU)
from minitx.conformance.checks_model import GPT_MODEL
from minitx.conformance.checks_training import ADAMW, COSINE_SCHEDULE, GRADIENT_CLIPPING, MLM_MASKING

# The contract's order (the table, docs/checking.md).
ADAPTERS: dict[str, Adapter] = {a.name: a for a in (
    SOFTMAX, LAYER_NORM, RMS_NORM, GELU, SILU, SWIGLU, CROSS_ENTROPY, SCALED_DOT_PRODUCT_ATTENTION,
    MULTI_HEAD_ATTENTION, ROPE, SINUSOIDAL_POSITIONS, LORA_LINEAR, ADAMW, COSINE_SCHEDULE, GRADIENT_CLIPPING,
    MLM_MASKING, CAUSAL_LM_LOSS, GPT_MODEL)}  # the table's 17, then the model-level check
DEFAULT_EXAMPLES = 25


@dataclass
class Result:
    name: str
    status: str  # "PASS" | "FAIL" | "SKIP"
    detail: str = ""
    seconds: float = 0.0
    mismatch: Mismatch | None = None

    def line(self) -> str:
        if self.status == "PASS":
            return f"PASS {self.name}"
        if self.status == "SKIP":
            return f"SKIP {self.name} (not provided)"
        return f"FAIL {self.name}: {self.detail}"


@dataclass
class Report:
    """What `check` found: one Result per adapter in the contract's order; `ok` when every provided one passes."""
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.status != "FAIL" for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status == "FAIL"]

    @property
    def passed(self) -> list[str]:
        return [r.name for r in self.results if r.status == "PASS"]

    def result(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def summary(self) -> str:
        count = {s: sum(r.status == s for r in self.results) for s in ("PASS", "FAIL", "SKIP")}
        return (f"{count['PASS']} passed, {count['FAIL']} failed, {count['SKIP']} skipped (not provided) of "
                f"{len(self.results)} adapters in {self.seconds:.1f} s")

    def __str__(self) -> str:
        return "\n".join([r.line() for r in self.results] + [self.summary()])

    def assert_ok(self) -> None:
        """Raise AssertionError with the whole report unless every provided adapter passes (for pytest)."""
        if not self.ok:
            raise AssertionError("minitx conformance check failed:\n" + str(self))


def label_text(label: str) -> str:
    """"ln.1-ln.4" -> "(ln.1)-(ln.4)": how docs/math writes a label."""
    return "-".join(f"({part})" for part in label.split("-")) if label else ""


def describe(m: Mismatch, name: str) -> str:
    parts = [m.what]
    if m.case:
        parts.append(f"smallest failing input: {m.case}")
    if m.label:
        parts.append(f"breaks {label_text(m.label)} in docs/math")
    if m.hint:
        parts.append(f"hint: {m.hint}")
    return "; ".join(parts)


def load_adapters(path: str | Path) -> types.ModuleType:
    """Import a learner's adapters file by path (it runs as ordinary Python: only check code you trust)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ADAPTERS: no such file {str(path)!r}")
    if path.suffix != ".py":
        raise ValueError(f"ADAPTERS: expected a Python file (.py), got {str(path)!r}")
    spec = importlib.util.spec_from_file_location(f"minitx_adapters_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 (the file itself is broken: a usage error, named)
        raise ValueError(f"ADAPTERS: importing {str(path)!r} raised {type(e).__name__}: {e}") from e
    return module


def provided(module, adapter: Adapter):
    """The learner's function for `adapter`, or None; ValueError if it cannot take the contract's arguments."""
    fn = getattr(module, adapter.function, None)
    if fn is None:
        return None
    if not callable(fn):
        raise TypeError(f"{adapter.function}: expected a function {adapter.call}, got {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(*range(adapter.positional), **{k: None for k in adapter.keywords})
    except TypeError as e:
        raise ValueError(f"{adapter.function}: expected the signature {adapter.call}, got "
                         f"{adapter.function}{inspect.signature(fn)} ({e})") from None
    except ValueError:  # a builtin without a signature: trust it
        pass
    return fn


def run_adapter(fn, adapter: Adapter, seed: int = 0, examples: int = DEFAULT_EXAMPLES, shrink: bool = True):
    """None if `fn` passes every edge case and `examples` drawn cases, else the (shrunk) Mismatch."""
    hypothesis = require_hypothesis()
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings, strategies as st

    def prop(c):
        try:
            adapter.run(fn, c)
        except Mismatch as m:
            m.case = str(c)
            raise
        except Exception as e:  # noqa: BLE001 (the check itself broke on this output: still a failure, named)
            m = Mismatch(f"the check could not compare the output ({type(e).__name__}: {e})", "",
                         "return what the contract says (a tensor of the documented shape and dtype)")
            m.case = str(c)
            raise m from e

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    test = given(adapter.cases(st))(prop)
    for edge in reversed(adapter.edges):
        test = hypothesis.example(edge)(test)
    n = examples if adapter.max_examples is None else min(examples, adapter.max_examples)
    test = settings(max_examples=max(n, 1), deadline=None, database=None, derandomize=False, phases=phases,
                    suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
                    report_multiple_bugs=False, print_blob=False)(test)
    test = hypothesis.seed(seed)(test)
    try:
        with torch.random.fork_rng():  # a learner's draw from the global RNG leaves the caller's untouched
            test()
    except Mismatch as m:
        return m
    except Exception as e:  # noqa: BLE001 (Hypothesis wraps a failure that does not replay in Flaky)
        m = _first_mismatch(e)
        if m is None:
            raise
        m.hint = (m.hint + "; " if m.hint else "") + ("it failed only sometimes on the same input: does your "
                                                      "function draw random numbers or keep state between calls?")
        return m
    return None


def _first_mismatch(e: BaseException) -> Mismatch | None:
    """The first Mismatch inside an exception group (Hypothesis' Flaky) or its causes, else None."""
    seen, todo = set(), [e]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Mismatch):
            return e
        todo += list(getattr(e, "exceptions", ())) + [e.__cause__, e.__context__]
    return None


def check(module, only=None, seed: int = 0, examples: int = DEFAULT_EXAMPLES, shrink: bool = True,
          progress=None) -> Report:
    """Check every adapter `module` defines (a module, any object with the functions as attributes, or the path
    of a .py file) against minitx's reference math; `only` names a subset. Returns a Report (`.ok`, `.failed`,
    `str(report)` is what `minitx check` prints; `report.assert_ok()` for a test)."""
    require_hypothesis()
    if isinstance(module, (str, Path)):
        module = load_adapters(module)
    names = list(ADAPTERS)
    if only:
        unknown = [n for n in only if n not in ADAPTERS and n not in _BY_FUNCTION]
        if unknown:
            raise ValueError(f"--only: unknown adapter {unknown[0]!r}; expected names from {', '.join(ADAPTERS)}")
        names = [n for n in names if n in only or ADAPTERS[n].function in only]
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ValueError(f"examples: expected an int >= 1, got {examples!r}")
    fns = {n: provided(module, ADAPTERS[n]) for n in names}  # every signature checked before anything runs
    report, start = Report(), time.perf_counter()
    for n in names:
        t0 = time.perf_counter()
        if fns[n] is None:
            result = Result(n, "SKIP")
        else:
            m = run_adapter(fns[n], ADAPTERS[n], seed=seed, examples=examples, shrink=shrink)
            result = Result(n, "PASS") if m is None else Result(n, "FAIL", describe(m, n), mismatch=m)
        result.seconds = time.perf_counter() - t0
        report.results.append(result)
        if progress is not None:
            progress(result.line())
    report.seconds = time.perf_counter() - start
    return report


_BY_FUNCTION = {a.function: a.name for a in ADAPTERS.values()}


def check_main(argv: list[str], prog: str = "minitx check") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Check your own implementation of transformer "
                                     "components against minitx's reference math (docs/checking.md).")
    parser.add_argument("adapters", metavar="ADAPTERS.py", help="a Python file defining any of: " +
                        ", ".join(a.function for a in ADAPTERS.values()))
    parser.add_argument("--only", nargs="+", metavar="NAME", help="check only these adapters")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default: 0)")
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES,
                        help=f"drawn cases per adapter, after the fixed edge cases (default: {DEFAULT_EXAMPLES})")
    args = parser.parse_args(argv)
    try:
        require_hypothesis()
    except ImportError as e:  # a runtime install without the extra: one line, the command that fixes it
        print(f"minitx: error: {e}", file=sys.stderr)
        return 2
    report = check(args.adapters, only=args.only, seed=args.seed, examples=args.examples,
                   progress=lambda line: print(line, flush=True))
    print(report.summary())
    return 0 if report.ok else 1
