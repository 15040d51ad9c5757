"""`minitx bench attention|training|latency|gpt-training|compile [flags]`: flags map one to one onto
`AttentionBenchConfig`'s, `TrainingBenchConfig`'s, `LatencyBenchConfig`'s and `GPTTrainingBenchConfig`'s fields;
`compile` is the kernels' compile report (`minitx.bench.compile_table`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from minitx.bench.attention import DTYPES, MASKS, AttentionBenchConfig, run_sweep
from minitx.bench.gpt_training import GPT_PRESETS, GPTTrainingBenchConfig, run_gpt_training_bench
from minitx.bench.impls import DEFAULT_IMPLS, check_name, load_custom, runnable_here
from minitx.bench.latency import PRESETS as LATENCY_PRESETS
from minitx.bench.latency import LatencyBenchConfig, run_latency_bench
from minitx.bench.report import (environment, plot_memory, plot_tflops, results_document, results_table,
                                 write_json)
from minitx.bench.sidebyside_report import plot_ratios, sidebyside_document, sidebyside_table
from minitx.bench.timing import CPU_CLOCKS
from minitx.bench.training import DEFAULT_IMPLS as TRAINING_IMPLS
from minitx.bench.training import PRECISIONS as TRAINING_PRECISIONS
from minitx.bench.training import PRESETS as TRAINING_PRESETS
from minitx.bench.training import TrainingBenchConfig, run_training_bench
from minitx.bench.training_report import plot_training, training_document, training_table
from minitx.bench.varlen import run_varlen_sweep

class UsageError(ValueError):
    """A bad flag, an impl name that matches nothing, a broken --custom spec: one line, exit 2."""


# A GPU sweep as in the FlashAttention papers; the CPU one is scaled down so it finishes in seconds.
GPU_DEFAULTS = dict(seq_lens=[512, 1024, 2048, 4096, 8192, 16384], head_dims=[64, 128], dtypes=["bf16", "fp16"],
                    tokens=16384, model_dim=2048, repeats=30, warmup=5)
CPU_DEFAULTS = dict(seq_lens=[128, 256, 512], head_dims=[64], dtypes=["fp32"], tokens=1024, model_dim=256,
                    repeats=10, warmup=3)


def _attention_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("attention", help="sweep attention kernels: time, TFLOP/s, peak memory, correctness",
                       description="Sweep attention implementations over N, head dim, mask and dtype. Unset "
                                   "flags take GPU defaults on CUDA (N 512..16384, D 64 128, bf16 fp16, "
                                   "B*N=16k, H*D=2048) and small ones on the CPU.")
    p.add_argument("--seq-lens", type=int, nargs="+", help="sequence lengths N")
    p.add_argument("--head-dims", type=int, nargs="+", help="head dims D")
    p.add_argument("--masks", nargs="+", choices=MASKS, help="attention masks (default: both)")
    p.add_argument("--causal", dest="masks", action="store_const", const=["causal"], help="only causal")
    p.add_argument("--no-causal", dest="masks", action="store_const", const=["full"], help="only full")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="dtypes")
    p.add_argument("--impls", nargs="+", help=f"implementations (default: those of {' '.join(DEFAULT_IMPLS)} "
                                              "that can run on the device)")
    p.add_argument("--custom", action="append", default=[], metavar="NAME=FILE.py:FUNCTION",
                   help="also benchmark your own kernel (repeatable): FUNCTION has SDPA's signature "
                        "(q, k, v, attn_mask=None, is_causal=False, scale=None); correctness-gated like every impl")
    p.add_argument("--gqa", type=int, default=1, help="query heads per key/value head (grouped-query attention)")
    p.add_argument("--window", type=int, help="sliding window: keys within this distance (to the left only when "
                                              "causal); FLOPs count the attended pairs")
    p.add_argument("--dropout", type=float, default=0.0, help="attention dropout p of the timed calls (the "
                                                                 "correctness gate runs without it)")
    p.add_argument("--varlen", action="store_true",
                   help="packed variable-length sequences: B = tokens // N lengths drawn from 1..N; minitx impls run "
                        "them packed (cu_seqlens), SDPA on the padded batch with a key-padding mask; FLOPs count "
                        "the real attended pairs")
    p.add_argument("--tokens", type=int, help="tokens per batch B*N (B = tokens // N, at least 1)")
    p.add_argument("--model-dim", type=int, help="model width H*D (H = model_dim // D)")
    p.add_argument("--repeats", type=int, help="timed repeats per pass (median and IQR over these)")
    p.add_argument("--warmup", type=int, help="untimed warm-up calls per pass")
    _add_run_flags(p, seed_help="seed of the random inputs", plot_help="write the TFLOP/s plot (PNG) here")
    return p


def _add_run_flags(p: argparse.ArgumentParser, seed_help: str, plot_help: str) -> None:
    """The flags both benchmarks share: where and how to run and time, and where to write the results."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: PyTorch's choice)")
    p.add_argument("--cpu-clock", choices=sorted(CPU_CLOCKS),
                   help="CPU timer: wall clock, or this thread's CPU time (excludes time descheduled on a shared "
                        "machine; needs --threads 1). Attention on a CPU defaults to one thread and the thread "
                        "clock; training to the wall clock")
    _add_output_flags(p, plot_help)


