"""The training loop: schedule (opt.5-7), parameter groups (opt.2), clipping (opt.8), accumulation (opt.9),
exact resume, non-finite stops, metrics and a model that learns. Checkpoint files: test_checkpoint.py;
DDP: test_ddp.py."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from minitx.seeding import step_seed
from minitx.training.checkpoint import read_checkpoint
from minitx.training.config import TrainConfig
from minitx.training.loop import NonFiniteLossError, train
from minitx.training.optim import lr_at, parameter_groups

VOCAB = 10



class Toy(nn.Module):
    """Embedding -> LayerNorm -> MLP with dropout -> logits: every kind of parameter the decay rule sorts."""

    def __init__(self, dropout: float = 0.0, width: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, width)
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 2 * width)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * width, VOCAB)

    def forward(self, ids):
        return self.out(self.drop(torch.relu(self.fc(self.norm(self.emb(ids))))))


def make_batch(step: int, micro: int, size: int = 8, n: int = 6, rank: int = 0) -> dict:
    """Task: predict (id + 3) mod V. Pure in (step, micro, rank), like a recipe's batch_fn."""
    g = torch.Generator().manual_seed(10_000 * step + 100 * micro + rank)
    ids = torch.randint(0, VOCAB, (size, n), generator=g)
    return {"input_ids": ids, "labels": (ids + 3) % VOCAB}


def batch_fn(step, micro, rank, world_size):
    return make_batch(step, micro)


def loss_fn(model, batch):
    logits = model(batch["input_ids"])
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
    acc = (logits.argmax(-1) == batch["labels"]).float().mean()
    return loss, {"acc": acc}


def cfg(tmp_path=None, **kw) -> TrainConfig:
    base = dict(lr=1e-2, max_steps=4, warmup_steps=0, schedule="constant", grad_clip=0.0, weight_decay=0.0,
                out_dir=str(tmp_path) if tmp_path else "", progress=False, log_every=1, seed=0)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------ schedule
def reference_lr(t, lr, w, total, schedule, r):
    """(opt.5)-(opt.7) written straight from docs/math/optimization.md."""
    if w > 0 and t <= w:
        return lr * t / w
    if schedule == "constant":
        return lr
    p = min(1.0, (t - w) / max(1, total - w))
    if schedule == "linear":
        return lr * (1 - (1 - r) * p)
    return lr * (r + (1 - r) * (1 + math.cos(math.pi * p)) / 2)


@given(lr=st.floats(1e-5, 1.0), warmup=st.integers(0, 50), total=st.integers(1, 300),
       schedule=st.sampled_from(["linear", "cosine", "constant"]), r=st.floats(0.0, 1.0), data=st.data())
def test_lr_schedule_matches_equations(lr, warmup, total, schedule, r, data):
    """(opt.5) warmup, (opt.6) linear and (opt.7) cosine decay, at any step, and their end points."""
    with pytest.warns(UserWarning, match="warmup_steps") if warmup > total else contextlib.nullcontext():
        c = TrainConfig(lr=lr, warmup_steps=warmup, max_steps=total, schedule=schedule, min_lr_ratio=r)
    t = data.draw(st.integers(0, total))
    assert lr_at(t, c) == pytest.approx(reference_lr(t, lr, warmup, total, schedule, r), rel=1e-12, abs=1e-15)
    if warmup > 0:
        assert lr_at(min(warmup, total), c) == pytest.approx(lr * min(warmup, total) / warmup)
    if schedule != "constant" and total > warmup:
        assert lr_at(total, c) == pytest.approx(r * lr)                   # decays to min_lr exactly at T
        after = [lr_at(s, c) for s in range(warmup + 1, total + 1)]
        assert all(a >= b - 1e-15 for a, b in zip(after, after[1:]))      # never rises after warmup


