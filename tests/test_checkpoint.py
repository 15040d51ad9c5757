"""Checkpoint files: round trip, atomic writes, corruption/truncation/mismatch refused with a message naming the
problem, and loading that never executes code (weights_only)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from minitx.training.checkpoint import (CheckpointError, load_checkpoint, manifest_path, read_checkpoint,
                                        save_checkpoint)
from minitx.training.config import RESUMABLE_OVERRIDES, TrainConfig
from minitx.training.loop import train


class Small(nn.Module):
    def __init__(self, width=4, out_name="out"):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, width)
        self.norm = nn.LayerNorm(width)
        setattr(self, out_name, nn.Linear(width, 2))


def _saved(tmp_path, **kw):
    model = Small()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.fc.weight.sum().backward()
    opt.step()  # so the optimizer has moment tensors to save
    path = save_checkpoint(tmp_path / "checkpoint.pt", model=model, step=7, optimizer=opt,
                           scheduler={"step": 7}, config=dataclasses.asdict(TrainConfig(lr=0.1)),
                           extra_state={"tokenizer": "tok.json", "model_config": {"d_model": 4, "names": ["a"]}},
                           **kw)
    return model, opt, path


def test_round_trip_restores_model_optimizer_rng_and_extra_state(tmp_path):
    model, opt, path = _saved(tmp_path)
    expected = (torch.rand(3), random.random(), np.random.rand())
    fresh = Small(width=4)
    nn.init.zeros_(fresh.fc.weight)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    payload = load_checkpoint(path, fresh, fresh_opt, config=dataclasses.asdict(TrainConfig(lr=0.1)),
                              restore_rng=False)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert payload["step"] == 7 and payload["scheduler"] == {"step": 7}
    assert payload["extra_state"] == {"tokenizer": "tok.json", "model_config": {"d_model": 4, "names": ["a"]}}
    # The RNG states saved were those at save time (captured above, untouched since): restoring them after
    # other draws replays the same numbers from torch, Python's random and numpy.
    torch.rand(5), random.random(), np.random.rand()
    load_checkpoint(path, restore_rng=True)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary files were moved into place


def test_manifest_holds_the_payload_hash(tmp_path):
    _, _, path = _saved(tmp_path)
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["bytes"] == path.stat().st_size and manifest["step"] == 7


def test_corrupt_byte_is_refused(tmp_path):
    _, _, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*sha256"):
        read_checkpoint(path)


def test_truncated_file_is_refused(tmp_path):
    _, _, path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path)


def test_missing_file_or_manifest_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")
    _, _, path = _saved(tmp_path)
    manifest_path(path).unlink()
    with pytest.raises(CheckpointError, match="manifest"):
        read_checkpoint(path)


def test_wrong_model_is_refused_and_left_untouched(tmp_path):
    _, _, path = _saved(tmp_path)
    other = Small(out_name="head")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing keys head\.bias, head\.weight; unexpected keys out\.bias"):
        load_checkpoint(path, other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    with pytest.raises(CheckpointError, match=r"shape mismatch fc\.weight: checkpoint \(4, 3\) vs model \(5, 3\)"):
        load_checkpoint(path, Small(width=5))


def test_different_config_is_refused_naming_the_field(tmp_path):
    _, _, path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=r"different config: lr: checkpoint 0.1 vs now 0.2"):
        load_checkpoint(path, Small(), config=dataclasses.asdict(TrainConfig(lr=0.2)))
    # I/O and logging fields may change between a run and its resumption.
    changed = dataclasses.asdict(TrainConfig(lr=0.1, out_dir="elsewhere", log_every=3, resume=True))
    load_checkpoint(path, Small(), config=changed, ignore_config_fields=RESUMABLE_OVERRIDES)


def test_resume_under_a_different_config_is_refused(tmp_path):
    model = Small()
    batch_fn = lambda step, micro, rank, ws: torch.randn(4, 3)  # noqa: E731
    loss_fn = lambda m, x: (m.out(m.norm(m.fc(x))).pow(2).mean(), {})  # noqa: E731
    base = dict(max_steps=2, out_dir=str(tmp_path), progress=False)
    train(model, batch_fn, loss_fn, TrainConfig(**base))
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.001 vs now 0.002"):
        train(Small(), batch_fn, loss_fn, TrainConfig(**{**base, "lr": 2e-3, "resume": True}))
    with pytest.raises(CheckpointError, match="at step 2, past max_steps=1"):  # shrinking is refused
        train(Small(), batch_fn, loss_fn, TrainConfig(**{**base, "max_steps": 1, "resume": True}))


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_never_executes_code(tmp_path):
    """A file whose pickle would run code, with a manifest that vouches for it, is still refused."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": _Payload(marker)}, path)
    data = path.read_bytes()
    manifest_path(path).write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}))
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(path)
    assert not marker.exists()


def test_crash_between_manifest_and_payload_leaves_a_loadable_checkpoint(tmp_path):
    """save_checkpoint moves the manifest in first; if the payload never follows, the old one still verifies."""
    model, opt, path = _saved(tmp_path)
    old = path.read_bytes()
    save_checkpoint(path, model=model, step=8, optimizer=opt)
    path.write_bytes(old)  # as if the process died before the payload's os.replace
    assert read_checkpoint(path)["step"] == 7
