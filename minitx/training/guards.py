"""What the training loop refuses and what it survives: bad config values, a run directory that already holds a
run, non-finite state that must not reach a checkpoint, a damaged metrics log, Ctrl-C and SIGTERM.

Kept apart from `minitx.training.loop` so the loop itself reads as the loop. Guide: docs/training.md ("Faults").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

# The files that say a directory holds a minitx run, and those a run writes (removed by `overwrite`).
RUN_MARKERS = ("checkpoint.pt", "checkpoint.json", "metrics.jsonl", "summary.json")
RUN_FILES = RUN_MARKERS + ("tokenizer.json", "model_config.json", "loss_curve.png", "lora_adapter.safetensors")
SEED_LIMIT = 2**63  # torch.manual_seed takes a 64-bit seed; step_seed keeps its result below 2**63 - 1


# ----------------------------------------------------------------------------------------------- config values
def check_field_types(config: Any) -> None:
    """Every field of a config dataclass has its annotated type: int fields an int (not a bool, not 2.5), float
    fields a finite real number (inf and NaN are refused everywhere), bool fields a bool, str fields a str,
    list[str] fields a list or tuple of str (or one str). ValueError/TypeError naming the field."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, tp = getattr(config, f.name), hints[f.name]
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
        if optional:
            if value is None:
                continue
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        _check_value(f.name, value, tp)


def _check_value(name: str, value: Any, tp: Any) -> None:
    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected a bool, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected a string, got {value!r}")
    elif origin in (list, tuple) and not isinstance(value, str):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name}: expected a list, got {value!r}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        for item in value:
            if args:
                _check_value(name, item, args[0])


def check_seed(seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed: expected an int in [0, 2**63), got {seed}")


def warn_short_warmup(warmup_steps: int, max_steps: int) -> None:
    if warmup_steps > max_steps:
        warnings.warn(f"warmup_steps={warmup_steps} > max_steps={max_steps}: the learning rate never reaches "
                      f"its peak lr (it ends at {max_steps / warmup_steps:.0%} of it); lower --warmup-steps",
                      stacklevel=3)


# ----------------------------------------------------------------------------------------------- run directory
def check_out_dir(config: Any) -> None:
    """Refuse to start a fresh run in a directory that already holds one, unless `resume` (continue it) or
    `overwrite` (replace it: minitx's own run files are removed first, nothing else in the directory)."""
    out = Path(config.out_dir) if config.out_dir else None
    if out is None or not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"out_dir: expected a directory, got {str(out)!r} (a file)")
    found = [name for name in RUN_MARKERS if (out / name).exists()]
    if not found or config.resume:
        return
    if not config.overwrite:
        raise ValueError(f"out_dir: {str(out)!r} already holds a run ({', '.join(found)}); pass --resume to "
                         f"continue it, --overwrite to replace it, or another --out-dir")
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


