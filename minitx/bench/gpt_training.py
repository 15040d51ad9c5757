"""GPT training step side by side: minitx's `GPT` against `transformers.GPT2LMHeadModel` with the same weights
(`minitx.interop.to_hf_gpt2`), the same batch and the same AdamW (minitx's parameter groups on both sides).

A step is forward, next-token loss, backward, `torch.optim.AdamW.step()`, `zero_grad(set_to_none=True)`. The
gate runs first, in eval mode (dropout off) and fp32: the losses within `loss_tolerance`, and the gradients
parameter by parameter: minitx's are carried into GPT-2's names and layouts (the fused, transposed `c_attn`,
the Conv1D weights) by `to_hf_gpt2`, the converter that carried the weights, and compared with HF's as a whole
and tensor by tensor (`training_gate`). MFU divides the model FLOPs of a step
(bench.11, causal) by the matmul peak measured in the same run (bench.12).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from minitx.bench.flops import transformer_flops
from minitx.bench.latency import GPT2_SMALL, NANO
from minitx.bench.sidebyside import Workload, check_side_by_side, matmul_peak, run_workload
from minitx.bench.timing import CPU_CLOCKS, torch_threads
from minitx.functional import IGNORE_INDEX
from minitx.interop.gpt2 import to_hf_gpt2
from minitx.models.gpt import GPT, GPTConfig
from minitx.training.optim import parameter_groups

# name -> (model sizes, batch B, sequence N): nanoGPT's Shakespeare size (block 64, batch 12) and GPT-2 small's
# shape at batch 1 x 64, about 1.5 s a step on one thread (2 x 128 took 3.0 s)
GPT_PRESETS = {
    "gpt-train-nano": (NANO, 12, 64),
    "gpt-train-gpt2-small": (GPT2_SMALL, 1, 64),
}
@dataclass
class GPTTrainingBenchConfig:
    """Rows, batch and timing; flat, so `minitx bench gpt-training` flags map one to one onto fields."""

    workloads: list[str] = field(default_factory=lambda: list(GPT_PRESETS))
    batch_size: int | None = None      # None: the preset's
    seq_len: int | None = None         # None: the preset's (at most its max_position)
    dropout: float = 0.0               # residual, embedding and attention dropout, the same p on both sides
    rounds: int = 10
    warmup: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.01
    loss_tolerance: float = 1e-5
    grad_tolerance: float = 1e-4
    ops: bool = True
    peak: bool = True
    seed: int = 0
    threads: int = 1
    cpu_clock: str = "thread"

    def validate(self) -> None:
        check_side_by_side(self, GPT_PRESETS, ("batch_size", "seq_len", "rounds", "threads"),
                           optional=("batch_size", "seq_len"))
        if self.seq_len is not None and any(self.seq_len > GPT_PRESETS[w][0]["max_position"] for w in self.workloads):
            raise ValueError(f"seq_len: expected at most the model's max_position, got {self.seq_len}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _loss_and_grads(model: nn.Module, step_loss: Callable[[], torch.Tensor]) -> float:
    """Loss of one eval-mode forward + backward, leaving the gradients in `.grad` and the mode as it was."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    loss = step_loss()
    loss.backward()
    model.train(was_training)
    return loss.item()


def grads_in_hf_layout(model: GPT) -> dict[str, torch.Tensor]:
    """minitx's gradients carried into GPT-2's names and layouts by the converter that carried the weights:
    a copy of `model` holding each gradient (zeros where none) in place of the weight, through `to_hf_gpt2`."""
    holder = copy.deepcopy(model)
    with torch.no_grad():
        for p, q in zip(holder.parameters(), model.parameters()):
            p.copy_(q.grad if q.grad is not None else torch.zeros_like(q))
    return {k: v.double() for k, v in to_hf_gpt2(holder).state_dict().items()}


def training_gate(minitx_loss: Callable[[], torch.Tensor], model: GPT, hf_loss: Callable[[], torch.Tensor],
                  hf: nn.Module, loss_tolerance: float, grad_tolerance: float) -> tuple[bool, str | None, dict]:
    """(ok, reason, values), dropout off: |loss - HF loss| <= loss_tolerance; over all parameters
    ||g - g_HF|| / ||g_HF|| <= grad_tolerance; and tensor by tensor ||g_t - g_HF,t|| / max(||g_HF,t||,
    1e-3 ||g_HF||) <= 10 grad_tolerance (so a wrong small gradient is not lost in the total; the floor keeps
    tensors whose gradient is ~0, such as the key bias's, from failing on rounding). Leaves no gradients."""
    loss, ref_loss = _loss_and_grads(model, minitx_loss), _loss_and_grads(hf, hf_loss)
    grads = grads_in_hf_layout(model)
    ref = {n: p.grad.detach().double() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
           for n, p in hf.named_parameters()}
    model.zero_grad(set_to_none=True)
    hf.zero_grad(set_to_none=True)
    total = math.sqrt(sum(float(g.square().sum()) for g in ref.values()))
    errors = {n: float((grads[n] - g).norm()) if n in grads and grads[n].shape == g.shape else math.inf
              for n, g in ref.items()}
    grad_err = math.sqrt(sum(e * e for e in errors.values())) / max(total, 1e-300)
    worst_name, worst = max(((n, e / max(float(ref[n].norm()), 1e-3 * total)) for n, e in errors.items()),
                            key=lambda item: item[1])
    values = dict(loss_abs_diff=abs(loss - ref_loss), grad_rel_error=grad_err if math.isfinite(grad_err) else None,
                  worst_tensor_rel_error=worst if math.isfinite(worst) else None)
    problems = []
    if not abs(loss - ref_loss) <= loss_tolerance:
        problems.append(f"|loss - HF loss| = {abs(loss - ref_loss):.3g} > {loss_tolerance:g}")
    if not grad_err <= grad_tolerance:
        problems.append(f"gradient relative error {grad_err:.3g} > {grad_tolerance:g}")
    if not worst <= 10 * grad_tolerance:
        problems.append(f"gradient relative error of {worst_name} {worst:.3g} > {10 * grad_tolerance:g}")
    return not problems, "; ".join(problems) or None, values


