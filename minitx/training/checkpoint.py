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
from pathlib import Path
from typing import Any, Mapping

import torch

from minitx.seeding import rng_state, set_rng_state
from minitx.training.guards import process_running

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or does not fit: corrupt, truncated, wrong model or wrong config."""


def manifest_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C or a full disk mid-write: leave no checkpoint-sized leftover behind
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete `.checkpoint.pt.tmp.<pid>` (and the manifest's) left by a writer that was killed (SIGKILL gives no
    chance to clean up): any whose pid is no longer running, or is ours. Returns what was removed."""
    removed = []
    for name in (path.name, manifest_path(path).name):
        for tmp in path.parent.glob(f".{name}.tmp.*"):
            pid = tmp.name.rsplit(".", 1)[-1]
            if pid.isdigit() and (int(pid) == os.getpid() or not process_running(int(pid))):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _first_non_finite(state: Any, prefix: str = "") -> str | None:
    """The key path of the first floating tensor holding inf/NaN in a (nested) state dict, or None."""
    if isinstance(state, torch.Tensor):
        return None if not state.is_floating_point() or bool(torch.isfinite(state).all()) else prefix
    items = state.items() if isinstance(state, Mapping) else enumerate(state) if isinstance(state, list) else ()
    for key, value in items:
        bad = _first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if bad is not None:
            return bad
    return None


# ---------------------------------------------------------------------------------------------------- save
def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, step: int,
                    optimizer: Any = None, scheduler: Mapping[str, Any] | None = None,
                    scaler: Any = None, config: Mapping[str, Any] | None = None,
                    extra_state: Mapping[str, Any] | None = None) -> Path:
    """Write `path` and its manifest atomically; returns `path`. Call on rank 0 only.

    `model` is the bare module (unwrap DistributedDataParallel first) so the keys carry no `module.` prefix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
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
    for part in ("model", "optimizer"):
        bad = _first_non_finite(payload[part]) if payload[part] is not None else None
        if bad is not None:
            raise CheckpointError(f"checkpoint {path}: {part} state {bad} is not finite (inf/NaN); refusing to "
                                  f"write it (the checkpoint already there, if any, is left untouched)")
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
        return read_manifest(path)["sha256"]
    except CheckpointError:
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
    manifest = read_manifest(path)
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
    _check_payload(payload, path)
    return payload


# The manifest's keys and the types a reader relies on ("previous_sha256" may be null).
MANIFEST_TYPES = {"sha256": str, "bytes": int}
PAYLOAD_TYPES = {"step": int, "model": dict, "optimizer": (dict, type(None)), "scheduler": (dict, type(None)),
                 "scaler": (dict, type(None)), "rng": dict, "config": (dict, type(None)),
                 "extra_state": (dict, type(None))}


def read_run_checkpoint(path: str | os.PathLike, argument: str = "path",
                        kind: str = "run directory") -> tuple[Path, dict[str, Any]]:
    """(checkpoint path, verified payload) of a run directory or of its checkpoint.pt itself: what every
    command that loads a trained run starts with (fill-mask, classify, generate)."""
    path = Path(path)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise ValueError(f"{argument}: expected a {kind} holding checkpoint.pt, or a checkpoint file, "
                         f"got {str(path)!r} (no such file)")
    return ckpt, read_checkpoint(ckpt)


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (a manifest, model_config.json): CheckpointError naming the file
    when it is missing, unreadable, not JSON, too deeply nested, or valid JSON of another kind (null, a list)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{what} {path}: missing or unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} {path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """checkpoint.json beside `path`, checked for the keys and types verification needs."""
    where = manifest_path(path)
    manifest = read_json_object(where, f"checkpoint {Path(path)}: manifest")
    for key, tp in MANIFEST_TYPES.items():
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, tp):
            raise CheckpointError(f"checkpoint {path}: manifest {where.name} key {key!r}: expected "
                                  f"{tp.__name__}, got {value!r}; cannot verify the file")
    if not isinstance(manifest.get("previous_sha256"), (str, type(None))):
        raise CheckpointError(f"checkpoint {path}: manifest {where.name} key 'previous_sha256': expected a "
                              f"string or null, got {manifest['previous_sha256']!r}")
    return manifest


def _check_payload(payload: dict[str, Any], path: Any) -> None:
    for key, tp in PAYLOAD_TYPES.items():
        if key not in payload:
            raise CheckpointError(f"checkpoint {path}: payload has no {key!r} (not written by save_checkpoint)")
        if isinstance(payload[key], bool) or not isinstance(payload[key], tp):
            raise CheckpointError(f"checkpoint {path}: payload {key!r} has type {type(payload[key]).__name__}")
    bad = [k for k, v in payload["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: model state holds non-tensor entries {_preview(map(str, bad))}")


def require_keys(mapping: Any, keys: dict[str, type | tuple[type, ...]], what: str, path: Any) -> None:
    """`mapping` is a dict holding every key of `keys` with a value of its type: CheckpointError otherwise (for
    the recipes' extra_state: model_config, tokenizer, classifier)."""
    if not isinstance(mapping, dict):
        raise CheckpointError(f"checkpoint {path}: {what}: expected a dict, got {type(mapping).__name__}")
    for key, tp in keys.items():
        if key not in mapping:
            raise CheckpointError(f"checkpoint {path}: {what} has no {key!r}")
        if isinstance(mapping[key], bool) and tp is not bool or not isinstance(mapping[key], tp):
            raise CheckpointError(f"checkpoint {path}: {what}[{key!r}]: expected {getattr(tp, '__name__', tp)}, "
                                  f"got {type(mapping[key]).__name__}")


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Any = "") -> None:
    """Refuse a state dict that belongs to another model: missing or unexpected keys, or any shape mismatch."""
    own = model.state_dict()
    not_tensors = sorted(k for k in state if not isinstance(state[k], torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"checkpoint {path}: expected tensors, got {type(state[not_tensors[0]]).__name__} "
                              f"for {_preview(not_tensors)}")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    # load_state_dict would cast an int or bool tensor into a float weight without a word: refuse it by name
    kinds = [f"{k}: checkpoint {state[k].dtype} vs model {own[k].dtype}" for k in own
             if k in state and _kind(state[k]) != _kind(own[k])]
    problems = []
    if kinds:
        problems.append(f"dtype mismatch (integer or bool where floats belong, or the reverse) {_preview(kinds)}")
    if missing:
        problems.append(f"missing keys {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_preview(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_preview(shapes)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(problems))


def _kind(t: torch.Tensor) -> str:
    return "bool" if t.dtype == torch.bool else "float" if t.is_floating_point() or t.is_complex() else "int"


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


def _preview(items, n: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None,
                    optimizer: Any = None, scaler: Any = None,
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
        try:
            set_rng_state(payload["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path}: RNG state unreadable ({type(e).__name__}: {e})") from e
    return payload