LOCK_FILE = "run.lock"  # the pid of the one process writing the run directory


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike | None):
    """Hold `out_dir`/run.lock (this process's pid) while the body writes the run directory: a second writer is
    refused naming the owner's pid; the lock of a process that died (SIGKILL, a crash) is taken over with a
    warning. The directory is created if needed. Under torchrun only rank 0 takes it (every rank runs this).
    Yields the lock file's path (None without an out_dir)."""
    if not out_dir or os.environ.get("RANK", "0").strip() not in ("", "0"):
        yield None
        return
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir: expected a directory, got {str(out)!r} (a file)")
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    _take_lock(lock)
    try:
        yield lock
    finally:
        if _lock_owner(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def _take_lock(lock: Path) -> None:
    mine = lock.with_name(f"{LOCK_FILE}.{os.getpid()}")
    mine.write_text(f"{os.getpid()}\n")
    try:
        for _ in range(3):
            try:
                os.link(mine, lock)  # atomic: fails if the lock exists, and never shows a half-written pid
                return
            except FileExistsError:
                pass
            owner = _lock_owner(lock)
            if owner is not None and (owner == os.getpid() or process_running(owner)):
                raise ValueError(f"out_dir: {str(lock.parent)!r} is being written by another minitx run (pid "
                                 f"{owner}, lock file {lock.name}); wait for it to finish, or pass another --out-dir")
            stale = lock.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
            try:
                os.rename(lock, stale)  # one taker wins the stale lock; a loser's rename finds nothing
            except FileNotFoundError:
                continue
            taken = _lock_owner(stale)
            if taken is not None and taken != owner and process_running(taken):  # a fresh lock: give it back
                os.replace(stale, lock)
                continue
            stale.unlink(missing_ok=True)
            warnings.warn(f"out_dir: took over the lock of pid {owner}, which is no longer running (a run that "
                          f"was killed); {lock.parent} is this run's now", stacklevel=4)
        raise ValueError(f"out_dir: could not take the lock {lock} (another run keeps taking it)")
    finally:
        mine.unlink(missing_ok=True)


def _lock_owner(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def process_running(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


# ----------------------------------------------------------------------------------------------- metrics log
def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a damaged line (a partial last line after a kill mid-write, or anything
    that is not a record) is dropped with a warning instead of blocking the resume."""
    records, dropped = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and "split" in record:
            records.append(record)
        else:
            dropped.append(number)
    if dropped:
        warnings.warn(f"{path}: dropped {len(dropped)} damaged line(s) (line {', '.join(map(str, dropped[:5]))}"
                      f"{' ...' if len(dropped) > 5 else ''}), e.g. a record cut short when the run was killed",
                      stacklevel=2)
    return records


# ----------------------------------------------------------------------------------------------- loss_fn
def check_loss(result: Any) -> tuple[torch.Tensor, Any]:
    """What `loss_fn` returned, checked before backward: (loss, metrics) with a scalar float loss that requires
    grad. Without grad, nothing trainable reached the loss (everything frozen, a detached output, a merged LoRA)."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"loss_fn: expected it to return (loss, metrics), got {type(result).__name__}")
    loss, metrics = result
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn: expected the loss as a scalar Tensor, got {type(loss).__name__}")
    if loss.numel() != 1 or not loss.is_floating_point():
        raise ValueError(f"loss_fn: expected the loss as a floating-point scalar, got shape {tuple(loss.shape)} "
                         f"dtype {loss.dtype} (reduce it, e.g. .mean())")
    if torch.is_grad_enabled() and not loss.requires_grad:
        raise ValueError("loss_fn: expected a loss that requires grad, got one without a graph: no trainable "
                         "parameter reached it (all frozen, a detached output, or a merged LoRA layer)")
    return loss.reshape(()), metrics


# ----------------------------------------------------------------------------------------------- finite state
def first_non_finite(model: nn.Module, optimizer: Any = None) -> str | None:
    """The name of the first parameter or optimizer-state tensor holding inf/NaN, or None if all are finite."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return f"parameter {name}"
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for p, state in optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(
                        torch.isfinite(value).all()):
                    return f"optimizer state {key!r} of {names.get(id(p), 'a parameter')}"
    return None


# ----------------------------------------------------------------------------------------------- signals
class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run after `step`; the state after that step is in `checkpoint`
    (None when the run writes nothing). `exit_code` is the shell's: 128 + the signal number (130, 143)."""

    def __init__(self, step: int, signum: int, checkpoint: Path | None):
        self.step, self.signum, self.checkpoint = step, signum, checkpoint
        self.exit_code = 128 + signum
        where = f"checkpoint saved at step {step} in {checkpoint}" if checkpoint else f"stopped after step {step}"
        super().__init__(f"interrupted by {signal.Signals(signum).name}: {where}")


class InterruptGuard:
    """While active, the first SIGINT/SIGTERM only sets `signum` (the loop finishes its step, saves and stops);
    a second one interrupts at once. Handlers are installed only in the main thread and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second signal: stop now, whatever we are doing
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def format_record(record: Mapping[str, Any], max_steps: int) -> str:
    """One plain log line: `step 20/600 train loss 4.1234 lr 1.00e-03 ...` (numbers to 4 significant digits)."""
    parts = [f"step {record['step']}/{max_steps}", str(record.get("split", ""))]
    for k, v in record.items():
        if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{k} {v:.4g}")
    return " ".join(parts)
