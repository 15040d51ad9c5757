"""Training throughput: one full MLM training step of minitx's BertForMaskedLM against Hugging Face's
`transformers.BertForMaskedLM` with the same config, the same weights (`minitx.interop.to_hf_bert`) and the
same batch.

A step is what a training loop does per batch: forward, loss, backward, AdamW step, zero_grad. Implementations
are named `minitx:<attention backend>` and `hf:<attn_implementation>`. For each one, in this order:

1. **Gate.** With dropout off (eval mode) and in fp32, its loss on the batch must match the reference -- a
   `transformers.BertForMaskedLM` with eager attention holding the same weights -- within `loss_tolerance`
   (1e-5), and its gradients within `grad_tolerance` (relative norm over all parameters); see `training_gate`.
   Otherwise the row is "failed" and never timed: a fast step that computes another function is not a result.
2. **Trial.** One training step; an exception means "skipped" (this implementation cannot train here).
3. **Timing.** Warm-up steps, then timed steps *interleaved* with the other implementations round by round,
   the order rotated each round, so drift in the machine's speed (neighbours, clock changes) hits all alike.
   Dropout is on, with the same p on both sides, as in real training.

tokens/s = B * N / median step time, padding included (the model processes every position). The ratio to
HF is given as a ratio of medians and as the median of per-round ratios (paired: drift shared by a round
cancels). `transformers` is imported only through `minitx.interop`, which loads it lazily.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from minitx.attention.backends import available_backends, sdpa_runs_math
from minitx.bench.attention import is_unsupported
from minitx.bench.flops import device_peak, mfu_percent, transformer_flops
from minitx.bench.sidebyside import count_ops, matmul_peak
from minitx.bench.timing import (CPU_CLOCKS, check_run_options, cpu_peak_memory, cuda_peak_memory, time_cuda,
                                 time_host, torch_threads)
from minitx.bench.training_gate import gate, loss_and_grads
from minitx.bench.training_report import ratios, throughput
from minitx.data.mlm import mask_tokens
from minitx.interop.bert import to_hf_bert
from minitx.functional import IGNORE_INDEX
from minitx.models.bert import BertConfig, BertForMaskedLM
from minitx.tokenizers.wordpiece import SPECIAL_TOKENS
from minitx.training.optim import parameter_groups

DEFAULT_IMPLS = ("minitx:math", "minitx:math:full-head", "minitx:sdpa", "minitx:flash", "hf:eager", "hf:sdpa")
FULL_HEAD = "full-head"  # impl suffix: minitx with the MLM head at every position (sparse_prediction off)
HF_ATTENTION = ("eager", "sdpa")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
PAD_ID, MASK_ID = SPECIAL_TOKENS.index("[PAD]"), SPECIAL_TOKENS.index("[MASK]")
@dataclass
class TrainingBenchConfig:
    """Model size, batch and timing of the benchmark. Flat, so CLI flags map one to one onto fields."""

    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None            # None: 4 * d_model, as BERT
    seq_len: int = 128
    batch_size: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.1
    mlm_probability: float = 0.15
    min_length_fraction: float = 0.5   # each row has U[fraction * N, N] real tokens; the rest is padding
    precision: str = "fp32"            # "bf16": autocast around forward + loss (the gate always runs in fp32)
    impls: list[str] = field(default_factory=lambda: list(DEFAULT_IMPLS))
    repeats: int = 10                  # timed steps per implementation (median and IQR over these)
    warmup: int = 2                    # untimed steps per implementation, the trial step included
    lr: float = 1e-4
    weight_decay: float = 0.01
    loss_tolerance: float = 1e-5       # |loss - reference loss|, fp32, dropout off
    grad_tolerance: float = 1e-4       # ||grad - reference grad|| / ||reference grad|| over all parameters
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None         # CPU: torch.set_num_threads for the run (None keeps PyTorch's choice)
    cpu_clock: str = "wall"            # CPU: "wall" or "thread" (this thread's CPU time; needs threads=1)

    def model_config(self) -> BertConfig:
        """The minitx BertConfig; its own checks name a bad size (e.g. d_model not divisible by n_heads)."""
        return BertConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                          n_heads=self.n_heads, d_ff=self.d_ff or 4 * self.d_model, max_position=self.seq_len,
                          dropout=self.dropout, attention_dropout=self.attention_dropout,
                          sparse_prediction=True)  # minitx's default training step, as the pretrain recipe sets

    def validate(self) -> None:
        for name in ("seq_len", "batch_size", "repeats", "warmup"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size: expected > {len(SPECIAL_TOKENS)} (the special tokens), "
                             f"got {self.vocab_size}")
        self.model_config()
        for name in self.impls:
            family, which, head = split_impl(name)
            allowed = {"minitx": available_backends(), "hf": HF_ATTENTION}.get(family)
            if allowed is None or which not in allowed or head not in ("", FULL_HEAD) or (head and family == "hf"):
                raise ValueError(f"impls: expected 'minitx:<{'|'.join(available_backends())}>[:{FULL_HEAD}]' or "
                                 f"'hf:<{'|'.join(HF_ATTENTION)}>', got {name!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if not 0.0 < self.min_length_fraction <= 1.0 or not 0.0 < self.mlm_probability <= 1.0:
            raise ValueError(f"min_length_fraction, mlm_probability: expected values in (0, 1], got "
                             f"{self.min_length_fraction}, {self.mlm_probability}")
        check_run_options(self.device, self.cpu_clock, self.threads)

    def to_dict(self) -> dict:
        return asdict(self)


def make_batch(config: TrainingBenchConfig) -> dict[str, torch.Tensor]:
    """Seeded random MLM batch: ordinary token ids, padding at the end of most rows (row 0 is full, so the
    batch really is N long), and BERT's 15% corruption by `minitx.data.mask_tokens`, labels -100 elsewhere."""
    gen = torch.Generator().manual_seed(config.seed)
    b, n, v = config.batch_size, config.seq_len, config.vocab_size
    ids = torch.randint(len(SPECIAL_TOKENS), v, (b, n), generator=gen)
    lengths = torch.randint(max(1, math.ceil(config.min_length_fraction * n)), n + 1, (b,), generator=gen)
    lengths[0] = n
    real = torch.arange(n) < lengths[:, None]  # (B, N): True on real tokens
    ids = ids.masked_fill(~real, PAD_ID)
    inputs, labels = mask_tokens(ids, (~real).long(), v, MASK_ID, config.mlm_probability, generator=gen)
    if (labels == IGNORE_INDEX).all():  # a loss over no position is NaN: predict at least one token
        labels[0, 0] = ids[0, 0]
    return {"input_ids": inputs, "attention_mask": real.long(), "labels": labels}


