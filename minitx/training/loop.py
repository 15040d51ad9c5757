"""The one training loop every recipe runs on (MLM pretraining, classification fine-tuning, lessons).

A recipe hands over three things and the loop does the rest:

- `batch_fn(step, micro_step, rank, world_size) -> batch` — a pure function of its arguments, so a resumed run
  sees exactly the batches it would have seen and each DDP rank reads its own shard;
- `loss_fn(model, batch) -> (loss, metrics)` — `model` may be wrapped in DistributedDataParallel, so call it
  rather than reach into its attributes; metrics are floats or scalar tensors;
- `eval_fn(model) -> dict` (optional) — gets the bare model, in eval mode, under `torch.no_grad()`. A truthy
  `"stop"` in its record ends the run after that step, on every rank (early stopping); the step is checkpointed.

Steps are numbered 1..max_steps: step t is the t-th optimizer update, `lr_at(t)` is the rate it uses, metrics
logged as step t describe it, and a checkpoint at step t holds the state after it. Before writing one the loop
checks that state: finite weights and optimizer moments, and a finite loss of the updated weights on the step's
last batch (one more `loss_fn` call, in eval mode under no_grad); otherwise it stops with NonFiniteLossError.
Ctrl-C or SIGTERM ends the run after the current step with a checkpoint of it (TrainingInterrupted). The math is in
docs/math/optimization.md, labels (opt.1)..(opt.10).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from minitx.seeding import seed_everything, step_seed
from minitx.training import distributed as D, guards
from minitx.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minitx.training.config import TrainConfig
from minitx.training.guards import TrainingInterrupted
from minitx.training.optim import AdamW, lr_at, parameter_groups

def begin_recipe(config: TrainConfig, config_cls: type) -> float:
    """What every recipe does first: refuse a config of the wrong class, apply its thread policy (`threads`,
    0 = torch's default); returns the start time (perf_counter) for the run's wall time."""
    if not isinstance(config, config_cls):
        raise TypeError(f"config: expected a {config_cls.__name__}, got {type(config).__name__}")
    if getattr(config, "threads", 0):
        torch.set_num_threads(config.threads)
    return time.perf_counter()


class NonFiniteLossError(RuntimeError):
    """The loss, gradient norm or updated weights became inf/NaN; the run stops, and no checkpoint whose weights
    or optimizer state are non-finite (or give a non-finite loss on the step's last batch) is ever written."""


@dataclass
class TrainResult:
    step: int                                               # last completed optimizer step
    metrics: dict[str, float]                               # the last train record
    eval_metrics: dict[str, float]                          # the last eval record ({} without eval_fn)
    history: list[dict[str, Any]]                           # every record written to metrics.jsonl
    paths: dict[str, Path]                                  # out_dir, metrics, checkpoint (if written)
    stopped_early: bool = False                             # eval_fn asked to stop before max_steps


def count_tokens(batch: Any) -> int:
    """Tokens in a batch for throughput: elements of `input_ids` if present, else the batch size of its first
    tensor (so a batch of feature vectors counts examples)."""
    if isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), torch.Tensor):
        return batch["input_ids"].numel()
    leaves = list(batch.values()) if isinstance(batch, Mapping) else batch
    if isinstance(leaves, torch.Tensor):
        return leaves.shape[0] if leaves.ndim else 1
    for leaf in leaves if isinstance(leaves, (list, tuple)) else []:
        if isinstance(leaf, torch.Tensor):
            return leaf.shape[0] if leaf.ndim else 1
    return 0


