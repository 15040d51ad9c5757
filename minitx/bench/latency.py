"""Latency where people run minitx: a batch-1 BERT fill-mask forward and GPT greedy decoding, cached and
uncached, each against Hugging Face with the same weights (`minitx.interop.to_hf_bert` / `to_hf_gpt2`).

The minitx models are built exactly as a user gets them (`BertConfig(...)` / `GPTConfig(...)` without an
`attention_backend`); the record says which backend that was. HF runs its default attention (sdpa). Every
workload is gated before it is timed (`minitx.bench.sidebyside`): logits within `atol`, generated ids equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from minitx.bench.sidebyside import Workload, check_side_by_side, matmul_peak, outputs_gate, run_workload
from minitx.bench.timing import CPU_CLOCKS, torch_threads
from minitx.generation.generate import generate
from minitx.interop.bert import to_hf_bert
from minitx.interop.gpt2 import to_hf_gpt2
from minitx.models.bert import BertConfig, BertForMaskedLM
from minitx.models.gpt import GPT, GPTConfig

NANO = dict(vocab_size=65, max_position=64, d_model=128, n_layers=4, n_heads=4)
GPT2_SMALL = dict(vocab_size=50257, max_position=1024, d_model=768, n_layers=12, n_heads=12,
                  activation="gelu_tanh")
# name -> (kind, model sizes, new tokens for a decode): the issue's rows
PRESETS = {
    "bert-fwd-c64": ("bert", dict(vocab_size=1000, d_model=64, n_heads=2, d_ff=256, n_layers=2), None),
    "bert-fwd-c128": ("bert", dict(vocab_size=1000, d_model=128, n_heads=4, d_ff=512, n_layers=2), None),
    "gpt-decode-nano": ("decode", NANO, 48),
    "gpt-decode-gpt2-small": ("decode", GPT2_SMALL, 16),
    "gpt-decode-nano-uncached": ("decode-uncached", NANO, 48),
}


@dataclass
class LatencyBenchConfig:
    """Which rows and how they are timed; flat, so `minitx bench latency` flags map one to one onto fields."""

    workloads: list[str] = field(default_factory=lambda: list(PRESETS))
    rounds: int = 10               # alternated rounds (samples per contender)
    bert_inner: int = 20           # forwards per sample (one takes ~1 ms: the thread clock's tick would show)
    decode_inner: int = 1          # generate calls per sample
    warmup: int = 2                # untimed calls per contender before the rounds
    seq_len: int = 32              # BERT input length N
    prompt_len: int = 8            # GPT prompt tokens
    new_tokens: int | None = None  # generated tokens (None: the preset's, 48 at nanoGPT size, 16 at GPT-2 small)
    atol: float = 1e-4             # BERT logits: max |minitx - HF|
    ops: bool = True               # count ATen ops per call with torch.profiler
    peak: bool = True              # measure this CPU's fp32 matmul peak in the same run
    seed: int = 0
    threads: int = 1
    cpu_clock: str = "thread"

    def validate(self) -> None:
        check_side_by_side(self, PRESETS, ("rounds", "bert_inner", "decode_inner", "seq_len", "prompt_len",
                                           "threads", "new_tokens"), optional=("new_tokens",))

    def to_dict(self) -> dict:
        return asdict(self)


def bert_forward_workload(name: str, sizes: dict, seq_len: int, atol: float, seed: int) -> Workload:
    """Fill-mask forward at batch 1: `torch.no_grad()`, eval mode, minitx's BertForMaskedLM as built from
    `BertConfig(**sizes)` against transformers' BertForMaskedLM (its default attention) with the same weights."""
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(**sizes)).eval()
    reference = to_hf_bert(model).eval()
    ids = torch.randint(5, sizes["vocab_size"], (1, seq_len), generator=torch.Generator().manual_seed(seed))

    def minitx() -> torch.Tensor:
        with torch.no_grad():
            return model(ids).logits

    def hf() -> torch.Tensor:
        with torch.no_grad():
            return reference(input_ids=ids).logits
    contenders = {"minitx": minitx, "hf": hf}
    return Workload(name, f"BERT fill-mask forward, batch 1, N {seq_len}, no_grad, width {sizes['d_model']}",
                    contenders, outputs_gate(contenders, atol), units=1, unit="call",
                    info=_info(model.config.attention_backend, reference, sizes, model),
                    models={"minitx": model, "hf": reference})


