"""Checkpoints that are safe to load and hard to get wrong.

A checkpoint is two files in one directory:

- `checkpoint.pt`   the payload, written with `torch.save`: model, optimizer, scheduler and scaler state, step,
                    RNG states, the TrainConfig as a dict, and the recipe's `extra_state` — plain tensors,
                    dicts, lists, str, int, float, bool and None only, so `torch.load(weights_only=True)` can read
                    it and loading never executes code from the file.
- `checkpoint.json` a manifest: the payload's sha256, its size and step. A flipped or missing byte changes the
                    hash, so corruption and truncation are caught before anything is unpickled.

Each file is written to a temporary file first and moved into place with `os.replace`, which is atomic on
POSIX: a crash mid-save leaves the previous good checkpoint, never half of a new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or does not fit: corrupt, truncated, wrong model or wrong config."""


def manifest_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Every random number generator a training step may draw from, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        # numpy's key is a uint32 array; a list of ints keeps the file free of numpy objects.
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------------------------------------- save
def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, step: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Mapping[str, Any] | None = None,
                    scaler: Any = None, config: Mapping[str, Any] | None = None,
                    extra_state: Mapping[str, Any] | None = None) -> Path:
    """Write `path` and its manifest atomically; returns `path`. Call on rank 0 only.

    `model` is the bare module (unwrap DistributedDataParallel first) so the keys carry no `module.` prefix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": dict(scheduler) if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        "config": dict(config) if config is not None else None,
        "extra_state": dict(extra_state) if extra_state is not None else None,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    manifest = {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "step": int(step), "format_version": FORMAT_VERSION,
                "previous_sha256": _current_sha256(path)}
    # Two files cannot be replaced in one atomic move. The manifest goes first and also names the payload it
    # replaces, so a crash between the two moves leaves the old payload *and* a manifest that vouches for it.
    _atomic_write(manifest_path(path), (json.dumps(manifest, indent=2) + "\n").encode())
    _atomic_write(path, data)
    return path


def _current_sha256(path: Path) -> str | None:
    try:
        return json.loads(manifest_path(path).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------------- load
def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Verify `path` against its manifest and unpickle it with `weights_only=True`; the payload dict.

    Use it alone to peek at `extra_state` (e.g. the model config needed to build the model), then
    `load_checkpoint` to fill the model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    try:
        manifest = json.loads(manifest_path(path).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: manifest {manifest_path(path).name} missing or unreadable "
                              f"({e}); cannot verify the file") from e
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest not in (manifest.get("sha256"), manifest.get("previous_sha256")):
        what = "truncated" if len(data) < manifest.get("bytes", 0) else "corrupt"
        raise CheckpointError(f"checkpoint {path}: {what} — sha256 {digest[:12]}... does not match the "
                              f"manifest's {str(manifest.get('sha256'))[:12]}... ({len(data)} bytes on disk, "
                              f"{manifest.get('bytes')} expected)")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a verified file that still fails to load was written by something else
        raise CheckpointError(f"checkpoint {path}: unreadable with weights_only=True ({e})") from e
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: not a minitx checkpoint of format {FORMAT_VERSION}")
    return payload


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Any = "") -> None:
    """Refuse a state dict that belongs to another model: missing or unexpected keys, or any shape mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_preview(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_preview(shapes)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(problems))


def check_config(saved: Mapping[str, Any] | None, current: Mapping[str, Any], ignore: set[str],
                 path: Any = "") -> None:
    """Refuse to resume under a different config (other than the fields in `ignore`, which may change)."""
    if saved is None:
        raise CheckpointError(f"checkpoint {path} stores no config to compare with")
    fields = sorted((set(saved) | set(current)) - set(ignore))
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
             for k in fields if _norm(saved.get(k)) != _norm(current.get(k))]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was written with a different config: " + "; ".join(diffs))


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _preview(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scaler: Any = None,
                    config: Mapping[str, Any] | None = None, ignore_config_fields: set[str] = frozenset(),
                    restore_rng: bool = False) -> dict[str, Any]:
    """Verify, check and load a checkpoint into whichever of model/optimizer/scaler are given; the payload.

    With `config`, the stored config must equal it except for `ignore_config_fields`. Everything is checked
    before anything is loaded, so a refused checkpoint leaves the model untouched.
    """
    payload = read_checkpoint(path)
    if config is not None:
        check_config(payload.get("config"), config, set(ignore_config_fields), path)
    if model is not None:
        check_state_dict(model, payload["model"], path)
        model.load_state_dict(payload["model"])
    if optimizer is not None:
        if payload.get("optimizer") is None:
            raise CheckpointError(f"checkpoint {path} stores no optimizer state")
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit ({e})") from e
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])
    if restore_rng:
        set_rng_state(payload["rng"])
    return payload