def split_impl(name: str) -> tuple[str, str, str]:
    """'minitx:math:full-head' -> ('minitx', 'math', 'full-head'); 'hf:sdpa' -> ('hf', 'sdpa', '')."""
    family, _, rest = name.partition(":")
    which, _, head = rest.partition(":")
    return family, which, head


def build_impl(name: str, base: BertForMaskedLM, config: TrainingBenchConfig) -> tuple[nn.Module | None, str | None]:
    """(a train-mode copy of `base` on the device running `name`, None), or (None, why it cannot run here).

    `minitx:<backend>` is minitx's default step (the MLM head only at labelled positions, sparse_prediction);
    `minitx:<backend>:full-head` computes the head at every position, as transformers does (like-for-like)."""
    family, which, head = split_impl(name)
    device = torch.device(config.device)
    if name == "minitx:flash" and device.type != "cuda":
        return None, ("the Triton kernel runs on a CPU only in the interpreter (TRITON_INTERPRET=1), which checks "
                      "correctness but is not a speed path")
    if family == "minitx":
        model = copy.deepcopy(base)
        model.config.sparse_prediction = head != FULL_HEAD  # the deep copy owns its config
        model.bert.set_attention_backend(which)
    else:
        model = to_hf_bert(base)
        model.set_attn_implementation(which)
    return model.to(device).train(), None