def gpt_training_workload(name: str, sizes: dict, batch_size: int, seq_len: int, config: GPTTrainingBenchConfig,
                          perturb: Callable[[GPT], object] | None = None) -> Workload:
    """The training-step row for `sizes`; `perturb(model)` (tests) changes minitx's model after HF's copy is made."""
    torch.manual_seed(config.seed)
    model = GPT(GPTConfig(**sizes, dropout=config.dropout, attention_dropout=config.dropout))
    hf = to_hf_gpt2(model)
    if perturb is not None:
        perturb(model)
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.randint(0, sizes["vocab_size"], (batch_size, seq_len), generator=gen)
    targets = torch.cat([x[:, 1:], torch.full((batch_size, 1), IGNORE_INDEX)], 1)  # (B, N): HF shifts labels=x
    minitx_loss = lambda: model(x, targets=targets).loss  # noqa: E731
    hf_loss = lambda: hf(input_ids=x, labels=x).loss  # noqa: E731

    def make_step(m: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        optimizer = torch.optim.AdamW(parameter_groups(m, config.weight_decay), lr=config.lr)

        def step() -> None:
            loss_fn().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step
    gate = lambda: training_gate(minitx_loss, model, hf_loss, hf, config.loss_tolerance,  # noqa: E731
                                 config.grad_tolerance)
    model.train()
    hf.train()
    contenders = {"minitx": make_step(model, minitx_loss), "hf": make_step(hf, hf_loss)}
    c = model.config
    flops = transformer_flops(n_layers=c.n_layers, d_model=c.d_model, d_ff=c.ff_width, vocab_size=c.vocab_size,
                              batch=batch_size, seq_len=seq_len, causal=True)
    info = dict(minitx_backend=c.attention_backend,
                reference_attention=getattr(hf.config, "_attn_implementation", None), sizes=dict(sizes),
                batch_size=batch_size, seq_len=seq_len, dropout=config.dropout,
                parameters=sum(p.numel() for p in model.parameters()),
                parameter_tensors={"minitx": len(list(model.parameters())), "hf": len(list(hf.parameters()))})
    return Workload(name, f"GPT training step, {c.n_layers}L C {c.d_model} V {c.vocab_size}, batch {batch_size} "
                          f"x {seq_len}, dropout {config.dropout}", contenders, gate,
                    units=batch_size * seq_len, unit="token", flops=flops, info=info,
                    models={"minitx": model, "hf": hf})


def run_gpt_training_bench(config: GPTTrainingBenchConfig,
                           extra_workloads: dict[str, Callable[[], Workload]] | None = None,
                           progress: Callable[[str], object] | None = print) -> tuple[list[dict], dict | None]:
    """(one record per workload, the matmul peak or None), as `run_latency_bench`."""
    config.validate()
    say = progress or (lambda line: None)
    builders = {}
    for name in config.workloads:
        sizes, batch, seq = GPT_PRESETS[name]
        builders[name] = (lambda name=name, sizes=sizes, batch=batch, seq=seq: gpt_training_workload(
            name, sizes, config.batch_size or batch, config.seq_len or seq, config))
    builders.update(extra_workloads or {})
    records = []
    with torch_threads(config.threads):
        clock = CPU_CLOCKS[config.cpu_clock]
        peak = matmul_peak(clock=clock) if config.peak else None
        if peak:
            say(f"matmul peak: {peak['gflops']:.1f} GFLOP/s (fp32, {peak['size']}^3, {peak['threads']} thread)")
        for name, build in builders.items():
            record = run_workload(build(), rounds=config.rounds, warmup=config.warmup, clock=clock, ops=config.ops,
                                  peak_gflops=peak["gflops"] if peak else None)
            records.append(record)
            if record["status"] != "ok":
                say(f"{name:<22} {record['status']}: {record['reason']}")
                continue
            t, r = record["timings_ms"], record["ratio"]
            say(f"{name:<22} minitx {t['minitx']['median_ms']:.1f} vs hf {t['hf']['median_ms']:.1f} ms/step: "
                f"{r['ratio']:.2f}x (paired {r['paired_median']:.2f} [{r['paired_p25']:.2f}, {r['paired_p75']:.2f}])")
    return records, peak
