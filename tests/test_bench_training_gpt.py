"""The GPT training step against GPT2LMHeadModel (`minitx bench gpt-training`): the loss and gradient gate
passes for the same weights and refuses a wrong backward before timing; MFU and op counts in the records; and
the BERT training bench's new columns (op counts per step, MFU against the measured peak, the floor)."""

import pytest
import torch

from minitx.bench.flops import transformer_flops
from minitx.bench.gpt_training import GPTTrainingBenchConfig, gpt_training_workload, run_gpt_training_bench
from minitx.bench.sidebyside import run_workload
from minitx.bench.training import TrainingBenchConfig, run_training_bench, step_flops
from minitx.bench.training_report import training_table
from minitx.models.gpt import GPTConfig

pytest.importorskip("transformers")

GPT_TINY = dict(vocab_size=40, max_position=16, d_model=16, n_layers=2, n_heads=2)


def _scaled_block_output(model):
    # forward untouched (same loss, bit for bit); every gradient below block 0's output is 1.5x
    def hook(module, args, out):
        (out[0] if isinstance(out, tuple) else out).register_hook(lambda g: 1.5 * g)
    model.blocks[0].register_forward_hook(hook)


def _scaled_weight_grad(model):
    # only one matrix's gradient is wrong: no other gradient and no loss changes
    weight = next(p for n, p in model.named_parameters() if n.startswith("blocks.1.") and p.ndim == 2)
    weight.register_hook(lambda g: 1.5 * g)


def test_gate_passes_for_the_same_weights_and_the_row_carries_mfu_and_ops():
    config = GPTTrainingBenchConfig(rounds=2, warmup=1)
    w = gpt_training_workload("tiny", GPT_TINY, 3, 8, config)
    record = run_workload(w, rounds=2, warmup=1, peak_gflops=50.0)
    assert record["status"] == "ok", record["reason"]
    assert record["gate"]["loss_abs_diff"] <= 1e-5 and record["gate"]["grad_rel_error"] <= 1e-4
    flops = transformer_flops(n_layers=2, d_model=16, d_ff=64, vocab_size=40, batch=3, seq_len=8, causal=True)
    assert record["flops_per_call"] == flops and record["units_per_call"] == 24
    for name in ("minitx", "hf"):
        ms = record["timings_ms"][name]["median_ms"]
        assert record["gflops"][name] == pytest.approx(flops / ms / 1e6)
        assert record["mfu_percent"][name] == pytest.approx(100 * record["gflops"][name] / 50.0)
        assert record["ops"][name]["all"] > record["ops"][name]["top"] > 0
    assert record["minitx_backend"] == GPTConfig().attention_backend, "the default a user gets"
    assert record["reference_attention"] == "sdpa"


@pytest.mark.parametrize("perturb", [_scaled_block_output, _scaled_weight_grad])
def test_gate_refuses_a_wrong_backward_with_a_right_forward(perturb):
    config = GPTTrainingBenchConfig()
    w = gpt_training_workload("tiny", GPT_TINY, 3, 8, config, perturb=perturb)
    steps = []
    w.contenders = {k: (lambda f=f: steps.append(1) or f()) for k, f in w.contenders.items()}
    record = run_workload(w, rounds=2, warmup=1)
    assert record["status"] == "failed" and "gradient relative error" in record["reason"], record["gate"]
    assert record["gate"]["loss_abs_diff"] < 1e-6, "a loss-only gate would have passed it"
    assert record["timings_ms"] is None and steps == [], "never stepped, never timed"


def test_dropout_reaches_both_sides():
    w = gpt_training_workload("tiny", GPT_TINY, 2, 8, GPTTrainingBenchConfig(dropout=0.1))
    model, hf = w.models["minitx"], w.models["hf"]
    assert w.info["dropout"] == 0.1 and model.config.dropout == model.config.attention_dropout == 0.1
    assert {hf.config.resid_pdrop, hf.config.embd_pdrop, hf.config.attn_pdrop} == {0.1}
    assert {m.p for m in hf.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    assert model.training and hf.training, "timed in train mode: dropout on"


def test_run_gpt_training_bench_reports_peak_and_rows():
    config = GPTTrainingBenchConfig(workloads=["gpt-train-nano"], batch_size=2, seq_len=8, rounds=2, warmup=0,
                                    ops=False)
    records, peak = run_gpt_training_bench(config, progress=None)
    assert peak["gflops"] > 0 and peak["threads"] == 1
    (r,) = records
    assert r["status"] == "ok" and r["batch_size"] == 2 and r["seq_len"] == 8
    assert r["mfu_percent"]["minitx"] == pytest.approx(r["gflops"]["minitx"] / peak["gflops"] * 100)


def test_bert_training_bench_records_ops_mfu_and_the_floor():
    """(bench.11) the step's model FLOPs, (bench.12) MFU against the measured peak, (bench.10) the time ratio."""
    config = TrainingBenchConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, seq_len=16, batch_size=4,
                                 repeats=3, warmup=1, dropout=0.0, attention_dropout=0.0, threads=1,
                                 cpu_clock="thread", impls=["minitx:math:full-head", "hf:sdpa"])
    records = run_training_bench(config, progress=None)
    by = {r["impl"]: r for r in records}
    flops = step_flops(config)
    # (bench.11) P_mm = 1 (4*256 + 2*16*64) + 16^2 + 64*16 = 3072 + 256 + 1024; 6 P_mm B N + 12 L B N^2 C
    assert flops == 6 * 4352 * 64 + 12 * 1 * 4 * 256 * 16
    peak = by["hf:sdpa"]["matmul_peak"]
    assert peak["gflops"] > 0 and peak["source"] == "measured in this run"
    for r in records:
        assert r["status"] == "ok"
        assert r["model_flops_per_step"] == flops
        assert r["mfu_percent"] == pytest.approx(100 * flops / (r["timings_ms"]["median_ms"] * 1e6) / peak["gflops"])
        assert r["ops_per_step"]["all"] > r["ops_per_step"]["top"] > 0
    t = by["minitx:math:full-head"]["ratio_to"]["hf:sdpa"]["time"]
    assert t["ratio"] == pytest.approx(by["minitx:math:full-head"]["timings_ms"]["median_ms"]
                                       / by["hf:sdpa"]["timings_ms"]["median_ms"])
    from minitx.bench.training_report import training_document
    table = training_table(training_document(records, config.to_dict(), "cpu"))
    row = next(line for line in table.splitlines() if line.startswith("| minitx:math:full-head"))
    assert f"| {t['ratio']:.2f}x (" in row and "| <= 1.0x |" in row
    assert ("| yes |" in row) == (t["ratio"] <= 1.0)
    assert "6 P_mm B N + 12 L B N^2 C" in table and "measured in this run" in table