def _add_output_flags(p: argparse.ArgumentParser, plot_help: str) -> None:
    """Where every benchmark writes its results, and whether it reports progress."""
    p.add_argument("--out", type=Path, help="write the results JSON here")
    p.add_argument("--table", type=Path, help="write the markdown table here")
    p.add_argument("--plot", type=Path, help=plot_help)
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _flags_or(defaults: dict, args: argparse.Namespace) -> dict:
    """Each field in `defaults` from its flag when the flag was given, else the default (device-dependent)."""
    return {name: default if getattr(args, name) is None else getattr(args, name) for name, default in defaults.items()}


def config_from_args(args: argparse.Namespace) -> AttentionBenchConfig:
    """The sweep's config; on a CPU unset flags mean one thread, the thread clock and only the impls that can
    run there (a GPU-only kernel would be listed as skipped at every point)."""
    device = torch.device(args.device)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    threads, clock = args.threads, args.cpu_clock
    if device.type == "cpu":
        threads = 1 if threads is None else threads
        clock = clock or ("thread" if threads == 1 else "wall")
    impls = args.impls
    if impls is None:
        impls = [n for n in DEFAULT_IMPLS if runnable_here(n, device)]
    return AttentionBenchConfig(**_flags_or(defaults, args), masks=args.masks or list(MASKS), impls=list(impls),
                                device=args.device, seed=args.seed, threads=threads, cpu_clock=clock or "wall",
                                gqa=args.gqa, window=args.window, dropout=args.dropout, varlen=args.varlen)


def attention_main(args: argparse.Namespace) -> int:
    """Raises UsageError for a bad flag, an impl name that matches nothing or a bad --custom (exit 2)."""
    try:
        config = config_from_args(args)
        config.validate()
        for name in config.impls:
            check_name(name)
        custom = dict(load_custom(spec) for spec in args.custom)
        clash = sorted(set(custom) & set(config.impls))
        if clash:
            raise ValueError(f"--custom: name {clash[0]!r} is already an implementation; pick another")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    start, env = time.perf_counter(), environment(config.device)
    settings = {**config.to_dict(), "custom": list(args.custom)}

    def save_partial(records):  # a run killed mid-way still leaves every finished record on disk
        if args.out:
            write_json({**results_document(records, settings, config.device, env=env), "complete": False}, args.out)
    sweep = run_varlen_sweep if config.varlen else run_sweep
    records = sweep(config, extra_impls=custom, on_record=save_partial,
                    progress=None if args.quiet else lambda line: print(line, flush=True))
    document = results_document(records, settings, config.device, env=env)
    _write_outputs(document, results_table(document), plot_tflops, args)
    if args.plot:  # beside the TFLOP/s plot: peak memory against N, where it was measured (CUDA)
        memory_plot = args.plot.with_name(args.plot.stem + "_memory" + args.plot.suffix)
        figure = plot_memory(document, memory_plot)
        if figure is not None:
            _close(figure)
            print(f"plot: {memory_plot}")
    print(f"{len(records)} records in {time.perf_counter() - start:.1f} s")
    return 0


def _write_outputs(document: dict, table: str, plot, args: argparse.Namespace) -> None:
    """Print the table; write the JSON, the markdown table and the plot where the flags ask for them."""
    print(table)
    if args.out:
        print(f"results: {write_json(document, args.out)}")
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table, encoding="utf-8")
        print(f"table: {args.table}")
    if args.plot:
        _close(plot(document, args.plot))  # saved: a CLI holds no figures open
        print(f"plot: {args.plot}")