def train(model: nn.Module, batch_fn: Callable[[int, int, int, int], Any],
          loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, Any]]], config: TrainConfig,
          eval_fn: Callable[[nn.Module], Mapping[str, Any]] | None = None,
          extra_state: Mapping[str, Any] | None = None) -> TrainResult:
    """Train `model` for `config.max_steps` optimizer steps; see the module docstring for the contract.

    Under torchrun (WORLD_SIZE > 1) this joins the process group, wraps the model in DistributedDataParallel
    and leaves the group at the end; rank 0 alone writes metrics, checkpoints and the progress bar.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    device = D.resolve_device(config.device, D.world_info().local_rank)
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision: fp16 needs a CUDA device (GradScaler), got device {device}; use bf16 or fp32")
    created_group = D.init_distributed(device)
    try:
        with guards.InterruptGuard() as interrupts:
            return _Run(model, batch_fn, loss_fn, config, eval_fn, extra_state, device, interrupts).run()
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


class _Run:
    """One training run's state; each method is one part of the loop."""

    def __init__(self, model, batch_fn, loss_fn, config, eval_fn, extra_state, device, interrupts):
        self.batch_fn, self.loss_fn, self.eval_fn, self.cfg = batch_fn, loss_fn, eval_fn, config
        self.interrupts, self.last_batch, self.saved_step = interrupts, None, None
        self.extra_state, self.device, self.world = extra_state, device, D.world_info()
        self.main = self.world.rank == 0
        seed_everything(config.seed)
        self.model = model.to(device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                               betas=config.betas, eps=config.eps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.out_dir = Path(config.out_dir) if config.out_dir else None
        self.ckpt_path = self.out_dir / "checkpoint.pt" if self.out_dir else None
        self.metrics_path = self.out_dir / "metrics.jsonl" if self.out_dir else None
        self.history: list[dict[str, Any]] = []
        self.start = self._maybe_resume() + 1
        # DDP broadcasts rank 0's weights at construction, so every rank starts from the same model.
        self.ddp = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                    if D.is_distributed() else None)
        self.forward_model = self.ddp if self.ddp is not None else model

    def _maybe_resume(self) -> int:
        """Load out_dir/checkpoint.pt when resuming; the step it holds (0 for a fresh start)."""
        if not self.cfg.resume:
            if self.main and self.metrics_path and self.metrics_path.exists():
                self.metrics_path.unlink()  # a fresh run starts a fresh log
            return 0
        if self.ckpt_path is None or not self.ckpt_path.exists():
            warnings.warn(f"resume: no checkpoint at {self.ckpt_path}; starting from step 1")
            return 0
        payload = load_checkpoint(self.ckpt_path, self.model, self.optimizer, self.scaler,
                                  config=dataclasses.asdict(self.cfg),
                                  ignore_config_fields=self.cfg.resumable_fields,
                                  restore_rng=True)
        step = int(payload["step"])
        if step > self.cfg.max_steps:
            raise CheckpointError(f"max_steps: the checkpoint in {self.out_dir} is at step {step}, past "
                                  f"max_steps={self.cfg.max_steps}; pass max_steps >= {step} to resume (larger: "
                                  f"extend the run)")
        self.saved_step = step
        self._trim_metrics(step)
        return step

    def _trim_metrics(self, step: int) -> None:
        """Keep the log records up to the checkpoint's step; later ones belong to the run that died (and a
        damaged line, e.g. one cut short by a kill, is dropped with a warning)."""
        exists = self.metrics_path is not None and self.metrics_path.exists()
        self.history = [r for r in guards.read_metrics(self.metrics_path) if r["step"] <= step] if exists else []
        D.barrier()  # every rank has read the log before rank 0 rewrites it (all ranks reach this line)
        if self.main and exists:
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.history))

    def run(self) -> TrainResult:
        cfg = self.cfg
        # A run resumed after its last step trains no more; it still reports what was logged (train and eval).
        last = next((r for r in reversed(self.history) if r["split"] == "train"), {})
        last_eval = next((r for r in reversed(self.history) if r["split"] == "eval"), {})
        self.bar = tqdm(total=cfg.max_steps, initial=self.start - 1, desc="train", dynamic_ncols=True,
                        disable=not (cfg.progress and self.main and sys.stderr.isatty()))
        step, stopped = self.start - 1, False
        for step in range(self.start, cfg.max_steps + 1):
            record = self._step(step)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            last = record
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                self._write(record)
            if self.eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0)
                                             or step == cfg.max_steps):
                last_eval = self._evaluate(step)
                # rank 0 alone evaluated: the sum over ranks tells every rank whether to stop
                stopped = D.sum_over_ranks(float(bool(last_eval.get("stop"))), self.device) > 0
            if self.ckpt_path is not None and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                                               or step == cfg.max_steps or stopped):
                self._save(step)
            if stopped:
                break
            if step < cfg.max_steps:  # a signal during the last step: the run is complete, let it finish
                self._stop_if_interrupted(step)
        self.bar.close()
        paths = {k: v for k, v in (("out_dir", self.out_dir), ("metrics", self.metrics_path),
                                   ("checkpoint", self.ckpt_path)) if v is not None and v.exists()}
        return TrainResult(max(step, self.start - 1), last, last_eval, self.history, paths, stopped)

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def _step(self, step: int) -> dict[str, float]:
        """One optimizer step over `grad_accum_steps` micro-batches (opt.9); its train record."""
        cfg, accum, began = self.cfg, self.cfg.grad_accum_steps, time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        tokens = 0
        for micro in range(accum):
            torch.manual_seed(step_seed(cfg.seed, step, micro, self.world.rank))
            batch = D.move_to(self.batch_fn(step, micro, self.world.rank, self.world.world_size), self.device)
            # Only the last micro-step all-reduces gradients; earlier ones just accumulate locally.
            sync = self.ddp is None or micro == accum - 1
            with nullcontext() if sync else self.ddp.no_sync():
                with self._autocast():
                    loss, metrics = guards.check_loss(self.loss_fn(self.forward_model, batch))
                self.scaler.scale(loss / accum).backward()  # 1/accum: the mean over micro-batches (opt.9)
            for k, v in {**D.to_floats(metrics), "loss": float(loss.detach())}.items():
                sums[k] = sums.get(k, 0.0) + v / accum
            tokens += count_tokens(batch)
        self.last_batch = batch
        record = D.average_over_ranks(sums, self.device)
        if not math.isfinite(record["loss"]):
            raise NonFiniteLossError(f"step {step}: loss is {record['loss']}; stopping ({self._kept()})")
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))  # pre-clip norm (opt.8)
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            # Under fp16 an overflow is routine: GradScaler skips the step and lowers the scale instead.
            raise NonFiniteLossError(f"step {step}: gradient norm is {grad_norm} (loss {record['loss']:.6g}); "
                                     f"stopping ({self._kept()})")
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        elapsed = time.perf_counter() - began
        tokens_per_s = D.sum_over_ranks(tokens, self.device) / max(elapsed, 1e-9)
        return {"step": step, "split": "train", "loss": record.pop("loss"), "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_s, **record}

    def _kept(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the checkpoint of step {self.saved_step} in {self.out_dir} is left untouched"

    def _write(self, record: Mapping[str, Any]) -> None:
        """Log one record: metrics.jsonl, and a plain line when progress is on and stderr is not a terminal."""
        if self.main and self.cfg.progress:
            line = guards.format_record(record, self.cfg.max_steps)
            self.bar.write(line) if not self.bar.disable else print(line, flush=True)
        self.history.append(dict(record))
        if self.main and self.metrics_path is not None:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _evaluate(self, step: int) -> dict[str, Any]:
        """eval_fn on the bare model, rank 0 only (the others wait at the barrier)."""
        record: dict[str, Any] = {}
        if self.main:
            self.model.eval()
            with torch.no_grad(), self._autocast():
                record = {"step": step, "split": "eval", **D.to_floats(self.eval_fn(self.model))}
            self.model.train()
            self._write(record)
        D.barrier()
        return record

    def _stop_if_interrupted(self, step: int) -> None:
        """After a whole step: on Ctrl-C/SIGTERM (any rank's), save this step's state and stop."""
        if not D.sum_over_ranks(float(self.interrupts.signum is not None), self.device):
            return
        if self.ckpt_path is not None and self.saved_step != step:
            self._save(step)
        self.bar.close()
        raise TrainingInterrupted(step, self.interrupts.signum or signal.SIGTERM, self.ckpt_path)

    def _unsafe_state(self) -> str | None:
        """Why the state after this step must not be saved: non-finite weights or optimizer moments, or weights
        that give a non-finite loss on the step's last batch (lr = 1e20 leaves finite but exploded weights)."""
        bad = guards.first_non_finite(self.model, self.optimizer)
        if bad is None and self.last_batch is not None:
            self.model.eval()
            with torch.no_grad(), self._autocast():
                loss = float(self.loss_fn(self.model, self.last_batch)[0])
            self.model.train()
            bad = None if math.isfinite(loss) else f"the loss of the updated weights on the last batch ({loss})"
        return bad

    def _save(self, step: int) -> None:
        bad = self._unsafe_state() if self.main else None
        if D.sum_over_ranks(float(bad is not None), self.device) > 0:
            raise NonFiniteLossError(f"step {step}: {bad or 'rank 0 found non-finite state'} is not finite; "
                                     f"refusing to write the checkpoint ({self._kept()})")
        self.saved_step = step
        if self.main:
            save_checkpoint(self.ckpt_path, model=self.model, step=step, optimizer=self.optimizer,
                            scheduler={"step": step, "schedule": self.cfg.schedule}, scaler=self.scaler,
                            config=dataclasses.asdict(self.cfg), extra_state=self.extra_state)
        D.barrier()  # nobody races ahead (or exits) while rank 0 is still writing