def test_cosine_midpoint_and_bad_step():
    c = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, schedule="cosine", min_lr_ratio=0.2)
    assert lr_at(60, c) == pytest.approx(0.6)   # cos(pi/2) = 0: halfway between peak and floor (opt.7)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, c)


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("field,value", [("lr", 0.0), ("max_steps", 0), ("schedule", "step"),
                                         ("precision", "fp8"), ("grad_accum_steps", 0), ("betas", (0.9,)),
                                         ("min_lr_ratio", 1.5)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_maps_onto_cli_flags():
    from minitx.cli import add_config_arguments, config_from_args
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(["--betas", "0.8", "0.95", "--no-progress", "--schedule", "cosine", "--lr", "3e-4"])
    c = config_from_args(TrainConfig, args)
    assert (c.betas, c.progress, c.schedule, c.lr) == ((0.8, 0.95), False, "cosine", 3e-4)
    with pytest.raises(SystemExit):
        parser.parse_args(["--schedule", "step"])  # choices come from the field's metadata


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="precision"):
        train(Toy(), batch_fn, loss_fn, cfg(precision="fp16", device="cpu"))


def test_bf16_autocast_on_cpu_tracks_fp32():
    r32 = train(Toy(), batch_fn, loss_fn, cfg(max_steps=1))
    r16 = train(Toy(), batch_fn, loss_fn, cfg(max_steps=1, precision="bf16"))
    assert r16.metrics["loss"] == pytest.approx(r32.metrics["loss"], rel=2e-2)
    assert r16.metrics["loss"] != r32.metrics["loss"]  # autocast really ran in bf16


# ------------------------------------------------------------------------------------------ parameter groups
def test_parameter_groups_exclude_biases_norms_and_frozen():
    """(opt.4): 2-D and up decayed; 1-D (biases, LayerNorm) not; frozen parameters left out."""
    model = Toy()
    groups = {g["weight_decay"]: set(g["param_names"]) for g in parameter_groups(model, 0.1)}
    assert groups == {0.1: {"emb.weight", "fc.weight", "out.weight"},
                      0.0: {"norm.weight", "norm.bias", "fc.bias", "out.bias"}}
    model.fc.requires_grad_(False)
    names = {n for g in parameter_groups(model, 0.1) for n in g["param_names"]}
    assert names == {"emb.weight", "out.weight", "norm.weight", "norm.bias", "out.bias"}
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        parameter_groups(model, 0.1)


def test_decoupled_weight_decay_shrinks_matrices_only():
    """(opt.1)-(opt.2) with g = 0: Adam's moment term vanishes and θ ← θ(1 − ηλ) for decayed tensors only."""
    model = Toy()
    before = copy.deepcopy(model.state_dict())
    zero_loss = lambda m, b: ((m(b["input_ids"]) * 0.0).sum(), {})  # noqa: E731 (a real graph, zero grads)
    train(model, batch_fn, zero_loss, cfg(max_steps=1, lr=0.1, weight_decay=0.5))
    for name, p in model.state_dict().items():
        factor = 1 - 0.1 * 0.5 if before[name].ndim >= 2 else 1.0
        torch.testing.assert_close(p, before[name] * factor, rtol=1e-6, atol=1e-7, msg=name)


def test_frozen_parameters_do_not_move():
    model = Toy()
    model.emb.requires_grad_(False)
    emb = model.emb.weight.detach().clone()
    fc = model.fc.weight.detach().clone()
    train(model, batch_fn, loss_fn, cfg(max_steps=2, weight_decay=0.1))
    assert torch.equal(model.emb.weight, emb)
    assert not torch.equal(model.fc.weight, fc)


# ------------------------------------------------------------------------------------------ accumulation, clipping
def test_accumulating_four_micro_batches_of_two_equals_one_batch_of_eight():
    """(opt.9): the mean of per-micro-batch means (equal sizes) is the whole-batch mean, so one step agrees."""
    whole = lambda step, micro, rank, ws: make_batch(step, 0, size=8)  # noqa: E731
    parts = lambda step, micro, rank, ws: {k: v[2 * micro: 2 * micro + 2]  # noqa: E731
                                           for k, v in make_batch(step, 0, size=8).items()}
    a, b = Toy(), Toy()
    ra = train(a, whole, loss_fn, cfg(max_steps=3, weight_decay=0.1, grad_clip=1.0))
    rb = train(b, parts, loss_fn, cfg(max_steps=3, weight_decay=0.1, grad_clip=1.0, grad_accum_steps=4))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)
    assert rb.metrics["loss"] == pytest.approx(ra.metrics["loss"], abs=1e-6)
    assert rb.metrics["grad_norm"] == pytest.approx(ra.metrics["grad_norm"], rel=1e-5)


def _true_grad_norm(model, batch):
    model = copy.deepcopy(model)
    loss_fn(model, batch)[0].backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()