def bench_main(argv: list[str] | None = None, prog: str = "minitx bench") -> int:
    """Entry point of `minitx bench`: sub-commands `attention`, `training`, `latency`, `gpt-training` and
    `compile`."""
    from minitx.bench.compile_table import compile_main, compile_parser

    parser = argparse.ArgumentParser(prog=prog, description="benchmarks")
    sub = parser.add_subparsers(dest="which", metavar="{attention,training,latency,gpt-training,compile}",
                                required=True)
    _attention_parser(sub)
    _training_parser(sub)
    _latency_parser(sub)
    _gpt_training_parser(sub)
    compile_parser(sub)
    mains = {"training": training_main, "attention": attention_main, "compile": compile_main,
             "latency": latency_main, "gpt-training": gpt_training_main}
    try:
        args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
        if rest and args.which in _ONE_LINE_ERRORS:
            raise UsageError(f"unrecognized arguments: {' '.join(rest)}")
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return mains[args.which](args)
    except UsageError as exc:  # a user error: one line, exit 2 (DESIGN: the command line)
        print(f"minitx: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------- training throughput

def _training_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("training", help="MLM training-step throughput: minitx vs transformers.BertForMaskedLM",
                       description="Tokens/s of a full MLM training step (forward, loss, backward, AdamW, zero_grad) "
                                   "of minitx's BertForMaskedLM and transformers' with the same weights and batch, "
                                   "timed side by side after a loss/gradient gate. Unset flags take the preset: "
                                   "'gpu' (BERT-base, 32 x 512, bf16) on CUDA, 'cpu' (128 wide, 4 layers, 16 x 128, "
                                   "fp32) otherwise.")
    p.add_argument("--preset", choices=sorted(TRAINING_PRESETS), help="sizes for unset flags (default: by device)")
    for flag, dest, kind, text in (
            ("--vocab-size", "vocab_size", int, "vocabulary V"), ("--d-model", "d_model", int, "model width C"),
            ("--layers", "n_layers", int, "encoder blocks"), ("--heads", "n_heads", int, "attention heads"),
            ("--d-ff", "d_ff", int, "feed-forward width (default 4 C)"), ("--seq-len", "seq_len", int, "tokens N"),
            ("--batch-size", "batch_size", int, "sequences B"),
            ("--warmup", "warmup", int, "untimed steps per implementation (the trial step included)")):
        p.add_argument(flag, dest=dest, type=kind, help=text)
    p.add_argument("--repeats", "--steps", dest="repeats", type=int,
                   help="timed steps per implementation (median and IQR over these)")
    p.add_argument("--precision", choices=sorted(TRAINING_PRECISIONS), help="fp32, or bf16 autocast")
    p.add_argument("--impls", nargs="+", help=f"implementations (default: {' '.join(TRAINING_IMPLS)})")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout p on embeddings and residual branches")
    p.add_argument("--attention-dropout", type=float, default=0.1,
                   help="dropout p on attention weights")
    _add_run_flags(p, seed_help="seed of the weights and the batch",
                   plot_help="write the tokens/s bar plot (PNG) here")
    return p


def training_config_from_args(args: argparse.Namespace) -> TrainingBenchConfig:
    preset = TRAINING_PRESETS[args.preset or ("gpu" if torch.device(args.device).type == "cuda" else "cpu")]
    return TrainingBenchConfig(**_flags_or(preset, args), impls=args.impls or list(TRAINING_IMPLS),
                               dropout=args.dropout, attention_dropout=args.attention_dropout,
                               device=args.device, seed=args.seed, threads=args.threads,
                               cpu_clock=args.cpu_clock or "wall")


def training_main(args: argparse.Namespace) -> int:
    try:
        config = training_config_from_args(args)
        config.validate()
    except ValueError as exc:  # (as before this change; tests/test_bench_training.py holds it to SystemExit)
        raise SystemExit(f"minitx bench training: {exc}") from None
    start, env, load_start = time.perf_counter(), environment(config.device), os.getloadavg()
    try:
        records = run_training_bench(config, progress=None if args.quiet else lambda line: print(line, flush=True))
    except ImportError as exc:  # the reference is transformers' BertForMaskedLM
        raise SystemExit(f"minitx bench training: needs transformers (pip install 'minitx[dev]'): {exc}") from None
    document = training_document(records, config.to_dict(), config.device, env=env, load_start=load_start)
    _write_outputs(document, training_table(document), plot_training, args)
    print(f"{len(records)} implementations in {time.perf_counter() - start:.1f} s")
    return 0


def _close(fig) -> None:
    """Release a saved figure from pyplot's registry (pyplot keeps every figure alive until closed)."""
    if fig is not None:
        from minitx.plots import plt
        plt.close(fig)



# ---------------------------------------------------------------- side by side: latency and GPT training

_ONE_LINE_ERRORS = ("latency", "gpt-training")  # every bad flag of these is one `minitx: error:` line, exit 2


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own complaints (a bad number, a missing value) as UsageError
        raise UsageError(f"{self.prog}: {message}")


def _one_line_subparser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """`sub.add_parser` with `_OneLineParser` (argparse takes a parser class only for all sub-commands at once)."""
    default, sub._parser_class = sub._parser_class, _OneLineParser
    try:
        return sub.add_parser(name, **kwargs)
    finally:
        sub._parser_class = default


def _side_by_side_flags(p: argparse.ArgumentParser, defaults, presets) -> None:
    """The flags `latency` and `gpt-training` share: which rows, how they are timed, where results go."""
    p.add_argument("--workloads", nargs="+", default=list(defaults.workloads),
                   help=f"rows to run (default: all of {' '.join(presets)})")
    p.add_argument("--rounds", type=int, default=defaults.rounds,
                   help="alternated rounds, one sample per contender each (median, IQR and paired ratios)")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed calls per contender first")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the inputs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the thread clock needs 1)")
    p.add_argument("--cpu-clock", choices=sorted(CPU_CLOCKS), default="thread",
                   help="this thread's CPU time (default), or the wall clock")
    p.add_argument("--no-ops", dest="ops", action="store_false", help="skip the profiler's op counts")
    p.add_argument("--no-peak", dest="peak", action="store_false", help="skip measuring the matmul peak")
    _add_output_flags(p, "write the ratio plot (PNG) here")