def attention_name(model: nn.Module) -> str:
    """The attention code a model runs: minitx's backend, or HF's recorded `attn_implementation`."""
    if isinstance(model, BertForMaskedLM):
        head = "labelled positions" if model.config.sparse_prediction else "every position"
        backend, device = model.config.attention_backend, next(model.parameters()).device
        if backend == "sdpa" and sdpa_runs_math(model.config.attention_dropout, device.type):
            backend = "sdpa (math: dropout on a CPU)"
        return f"minitx {backend}, head at {head}"
    return f"transformers {getattr(model.config, '_attn_implementation', 'unknown')}"


def make_step(model: nn.Module, batch: dict, config: TrainingBenchConfig) -> Callable[[], None]:
    """One training step as a closure: forward and loss (under bf16 autocast if asked), backward, AdamW step
    with minitx's parameter groups (decay on matrices only), zero_grad."""
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)
    dtype, device_type = PRECISIONS[config.precision], torch.device(config.device).type

    def step() -> None:
        with torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def time_interleaved(steps: dict[str, Callable[[], object]], *, warmup: int, repeats: int,
                     device: torch.device | str = "cpu",
                     clock: Callable[[], float] | None = None) -> dict[str, list[float]]:
    """Per-step times in ms of every callable, in rounds: each round runs each step once, the order rotated
    by one per round (A B C, B C A, ...), so sample i of every step comes from the same round. Uses the bench
    timers: CUDA events on a GPU (no L2 flush: a step's working set dwarfs the cache), `clock` on the CPU."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if torch.device(device).type == "cuda":
                samples[name] += time_cuda(steps[name], warmup=0, repeats=1, flush_l2=False)
            else:
                samples[name] += time_host(steps[name], warmup=0, repeats=1, clock=clock or CPU_CLOCKS["wall"])
    return samples


def peak_memory(step: Callable[[], None], device: torch.device) -> tuple[int | None, str]:
    """Peak bytes allocated during one step beyond what was live before it (CUDA: the allocator's counter;
    CPU: the profiler's allocation records, `cpu_peak_memory`)."""
    if device.type == "cuda":
        peak, note = cuda_peak_memory(step, device)
    else:
        peak, note = cpu_peak_memory(step), "torch.profiler(profile_memory=True): allocations minus frees, at most"
    return peak, (f"{note} over one step: activations, gradients and optimizer temporaries beyond the resident "
                  "weights and AdamW state")


def _prepare(name: str, build: Callable, batch: dict, reference: tuple, config: TrainingBenchConfig):
    """(record, step or None): build the model, gate it, try one training step (the first warm-up step)."""
    record = dict(impl=name, attention=None, status="skipped", reason=None, gate=None, parameters=None,
                  timings_ms=None, tokens_per_s=None, tokens_per_s_p25=None, tokens_per_s_p75=None, ratio_to=None,
                  peak_memory_bytes=None, memory_note=None, ops_per_step=None, model_flops_per_step=None,
                  gflops=None, mfu_percent=None, matmul_peak=None)
    try:
        model, record["reason"] = build()
        if model is None:
            return record, None
        record["attention"] = attention_name(model)
        record["parameters"] = sum(p.numel() for p in model.parameters())  # tied tensors counted once
        record["status"], record["reason"], record["gate"] = gate(model, batch, reference, config)
        if record["status"] != "ok":
            return record, None
        step = make_step(model, batch, config)
        step()
    except Exception as exc:  # the implementation's own complaint is the most useful reason to record
        record["status"] = "skipped" if is_unsupported(exc) else "failed"
        record["reason"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        return record, None
    return record, step


def run_training_bench(config: TrainingBenchConfig,
                       extra_impls: dict[str, Callable[[BertForMaskedLM], nn.Module]] | None = None,
                       progress: Callable[[str], object] | None = print) -> list[dict]:
    """One record per implementation of `config.impls`, plus `extra_impls` (name -> a function building a
    model from a copy of the base model; tests pass a deliberately wrong one), all on the same batch."""
    config.validate()
    with torch_threads(config.threads):
        return _run(config, extra_impls or {}, progress or (lambda line: None))


def step_flops(config: TrainingBenchConfig) -> float:
    """Model FLOPs of one step (bench.11): forward + backward of the full model on B x N tokens, the MLM head at
    every position (its C x C transform counted as extra matrix weights); the same count for every row, so a
    row that skips work (minitx's sparse head) shows it as a higher utilisation."""
    c = config
    return transformer_flops(n_layers=c.n_layers, d_model=c.d_model, d_ff=c.d_ff or 4 * c.d_model,
                             vocab_size=c.vocab_size, batch=c.batch_size, seq_len=c.seq_len, causal=False,
                             extra_matrix_params=c.d_model**2)


def measure_peak(config: TrainingBenchConfig) -> dict | None:
    """The matmul peak MFU divides by: measured on the CPU in this run (fp32, on the run's threads and clock,
    bench.12); on a GPU the spec sheet's dense peak for the precision, if the GPU is listed."""
    device = torch.device(config.device)
    if device.type == "cpu":
        return dict(matmul_peak(clock=CPU_CLOCKS[config.cpu_clock]), source="measured in this run")
    known = device_peak(torch.cuda.get_device_name(device), config.precision)
    return None if known is None else dict(gflops=known[0] * 1e3, source="spec sheet, dense")


def efficiency(record: dict, step: Callable[[], None], flops: float, peak: dict | None, device) -> None:
    """Add op counts per step (profiler, one more step: forward + backward + optimizer) and MFU to a timed record."""
    record["ops_per_step"] = count_ops(step) if torch.device(device).type == "cpu" else None
    record["model_flops_per_step"] = flops
    record["gflops"] = flops / (record["timings_ms"]["median_ms"] * 1e-3) / 1e9
    record["mfu_percent"] = mfu_percent(flops, record["timings_ms"]["median_ms"], peak["gflops"]) if peak else None


def _run(config: TrainingBenchConfig, extra_impls: dict, progress: Callable[[str], object]) -> list[dict]:
    """Reference, then build + gate + trial per implementation, then the interleaved timing of those left."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    base = BertForMaskedLM(config.model_config())
    batch = {k: t.to(device) for k, t in make_batch(config).items()}
    reference_model = to_hf_bert(base).to(device)
    reference_model.set_attn_implementation("eager")
    reference = loss_and_grads(reference_model, batch)
    del reference_model
    tokens = dict(tokens_per_step=batch["input_ids"].numel(),
                  real_tokens_per_step=int(batch["attention_mask"].sum()),
                  predicted_tokens_per_step=int((batch["labels"] != IGNORE_INDEX).sum()))
    builders = {name: (lambda name=name: build_impl(name, base, config)) for name in config.impls}
    builders.update({name: (lambda f=f: (f(copy.deepcopy(base)).to(device).train(), None))
                     for name, f in extra_impls.items()})
    records, steps = {}, {}
    for name, build in builders.items():
        records[name], step = _prepare(name, build, batch, reference, config)
        records[name].update(tokens)
        if step is not None:
            steps[name] = step
        progress(f"{name:<14} {records[name]['status']}" + (f": {records[name]['reason']}"
                                                           if records[name]["reason"] else ""))
    peak = measure_peak(config)
    if peak:
        progress(f"matmul peak: {peak['gflops']:.1f} GFLOP/s ({peak['source']})")
    samples = time_interleaved(steps, warmup=config.warmup - 1, repeats=config.repeats, device=device,
                               clock=CPU_CLOCKS[config.cpu_clock])
    for name, times in samples.items():
        records[name].update(throughput(times, tokens["tokens_per_step"]))
        records[name]["peak_memory_bytes"], records[name]["memory_note"] = peak_memory(steps[name], device)
        efficiency(records[name], steps[name], step_flops(config), peak, device)
        records[name]["matmul_peak"] = peak
        progress(f"{name:<14} {records[name]['timings_ms']['median_ms']:.1f} ms/step, "
                 f"{records[name]['tokens_per_s']:.0f} tokens/s")
    ratios(list(records.values()), samples)
    return list(records.values())


# Presets for unset CLI flags: a CPU size that runs in a minute or two on one core, and BERT-base on a GPU.
PRESETS = {
    "cpu": dict(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, d_ff=1024, seq_len=128, batch_size=16,
                precision="fp32", repeats=8, warmup=2),
    "gpu": dict(vocab_size=30522, d_model=768, n_layers=12, n_heads=12, d_ff=3072, seq_len=512, batch_size=32,
                precision="bf16", repeats=20, warmup=3),
}