@pytest.mark.parametrize("clip", [0.05, 1e3])
def test_clipping_by_global_norm(clip):
    """(opt.8): the record holds the pre-clip norm; after clipping the global norm is min(norm, clip)."""
    model = Toy()
    expected = _true_grad_norm(model, make_batch(1, 0))
    result = train(model, batch_fn, loss_fn, cfg(max_steps=1, grad_clip=clip))
    assert result.metrics["grad_norm"] == pytest.approx(expected, rel=1e-5)
    after = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert after == pytest.approx(min(expected, clip), rel=1e-5)


# ------------------------------------------------------------------------------------------ determinism, resume
def test_step_seed_is_distinct_across_steps_micro_steps_and_ranks():
    seeds = {step_seed(0, s, m, r) for s in range(50) for m in range(4) for r in range(4)}
    assert len(seeds) == 50 * 4 * 4


def test_same_seed_same_run_and_dropout_is_on():
    losses = [[r["loss"] for r in train(Toy(0.3), batch_fn, loss_fn, cfg(seed=s)).history] for s in (1, 1, 2)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]  # the seed reaches dropout: different seed, different masks


def test_resume_is_bit_exact_with_dropout(tmp_path):
    """Crash after step 3 (checkpoint at 2), resume in a fresh model: every logged loss and final weight equal."""
    full = Toy(0.3)
    reference = train(full, batch_fn, loss_fn, cfg(tmp_path / "a", max_steps=6, weight_decay=0.1,
                                                   warmup_steps=2, schedule="cosine", grad_clip=0.5))

    def crashing(step, micro, rank, ws):
        if step == 4:
            raise KeyboardInterrupt("simulated crash")
        return batch_fn(step, micro, rank, ws)

    c = cfg(tmp_path / "b", max_steps=6, weight_decay=0.1, warmup_steps=2, schedule="cosine", grad_clip=0.5,
            checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(Toy(0.3), crashing, loss_fn, c)
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it, not rely on it
    resumed_model = Toy(0.3, seed=99)
    resumed = train(resumed_model, batch_fn, loss_fn, cfg(**{**c.__dict__, "resume": True}))
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]  # the dead run's step 3 was replaced, not repeated
    assert [r["loss"] for r in lines] == [r["loss"] for r in reference.history]
    for (name, p), q in zip(full.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), name
    assert resumed.step == 6


