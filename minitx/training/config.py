"""The training loop's configuration: one flat dataclass whose fields map one to one onto CLI flags.

It lives below `minitx.training.loop` (and `minitx.training.optim`, which reads its schedule fields) so that
neither imports the other for it. The math the fields steer is docs/math/optimization.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from minitx.training import distributed as D, guards

SCHEDULES = ("linear", "cosine", "constant", "noam")  # noam: the original Transformer's (tf.8)
MAX_STEP_SCALAR = 1e30  # float32 holds up to 3.4e38; beyond 1e30 a step's scalars overflow it within a few steps
PRECISIONS = ("fp32", "bf16", "fp16")
# Fields that may change between a run and its resumption: they steer logging and I/O, not the math; and
# max_steps, so a finished run can be extended (the schedule is then the new max_steps' schedule).
RESUMABLE_OVERRIDES = frozenset({"resume", "overwrite", "progress", "log_every", "eval_every", "checkpoint_every",
                                 "out_dir", "device", "max_steps", "threads", "compile"})


def option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    # Fields a resumed run may change (a subclass may add its own I/O fields); the rest must match (ClassVar:
    # not a field, so not a CLI flag).
    resumable_fields: ClassVar[frozenset[str]] = RESUMABLE_OVERRIDES

    lr: float = option(1e-3, "peak learning rate η, reached at the end of warmup (opt.5)")
    weight_decay: float = option(0.01, "decoupled weight decay λ on matrices, not biases or norms (opt.2, opt.4)")
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW β1 β2: decay rates of the gradient moments (opt.1)")
    eps: float = option(1e-8, "AdamW ε added to the root second moment (opt.1)")
    warmup_steps: int = option(0, "steps of linear warmup from 0 to lr (opt.5)")
    max_steps: int = option(1000, "optimizer steps in the whole run")
    schedule: str = option("linear", "decay after warmup (opt.6, opt.7; noam: lr sqrt(warmup / step), tf.8)",
                           choices=SCHEDULES)
    min_lr_ratio: float = option(0.0, "final lr as a fraction of lr, for linear and cosine decay")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (opt.8); 0 turns clipping off")
    grad_accum_steps: int = option(1, "micro-batches per optimizer step; gradients are averaged over them (opt.9)")
    precision: str = option("fp32", "fp32, or autocast to bf16 (CUDA or CPU) / fp16 (CUDA, with GradScaler)",
                        choices=PRECISIONS)
    seed: int = option(0, "seed for torch, random and numpy, and for every step's dropout")
    log_every: int = option(10, "write a train record to metrics.jsonl every this many steps")
    eval_every: int = option(0, "run eval_fn every this many steps (0: only at the end)")
    checkpoint_every: int = option(0, "save checkpoint.pt every this many steps (0: only at the end)")
    out_dir: str = option("runs/train", "directory for metrics.jsonl and checkpoint.pt ('' writes nothing)")
    resume: bool = option(False, "continue from out_dir/checkpoint.pt if it exists (with a larger max_steps: extend "
                             "a finished run)")
    overwrite: bool = option(False, "replace the run already in out_dir (without it or --resume, the CLI refuses)")
    progress: bool = option(True, "report progress (rank 0 only): a tqdm bar on a terminal, else plain lines every "
                              "log_every steps and at every eval")
    device: str = option("auto", "'auto' (this rank's GPU if any, else CPU), 'cpu', 'cuda:0', ...")

    def __post_init__(self) -> None:
        if not isinstance(self.betas, (tuple, list)) or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) for b in self.betas):
            raise TypeError(f"betas: expected two numbers, got {self.betas!r}")
        self.betas = tuple(float(b) for b in self.betas)
        guards.check_field_types(self)
        guards.check_seed(self.seed)
        D.check_device(self.device)
        checks = {
            "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0, "eps": self.eps > 0,
            "betas": len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "warmup_steps": self.warmup_steps >= 0, "max_steps": self.max_steps >= 1,
            "schedule": self.schedule in SCHEDULES, "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "grad_clip": self.grad_clip >= 0, "grad_accum_steps": self.grad_accum_steps >= 1,
            "precision": self.precision in PRECISIONS, "log_every": self.log_every >= 1,
            "eval_every": self.eval_every >= 0, "checkpoint_every": self.checkpoint_every >= 0,
        }
        # AdamW's scalars run in float32 (opt.1): the first step's size lr / (1 - beta1) and the decay factor
        # lr * weight_decay must fit, or the update dies in a cast deep in the optimizer.
        if checks["lr"] and checks["betas"] and checks["weight_decay"] and \
                max(self.lr / (1 - self.betas[0]), self.lr * self.weight_decay) > MAX_STEP_SCALAR:
            raise ValueError(f"lr: got {self.lr!r}, too large: lr / (1 - beta1) and lr * weight_decay must stay "
                             f"below {MAX_STEP_SCALAR:g} (float32 step sizes)")
        if checks["eps"] and self.eps > MAX_STEP_SCALAR:
            raise ValueError(f"eps: got {self.eps!r}, expected at most {MAX_STEP_SCALAR:g} (float32)")
        for name, ok in checks.items():
            if not ok:
                help_text = next(f.metadata["help"] for f in dataclasses.fields(self) if f.name == name)
                raise ValueError(f"{name}: got {getattr(self, name)!r}, which is out of range ({help_text})")
        guards.warn_short_warmup(self.warmup_steps, self.max_steps)
