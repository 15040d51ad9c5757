"""Data parallelism with PyTorch's own DistributedDataParallel — the helpers `train.py` needs and nothing more.

`torchrun --nproc_per_node=N ...` starts N copies of the program and tells each one who it is through the
environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Each copy holds the whole model, reads
its own shard of every batch, and DDP averages the gradients over the copies in backward (opt.10), so every
copy takes the same optimizer step. We never write our own all-reduce of gradients; we only average the
*metrics* (plain numbers) so the log shows the whole batch, not rank 0's half of it. Also here: moving a batch
to this rank's device, and turning metrics into the plain floats that are averaged and logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class WorldInfo:
    rank: int          # this process among all processes, 0..world_size-1
    local_rank: int    # this process among those on the same machine (picks the GPU)
    world_size: int    # number of processes


def world_info() -> WorldInfo:
    """Who this process is: from the initialised process group if any, else from torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())
    return WorldInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                     int(os.environ.get("WORLD_SIZE", 1)))


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the one process that logs, saves and shows progress."""
    return world_info().rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> this rank's GPU if CUDA is available, else the CPU; anything else is passed to torch.device."""
    if not isinstance(name, str):
        raise TypeError(f"device: expected a string such as 'auto', 'cpu' or 'cuda:0', got {type(name).__name__}")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def init_distributed(device: torch.device) -> bool:
    """Join torchrun's process group if WORLD_SIZE > 1 and none is up yet; True if we created it (and so must
    destroy it). gloo on the CPU, nccl on CUDA — the backend each device's collectives are fastest on."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others may read); no-op alone."""
    if is_distributed():
        dist.barrier()


def average_over_ranks(values: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each number over all ranks, in one all-reduce. Every rank must pass the same keys in the same
    order (they run the same loss_fn, so they do). Alone, the values come back unchanged."""
    if not values or not is_distributed():
        return dict(values)
    keys = list(values)
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))


def sum_over_ranks(value: float, device: torch.device) -> float:
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors inside dicts, lists and tuples (any nesting) moved to `device`; everything else as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metric values as Python floats (tensors via .item()), so they can be averaged and written as JSON."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"metrics[{k!r}]: expected a scalar, got a tensor of shape {tuple(v.shape)}")
            v = v.item()
        if not isinstance(v, (int, float, bool)):
            raise TypeError(f"metrics[{k!r}]: expected a float or scalar tensor, got {type(v).__name__}")
        out[k] = float(v)
    return out


def check_device(name: str) -> None:
    """Refuse a device this build cannot use, naming the field: 'banana', 'cuda' without CUDA, 'cuda:3' on a
    machine with two GPUs."""
    if not isinstance(name, str):
        raise TypeError(f"device: expected a string such as 'auto', 'cpu' or 'cuda:0', got {type(name).__name__}")
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} needs CUDA, which this PyTorch build or machine does not have; "
                         f"use 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device: {name!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {name!r}")