def _latency_parser(sub) -> argparse.ArgumentParser:
    d = LatencyBenchConfig()
    p = _one_line_subparser(sub, "latency",
                       help="batch-1 BERT forward and GPT greedy decoding: minitx vs transformers",
                       description="Per-call latency of a batch-1 BERT fill-mask forward and GPT greedy decoding "
                                   "(cached and uncached) against transformers with the same weights, gated "
                                   "(logits within --atol, generated ids equal), alternated round by round on one "
                                   "thread's CPU clock.")
    p.add_argument("--bert-inner", type=int, default=d.bert_inner, help="BERT forwards per timed sample")
    p.add_argument("--decode-inner", type=int, default=d.decode_inner, help="generate calls per timed sample")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="BERT input length N")
    p.add_argument("--prompt-len", type=int, default=d.prompt_len, help="GPT prompt tokens")
    p.add_argument("--new-tokens", type=int, help="generated tokens (default: 48 at nanoGPT size, 16 at GPT-2 "
                                                  "small)")
    p.add_argument("--atol", type=float, default=d.atol, help="BERT logits: max |minitx - HF| allowed")
    _side_by_side_flags(p, d, LATENCY_PRESETS)
    return p


def _gpt_training_parser(sub) -> argparse.ArgumentParser:
    d = GPTTrainingBenchConfig()
    p = _one_line_subparser(sub, "gpt-training",
                       help="GPT training step: minitx vs transformers.GPT2LMHeadModel",
                       description="One GPT training step (forward, loss, backward, AdamW, zero_grad) of minitx's "
                                   "GPT against transformers' GPT2LMHeadModel with the same weights, gated (loss "
                                   "and embedding gradients), alternated round by round on one thread's CPU clock, "
                                   "with op counts and MFU against the matmul peak measured in the same run.")
    p.add_argument("--batch-size", type=int, help="sequences B (default: the preset's)")
    p.add_argument("--seq-len", type=int, help="tokens N (default: the preset's)")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout p, residual and attention, both sides")
    _side_by_side_flags(p, d, GPT_PRESETS)
    return p


def _side_by_side_main(args: argparse.Namespace, config_class, run, title: str) -> int:
    """Build the config from the flags (each flag is the field of the same name; the rest keep their
    defaults), validate it, run it and write JSON, table and plot."""
    flags = vars(args)
    config = config_class(**{f.name: flags[f.name] for f in fields(config_class) if f.name in flags})
    try:
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    start, env, load_start = time.perf_counter(), environment("cpu"), os.getloadavg()
    records, peak = run(config, progress=None if args.quiet else lambda line: print(line, flush=True))
    document = sidebyside_document(records, config.to_dict(), peak, title=title, env=env, load_start=load_start)
    _write_outputs(document, sidebyside_table(document), plot_ratios, args)
    print(f"{len(records)} workloads in {time.perf_counter() - start:.1f} s")
    return 0


def latency_main(args: argparse.Namespace) -> int:
    return _side_by_side_main(args, LatencyBenchConfig, run_latency_bench, "CPU latency: minitx against Hugging Face")


def gpt_training_main(args: argparse.Namespace) -> int:
    return _side_by_side_main(args, GPTTrainingBenchConfig, run_gpt_training_bench,
                              "CPU GPT training step: minitx against Hugging Face GPT2LMHeadModel")
