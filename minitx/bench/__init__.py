"""Benchmarks kernel engineers can trust: correctness-gated, warmed-up, synchronised, median + IQR, with the
environment recorded next to every number.

- `timing`: clocks (CUDA events on a GPU, perf_counter on the CPU), warm-up, median/IQR;
- `flops`: FLOP counts under the FlashAttention convention, arithmetic intensity and the roofline;
- `impls`: the attention implementations by name (`minitx:<backend>`, `sdpa:<kernel>`);
- `attention`: the sweep, its float64 correctness gate and its records;
- `varlen`: the packed variable-length sweep (`--varlen`): cu_seqlens against SDPA on the padded batch;
- `report`: environment, JSON, `results_table`, plots;
- `training`, `training_gate`, `training_report`: an MLM training step of minitx against Hugging Face's
  `BertForMaskedLM` with the same weights -- the loss/gradient gate, interleaved timing, tokens/s and ratios;
- `compile_report`, `compile_table`: the flash kernels compiled for sm_80/90/100 without a GPU -- registers,
  spills, shared memory, MMA and TMA per config -- and the accepted-config table the autotuner prunes to;
- `sidebyside`: minitx against a reference library on one workload: the gate before timing, rounds alternated
  on one thread's CPU clock, the time ratio with its paired quartiles, op counts, this CPU's matmul peak;
- `latency`, `gpt_training`: its rows -- batch-1 BERT forward and GPT greedy decoding (cached, uncached) against
  transformers, and a GPT training step against `GPT2LMHeadModel` with MFU; `sidebyside_report`: JSON, table, plot;
- `cli`: `minitx bench attention|training|latency|gpt-training|compile` (`bench_main`).
"""

from minitx.bench.attention import AttentionBenchConfig, run_sweep
from minitx.bench.cli import bench_main
from minitx.bench.flops import arithmetic_intensity, attention_flops, roofline, tflops_per_second
from minitx.bench.report import plot_tflops, results_document, results_table, write_json
from minitx.bench.timing import TimingStats, summarize, time_fn, time_host
from minitx.bench.training import TrainingBenchConfig, run_training_bench

__all__ = ["AttentionBenchConfig", "run_sweep", "bench_main", "arithmetic_intensity", "attention_flops",
           "roofline", "tflops_per_second", "plot_tflops", "results_document", "results_table", "write_json",
           "TimingStats", "summarize", "time_fn", "time_host", "TrainingBenchConfig", "run_training_bench"]
