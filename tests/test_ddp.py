"""DDP: two CPU processes under torchrun (gloo) take the same optimizer steps as one process on the whole batch
(opt.9-opt.10). Each rank's loss is the mean over its half; DDP averages the two gradients, which is the
gradient of the whole-batch mean. Gradient accumulation runs too, so `no_sync` is on the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from minitx.training.checkpoint import load_checkpoint

# The worker runs under torchrun; the test also executes it in-process (without __main__) for the reference.
WORKER = r'''
import json, sys
import torch
from torch import nn
from minitx.training.loop import TrainConfig, train
from minitx.training.distributed import world_info

BATCH, ACCUM, STEPS = 8, 2, 3


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 3))


def whole_batch(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(BATCH * ACCUM, 5, generator=g)
    return x, (x[:, :3] * 2).sin()


def batch_fn(step, micro, rank, world_size):
    """Rank `rank`'s share of micro-batch `micro`: the shards of all ranks and micro-steps tile the batch."""
    x, y = whole_batch(step)
    per_micro = BATCH * ACCUM // (world_size * ACCUM)
    start = (micro * world_size + rank) * per_micro
    return x[start:start + per_micro], y[start:start + per_micro]


def loss_fn(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean(), {"rank": float(world_info().rank)}


def config(out_dir, accum):
    return TrainConfig(lr=0.05, max_steps=STEPS, grad_accum_steps=accum, warmup_steps=1, weight_decay=0.1,
                       grad_clip=0.5, out_dir=out_dir, progress=False, log_every=1, device="cpu")


if __name__ == "__main__":
    torch.set_num_threads(1)
    model = build()
    result = train(model, batch_fn, loss_fn, config(sys.argv[1], ACCUM))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               f"{sys.argv[1]}/params_rank{world_info().rank}.pt")
'''


@pytest.fixture(scope="module")
def worker_ns():
    ns: dict = {"__name__": "ddp_worker"}
    exec(compile(WORKER, "ddp_worker", "exec"), ns)
    return ns


def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path, worker_ns):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "ddp"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    # Reference: one process, one micro-batch holding the whole batch of every step.
    torch.set_num_threads(1)
    ref_model = worker_ns["build"]()
    whole = lambda step, micro, rank, world_size: worker_ns["whole_batch"](step)  # noqa: E731
    ref = worker_ns["train"](ref_model, whole, worker_ns["loss_fn"], worker_ns["config"]("", 1))

    ranks = [torch.load(out / f"params_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, p in ref_model.state_dict().items():
        torch.testing.assert_close(ranks[0][name], p, rtol=0, atol=1e-6, msg=name)
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # DDP keeps the replicas identical

    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]  # rank 0 alone wrote the log: one record per step
    for mine, theirs in zip(lines, ref.history):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6)          # averaged over ranks
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5)
        assert mine["rank"] == pytest.approx(0.5)                               # (0 + 1) / 2: mean over ranks
    saved = load_checkpoint(out / "checkpoint.pt", worker_ns["build"]())
    assert saved["step"] == 3 and not list(out.glob(".*tmp*"))