def gpt_decode_workload(name: str, sizes: dict, prompt_len: int, new_tokens: int, use_cache: bool,
                        seed: int) -> Workload:
    """Greedy decoding of `new_tokens` after a `prompt_len`-token prompt: `minitx.generation.generate.generate(
    model, ids, new, temperature=0, use_cache=...)` against `GPT2LMHeadModel.generate(do_sample=False,
    use_cache=...)`; the generated ids must be equal."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**sizes)).eval()
    reference = to_hf_gpt2(model).eval()
    ids = torch.randint(0, sizes["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)

    def minitx() -> torch.Tensor:
        return generate(model, ids, new_tokens, temperature=0, use_cache=use_cache)

    def hf() -> torch.Tensor:
        return reference.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                  use_cache=use_cache, pad_token_id=0)
    contenders = {"minitx": minitx, "hf": hf}
    what = "cached" if use_cache else "uncached"
    info = dict(_info(model.config.attention_backend, reference, sizes, model), ops_per_unit=True)
    return Workload(name, f"GPT greedy decoding, {what}, prompt {prompt_len} + {new_tokens} new, "
                          f"{sizes['n_layers']}L C {sizes['d_model']} V {sizes['vocab_size']}",
                    contenders, outputs_gate(contenders, None), units=new_tokens, unit="token", info=info,
                    models={"minitx": model, "hf": reference})


def _info(backend: str, reference, sizes: dict, model) -> dict:
    return dict(minitx_backend=backend, reference_attention=getattr(reference.config, "_attn_implementation", None),
                sizes=dict(sizes), parameters=sum(p.numel() for p in model.parameters()))


def build_workload(name: str, config: LatencyBenchConfig) -> Workload:
    kind, sizes, new = PRESETS[name]
    if kind == "bert":
        return bert_forward_workload(name, sizes, config.seq_len, config.atol, config.seed)
    return gpt_decode_workload(name, sizes, config.prompt_len, config.new_tokens or new, kind == "decode",
                               config.seed)


def run_latency_bench(config: LatencyBenchConfig, extra_workloads: dict[str, Callable[[], Workload]] | None = None,
                      progress: Callable[[str], object] | None = print) -> tuple[list[dict], dict | None]:
    """(one record per workload, the matmul peak or None); `extra_workloads` (name -> builder) are run after
    the presets (tests pass a deliberately wrong contender)."""
    config.validate()
    say = progress or (lambda line: None)
    builders = {name: (lambda name=name: build_workload(name, config)) for name in config.workloads}
    builders.update(extra_workloads or {})
    records = []
    with torch_threads(config.threads):
        clock = CPU_CLOCKS[config.cpu_clock]
        peak = matmul_peak(clock=clock) if config.peak else None
        if peak:
            say(f"matmul peak: {peak['gflops']:.1f} GFLOP/s (fp32, {peak['size']}^3, {peak['threads']} thread)")
        for name, build in builders.items():
            workload = build()
            inner = config.bert_inner if workload.unit == "call" else config.decode_inner
            record = run_workload(workload, rounds=config.rounds, inner=inner, warmup=config.warmup, clock=clock,
                                  ops=config.ops)
            records.append(record)
            if record["status"] != "ok":
                say(f"{name:<26} {record['status']}: {record['reason']}")
                continue
            t, r = record["per_unit_ms"], record["ratio"]
            say(f"{name:<26} minitx {t['minitx']:.2f} vs hf {t['hf']:.2f} ms/{workload.unit}: {r['ratio']:.2f}x "
                f"(paired {r['paired_median']:.2f} [{r['paired_p25']:.2f}, {r['paired_p75']:.2f}])")
    return records, peak