def test_resume_without_checkpoint_warns_and_starts_fresh(tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint"):
        result = train(Toy(), batch_fn, loss_fn, cfg(tmp_path, max_steps=2, resume=True))
    assert [r["step"] for r in result.history] == [1, 2]


# ------------------------------------------------------------------------------------------ non-finite
def _poisoned(at_step, kind):
    def fn(model, batch):
        loss, metrics = loss_fn(model, batch)
        if int(batch["step"]) == at_step:
            if kind == "loss":
                loss = loss * float("nan")
            else:  # finite loss (0), NaN gradient: d sqrt(u)/du at u = 0 times du/dw = 0
                w = model.fc.weight
                loss = loss + torch.sqrt(((w - w.detach()) ** 2).sum())
        return loss, metrics
    return fn


@pytest.mark.parametrize("kind,message", [("loss", "loss is nan"), ("grad", "gradient norm is nan")])
def test_non_finite_stops_and_keeps_last_good_checkpoint(tmp_path, kind, message):
    stepped = lambda step, micro, rank, ws: {**make_batch(step, micro), "step": torch.tensor(step)}  # noqa: E731
    c = cfg(tmp_path, max_steps=6, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=f"step 3: {message}"):
        train(Toy(), stepped, _poisoned(3, kind), c)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    manifest = (tmp_path / "checkpoint.json").read_text()
    assert json.loads(manifest)["step"] == 2
    with pytest.raises(NonFiniteLossError, match="step 3"):  # resuming replays step 3 and stops again
        train(Toy(), stepped, _poisoned(3, kind), cfg(**{**c.__dict__, "resume": True}))
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert (tmp_path / "checkpoint.json").read_text() == manifest


# ------------------------------------------------------------------------------------------ metrics, learning
def test_metrics_jsonl_fields_and_values(tmp_path):
    model = Toy()
    first_loss = loss_fn(copy.deepcopy(model), make_batch(1, 0))[0].item()
    evals = []

    def eval_fn(m):
        evals.append(m.training)
        return {"val_loss": loss_fn(m, make_batch(0, 0))[0]}

    c = cfg(tmp_path, max_steps=5, log_every=2, eval_every=2, warmup_steps=2, schedule="linear")
    result = train(model, batch_fn, loss_fn, c, eval_fn=eval_fn)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history
    train_lines = [r for r in lines if r["split"] == "train"]
    assert [r["step"] for r in train_lines] == [2, 4, 5]                       # every log_every, and the last
    assert [r["step"] for r in lines if r["split"] == "eval"] == [2, 4, 5]     # every eval_every, and the end
    assert evals == [False, False, False]                                      # eval_fn sees eval mode
    for r in train_lines:
        assert set(r) == {"step", "split", "loss", "lr", "grad_norm", "tokens_per_s", "acc"}
        assert r["lr"] == pytest.approx(lr_at(r["step"], c))
        assert r["tokens_per_s"] > 0 and 0 <= r["acc"] <= 1
    one = train(Toy(), batch_fn, loss_fn, cfg(max_steps=1))
    assert one.metrics["loss"] == pytest.approx(first_loss, rel=1e-6)  # the logged loss is the real one
    assert result.paths["metrics"] == tmp_path / "metrics.jsonl"


def test_metrics_are_averaged_over_micro_steps():
    counted = lambda model, batch: (loss_fn(model, batch)[0], {"micro": batch["micro"]})  # noqa: E731
    fn = lambda step, micro, rank, ws: {**make_batch(step, micro), "micro": torch.tensor(float(micro))}  # noqa: E731
    result = train(Toy(), fn, counted, cfg(max_steps=1, grad_accum_steps=4))
    assert result.metrics["micro"] == pytest.approx((0 + 1 + 2 + 3) / 4)


def test_toy_model_learns():
    """A mapping a one-layer MLP can represent: the loss falls at least tenfold in 150 steps."""
    result = train(Toy(), batch_fn, loss_fn, cfg(max_steps=150, lr=2e-2, warmup_steps=10, schedule="cosine",
                                                 grad_clip=1.0, weight_decay=0.01, log_every=10))
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < first / 10, (first, last)
    assert result.history[-1]["acc"] == 1.0


def test_resuming_a_finished_run_trains_nothing_and_reports_its_log(tmp_path):
    done = train(Toy(), batch_fn, loss_fn, cfg(tmp_path, max_steps=3))
    again = train(Toy(seed=5), batch_fn, loss_fn, cfg(tmp_path, max_steps=3, resume=True))
    assert again.metrics == done.metrics and again.history == done.history


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_learns_and_saves_the_scaler(tmp_path, precision):
    """Autocast on CUDA; fp16 goes through GradScaler (unscaled before clipping, its state checkpointed)."""
    result = train(Toy(), batch_fn, loss_fn, cfg(tmp_path, max_steps=150, lr=2e-2, warmup_steps=10,
                                                 schedule="cosine", grad_clip=1.0, log_every=10,
                                                 precision=precision, device="cuda"))
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 10
    assert (read_checkpoint(tmp_path / "checkpoint.pt")["scaler"] is not None) == (precision == "fp16")


def test_a_recipe_config_may_extend_the_resumable_fields(tmp_path):
    import dataclasses as dc

    @dc.dataclass
    class RecipeConfig(TrainConfig):
        resumable_fields = TrainConfig.resumable_fields | {"report_name"}
        report_name: str = dc.field(default="a", metadata={"help": "an I/O-only field"})

    base = dict(lr=1e-2, max_steps=2, out_dir=str(tmp_path), progress=False, log_every=1)
    train(Toy(), batch_fn, loss_fn, RecipeConfig(**base))
    resumed = train(Toy(), batch_fn, loss_fn, RecipeConfig(**base, resume=True, report_name="b"))
    assert resumed.step == 2 and [r["step"] for r in resumed.history] == [1, 2]


def test_eval_record_with_stop_ends_the_run_and_checkpoints_that_step(tmp_path):
    calls = []

    def eval_fn(m):
        calls.append(len(calls) + 1)
        return {"val_loss": loss_fn(m, make_batch(0, 0))[0], "stop": len(calls) == 2}  # stop at the 2nd eval

    c = cfg(tmp_path, max_steps=20, eval_every=3, checkpoint_every=0)
    result = train(Toy(), batch_fn, loss_fn, c, eval_fn=eval_fn)
    assert result.stopped_early and result.step == 6 and calls == [1, 2]
    evals = [r for r in result.history if r["split"] == "eval"]
    assert [(r["step"], r["stop"]) for r in evals] == [(3, 0.0), (6, 1.0)]
    assert max(r["step"] for r in result.history) == 6
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 6
    finished = train(Toy(), batch_fn, loss_fn, cfg(max_steps=5))
    assert not finished.stopped_early and finished.step == 5
