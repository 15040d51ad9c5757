"""The benchmark harness: FLOP convention, timer statistics, the correctness gate, JSON, table and CLI.

Equation labels (bench.N) refer to docs/benchmarking.md.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.bench import (AttentionBenchConfig, arithmetic_intensity, attention_flops, bench_main, results_table,
                          roofline, run_sweep, summarize, tflops_per_second, time_host)
from minitx.bench.attention import reference, shape_for
from minitx.bench.timing import percentile, torch_threads

TINY = dict(seq_lens=[16, 32], head_dims=[8], dtypes=["fp32"], tokens=64, model_dim=16, repeats=3, warmup=1)


# ---------------------------------------------------------------- FLOPs and roofline

def test_attention_flops_follow_the_flashattention_convention():
    # (bench.1): 4 * B * H * N^2 * D = 4 * 2 * 3 * 16 * 5 = 1920; causal halves it.
    assert attention_flops(2, 3, 4, 5) == 1920
    assert attention_flops(2, 3, 4, 5, causal=True) == 960
    # (bench.2), (bench.3): backward 2.5x, forward + backward 3.5x.
    assert attention_flops(2, 3, 4, 5, pass_="bwd") == 4800
    assert attention_flops(2, 3, 4, 5, pass_="fwd_bwd") == 6720
    assert attention_flops(2, 3, 4, 5, causal=True, pass_="fwd_bwd") == 3360
    # The papers' headline shape: B*N = 16k tokens, H*D = 2048, N = 2048, D = 64 -> 8 x 32 heads:
    # 2^2 * 2^3 * 2^5 * 2^22 * 2^6 = 2^38 FLOPs.
    assert attention_flops(8, 32, 2048, 64) == 2**38


def test_flops_reject_bad_arguments():
    with pytest.raises(ValueError, match="pass_"):
        attention_flops(1, 1, 1, 1, pass_="both")
    with pytest.raises(ValueError, match="seq_len"):
        attention_flops(1, 1, 0, 1)
    with pytest.raises(ValueError, match="milliseconds"):
        tflops_per_second(1.0, 0.0)


@given(n=st.integers(1, 40), m=st.integers(1, 40), causal=st.booleans(), bottom_right=st.booleans(),
       left=st.integers(-1, 12), right=st.integers(-1, 12))
def test_attended_pairs_count_the_allowed_mask(n, m, causal, bottom_right, left, right):
    """(bench.8) against the mask built by brute force from (flash.10)."""
    from minitx.bench.flops import attended_pairs

    i, j = torch.arange(n)[:, None], torch.arange(m)[None, :]
    rel = j - i - (m - n if bottom_right else 0)
    r = 0 if causal and right < 0 else (min(right, 0) if causal else right)
    allowed = torch.ones(n, m, dtype=torch.bool)
    if r >= 0:
        allowed &= rel <= r
    if left >= 0:
        allowed &= rel >= -left
    assert attended_pairs(n, m, causal, (left, right), bottom_right) == int(allowed.sum())


def test_device_peaks_and_bandwidth_columns():
    from minitx.bench.flops import attention_bytes, device_peak

    assert device_peak("NVIDIA H100 80GB HBM3", "bf16") == (989.4, 3.35)
    assert device_peak("NVIDIA H200", "fp16") == (989.4, 4.8)
    assert device_peak("NVIDIA H100 PCIe", "bf16") == (756.0, 2.0)
    assert device_peak("NVIDIA H100 80GB HBM3", "fp32")[0] < 100  # fp32 has no tensor-core peak here
    assert device_peak("Intel(R) Xeon(R)", "fp32") is None and device_peak(None, "bf16") is None
    # GQA reads fewer K/V bytes; the backward moves twice the forward's
    assert attention_bytes(1, 8, 2, 100, 100, 64, 2, "fwd") < attention_bytes(1, 8, 8, 100, 100, 64, 2, "fwd")
    assert attention_bytes(1, 8, 8, 100, 100, 64, 2, "bwd") == 2 * attention_bytes(1, 8, 8, 100, 100, 64, 2, "fwd")


def test_tflops_and_roofline_by_hand():
    assert tflops_per_second(3e12, 1500.0) == pytest.approx(2.0)  # 3 TFLOP in 1.5 s
    # (bench.4): IO-aware intensity N / s = 1024 / 2 = 512 FLOP/byte, for any D.
    assert arithmetic_intensity(1024, 64, 2) == pytest.approx(512.0)
    assert arithmetic_intensity(1024, 128, 2) == pytest.approx(512.0)
    # (bench.5): materialized scores, N D / (s (N + D)) = 65536 / 2176.
    assert arithmetic_intensity(1024, 64, 2, materialize_scores=True) == pytest.approx(65536 / 2176)
    # (bench.7): tiles of 128 query rows re-read K and V 1024 / 128 = 8 times: 4 N^2 D / (s (2 N D + 16 N D))
    # = 4 * 1024 / (2 * 18) = 113.8 FLOP/byte, approaching 2 B_r / s = 128 as N grows.
    assert arithmetic_intensity(1024, 64, 2, query_block=128) == pytest.approx(4096 / 36)
    assert arithmetic_intensity(1 << 20, 64, 2, query_block=128) == pytest.approx(128.0, rel=1e-3)
    # (bench.6): ridge at 1000 / 3 FLOP/byte; below it bandwidth-bound, above compute-bound.
    assert roofline(10.0, peak_tflops=1000.0, bandwidth_tb_s=3.0) == pytest.approx(30.0)
    assert roofline(512.0, peak_tflops=1000.0, bandwidth_tb_s=3.0) == pytest.approx(1000.0)


@given(n=st.integers(1, 1 << 16), d=st.sampled_from([16, 32, 64, 128, 256]), s=st.sampled_from([1, 2, 4]))
def test_materialized_intensity_never_exceeds_d_over_s(n, d, s):
    # (bench.5): however long the sequence, writing N x N scores caps the intensity at D / s.
    assert arithmetic_intensity(n, d, s, materialize_scores=True) < d / s
    assert arithmetic_intensity(n, d, s, materialize_scores=True) <= arithmetic_intensity(n, d, s)


# ---------------------------------------------------------------- timer

class FakeClock:
    """A clock whose successive (start, end) readings are given: each timed call lasts the next duration."""

    def __init__(self, durations_ms):
        self.readings = []
        t = 100.0
        for d in durations_ms:
            self.readings += [t, t + d / 1e3]
            t += 1.0
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return self.readings[self.reads - 1]


def test_timer_skips_warmup_and_reports_median_and_quartiles():
    clock, calls, setups = FakeClock([5.0, 1.0, 3.0, 2.0, 4.0]), [], []
    samples = time_host(lambda: calls.append(1), warmup=2, repeats=5, clock=clock, setup=lambda: setups.append(1))
    assert len(calls) == 7 and len(setups) == 7  # warm-up calls run, but only 5 are read off the clock
    assert clock.reads == 10
    assert samples == pytest.approx([5.0, 1.0, 3.0, 2.0, 4.0])
    stats = summarize(samples)
    assert (stats.median_ms, stats.p25_ms, stats.p75_ms) == pytest.approx((3.0, 2.0, 4.0))
    assert (stats.iqr_ms, stats.min_ms, stats.max_ms) == pytest.approx((2.0, 1.0, 5.0))
    assert stats.repeats == 5


def test_timer_quartiles_interpolate_on_even_counts():
    stats = summarize([4.0, 1.0, 3.0, 2.0])  # sorted 1 2 3 4: positions 0.75, 1.5, 2.25
    assert (stats.p25_ms, stats.median_ms, stats.p75_ms) == pytest.approx((1.75, 2.5, 3.25))


def test_timer_is_robust_to_one_outlier():
    # The median ignores a single 1000x stall that would drag the mean up 100x.
    stats = summarize(time_host(lambda: None, warmup=0, repeats=5, clock=FakeClock([1, 1, 1000, 1, 1])))
    assert stats.median_ms == pytest.approx(1.0) and stats.iqr_ms == pytest.approx(0.0)


@given(st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=40), st.floats(0.0, 1.0))
def test_percentile_agrees_with_numpy(values, q):
    assert percentile(sorted(values), q) == pytest.approx(float(np.percentile(values, 100 * q)), abs=1e-9)


def test_timer_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats"):
        time_host(lambda: None, warmup=0, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        time_host(lambda: None, warmup=-1, repeats=1)


# ---------------------------------------------------------------- the float64 reference and the gate

@settings(max_examples=10)
@given(n=st.integers(1, 24), d=st.integers(1, 12), causal=st.booleans(), chunked=st.booleans())
def test_reference_matches_pytorch_sdpa_in_float64(n, d, causal, chunked):
    gen = torch.Generator().manual_seed(n * 100 + d)
    q, k, v, dout = (torch.randn(2, 3, n, d, generator=gen, dtype=torch.float64) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = F.scaled_dot_product_attention(*leaves, is_causal=causal, scale=0.7)
    expected.backward(dout)
    # a tiny budget forces one (batch, head) per chunk: chunking must not change the answer
    out, grads = reference(q, k, v, dout, causal, 0.7, budget_bytes=1 if chunked else 2**30)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for g, leaf in zip(grads, leaves):
        torch.testing.assert_close(g, leaf.grad, rtol=1e-10, atol=1e-12)


def counting(fn):
    """Wrap an implementation so a test can see how often the harness called it."""
    def wrapped(q, k, v, causal, scale):
        wrapped.calls += 1
        return fn(q, k, v, causal, scale)
    wrapped.calls = 0
    return wrapped


def _sdpa(q, k, v, causal, scale):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def test_gate_records_wrong_kernels_as_failed_and_never_times_them():
    garbage = counting(lambda q, k, v, causal, scale: torch.randn_like(q) + 0 * (q + k + v))
    wrong_scale = counting(lambda q, k, v, causal, scale: _sdpa(q, k, v, causal, 1.1 * scale))
    ignores_mask = counting(lambda q, k, v, causal, scale: _sdpa(q, k, v, False, scale))
    nan = counting(lambda q, k, v, causal, scale: (q + k + v) * float("nan"))
    good = counting(_sdpa)
    config = AttentionBenchConfig(**TINY, masks=["causal"], impls=[])
    extra = {"garbage": garbage, "wrong_scale": wrong_scale, "ignores_mask": ignores_mask, "nan": nan,
             "good": good}
    records = {r["impl"]: r for r in run_sweep(config, extra_impls=extra, progress=None) if r["seq_len"] == 32}
    for name in ("garbage", "wrong_scale", "ignores_mask", "nan"):
        r = records[name]
        assert r["status"] == "failed", name
        assert "relative error above 0.0001" in r["reason"]
        assert r["timings_ms"] is None and r["tflops"] is None
        assert extra[name].calls == 2, name  # once per N (16 and 32): the gate only, never timed
    assert records["nan"]["errors"]["out"] is None  # non-finite error -> null in JSON, reason says why
    assert records["good"]["status"] == "ok" and max(records["good"]["errors"].values()) < 1e-5
    # per N: gate + one graph kept for backward + warm-up and repeats of fwd and of fwd+bwd (no memory pass on CPU)
    assert good.calls == 2 * (1 + 1 + 2 * (TINY["warmup"] + TINY["repeats"]))


def test_gate_through_a_registered_minitx_backend():
    attention = pytest.importorskip("minitx.attention.backends")
    attention.register_backend("bench_test_garbage", lambda q, k, v, **kw: torch.zeros_like(q) + v.mean())
    config = AttentionBenchConfig(**TINY, masks=["full"], impls=["minitx:bench_test_garbage", "minitx:sdpa"])
    records = run_sweep(config, progress=None)
    by_impl = {r["impl"]: r for r in records if r["seq_len"] == 16}
    assert by_impl["minitx:bench_test_garbage"]["status"] == "failed"
    assert by_impl["minitx:bench_test_garbage"]["timings_ms"] is None
    assert by_impl["minitx:sdpa"]["status"] == "ok"  # the front door's PyTorch backend passes the same gate


def test_unavailable_implementations_are_skipped_with_a_reason_and_unknown_names_refused(monkeypatch):
    monkeypatch.delenv("MINITX_BENCH_INTERPRETER", raising=False)
    config = AttentionBenchConfig(**TINY, masks=["full"], impls=["minitx:flash", "flex"])
    records = run_sweep(config, progress=None)
    assert all(r["status"] == "skipped" and r["timings_ms"] is None for r in records)
    reasons = {r["impl"]: r["reason"] for r in records}
    assert "Triton" in reasons["minitx:flash"] and "CUDA" in reasons["flex"]
    for typo in ("minitx:no_such_backend", "minitx:flsh", "sdpa:flsh", "flash"):  # nothing runs, nothing skipped
        with pytest.raises(ValueError, match=typo.split(":")[-1]):
            run_sweep(AttentionBenchConfig(**TINY, masks=["full"], impls=["sdpa:math", typo]), progress=None)


def test_shapes_hold_tokens_and_model_width_fixed():
    config = AttentionBenchConfig(tokens=16384, model_dim=2048)
    assert shape_for(config, 2048, 64) == (8, 32)
    assert shape_for(config, 32768, 128) == (1, 16)  # at least one sequence


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="model_dim"):
        AttentionBenchConfig(head_dims=[48], model_dim=64).validate()
    with pytest.raises(ValueError, match="dtypes"):
        AttentionBenchConfig(dtypes=["fp8"]).validate()
    # a thread's CPU time misses work done on other threads: only sound single-threaded
    with pytest.raises(ValueError, match="threads"):
        AttentionBenchConfig(cpu_clock="thread", threads=2).validate()
    AttentionBenchConfig(cpu_clock="thread", threads=1).validate()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            AttentionBenchConfig(device="cuda").validate()


# ---------------------------------------------------------------- CLI, JSON schema, table, plot

RECORD_KEYS = {"impl", "dtype", "mask", "causal", "seq_len", "head_dim", "batch", "heads", "tolerance", "flops",
               "bytes", "heads_kv", "window", "dropout", "status", "reason", "errors", "timings_ms", "tflops", "tb_per_s", "pct_peak", "pct_bandwidth",
               "peak_memory_bytes", "memory_note"}
def test_torch_threads_sets_the_count_and_restores_it_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):  # None keeps PyTorch's choice
        assert torch.get_num_threads() == before


ENV_KEYS = {"python", "torch", "triton", "platform", "cpu", "cpu_count", "torch_threads", "device", "device_name",
            "cuda", "cudnn", "driver", "compute_capability", "git_commit", "git_dirty", "load_average_1min",
            "load_average_1min_end"}


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["attention", "--seq-lens", "16", "32", "--head-dims", "8", "--tokens", "64", "--model-dim", "16",
            "--repeats", "3", "--warmup", "1", "--causal", "--impls", "sdpa:math", "sdpa:flash", "minitx:flash",
            "--threads", "1", "--cpu-clock", "thread",
            "--device", "cpu", "--out", str(out / "r.json"), "--plot", str(out / "r.png"),
            "--table", str(out / "r.md"), "--quiet"]
    assert bench_main(argv, prog="minitx bench") == 0
    return out


def test_cli_writes_json_png_and_table(cli_run):
    assert (cli_run / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((cli_run / "r.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert doc["schema"] == "minitx.bench.attention/1"
    assert ENV_KEYS <= set(doc["environment"]) and doc["environment"]["device"] == "cpu"
    assert doc["config"]["seq_lens"] == [16, 32] and doc["config"]["masks"] == ["causal"]
    assert doc["config"]["cpu_clock"] == "thread" and doc["environment"]["torch_threads"] == 1
    assert len(doc["results"]) == 2 * 3
    assert all(set(r) == RECORD_KEYS and r["causal"] for r in doc["results"])
    assert all(math.isfinite(x) for x in _numbers(doc))
    assert (cli_run / "r.md").read_text() == results_table(doc)


def test_json_figures_are_consistent(cli_run):
    doc = json.loads((cli_run / "r.json").read_text())
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert {r["impl"] for r in ok} == {"sdpa:math", "sdpa:flash"}  # PyTorch's CPU kernels, stable references
    for r in ok:
        assert (r["batch"], r["heads"]) == (64 // r["seq_len"], 2)
        n = r["seq_len"]
        assert r["flops"]["fwd"] == 4 * r["batch"] * r["heads"] * n * (n + 1) / 2 * 8  # (bench.8): causal pairs
        assert r["flops"]["bwd"] == 2.5 * r["flops"]["fwd"]
        assert r["bytes"]["fwd"] == 4 * r["batch"] * r["heads"] * n * 8 * 4  # Q, K, V, O in fp32 (bench.9)
        assert r["tb_per_s"]["fwd"] == pytest.approx(r["bytes"]["fwd"] / (r["timings_ms"]["fwd"]["median_ms"] * 1e9))
        assert r["pct_peak"] is None and r["pct_bandwidth"] is None  # a CPU: no spec-sheet peak
        for p, t in r["timings_ms"].items():
            assert 0 < t["min_ms"] <= t["p25_ms"] <= t["median_ms"] <= t["p75_ms"] <= t["max_ms"]
            assert t["iqr_ms"] == pytest.approx(t["p75_ms"] - t["p25_ms"]) and t["repeats"] == 3
            assert r["tflops"][p] == pytest.approx(r["flops"][p] / (t["median_ms"] * 1e-3) / 1e12)
        assert r["peak_memory_bytes"] is None and "CPU" in r["memory_note"]
        assert max(r["errors"].values()) <= r["tolerance"] == 1e-4


def test_table_is_derived_from_the_json(cli_run):
    doc = json.loads((cli_run / "r.json").read_text())
    table = results_table(doc)
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| impl")]
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert len(rows) == len(ok)
    for row, r in zip(rows, ok):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:5] == [r["impl"], "fp32", "causal", "8", str(r["seq_len"])]
        assert cells[6].startswith(f"{r['timings_ms']['fwd']['median_ms']:.3f} ± ")
        assert float(cells[11]) == pytest.approx(r["tflops"]["fwd_bwd"], rel=1e-2)
        assert float(cells[14]) == pytest.approx(r["tb_per_s"]["fwd_bwd"], rel=1e-2) and cells[12] == "–"
    assert "**minitx:flash** skipped (2 config(s))" in table
    doc["results"][0]["tflops"]["fwd_bwd"] = 123.0  # the table follows the numbers it is given
    assert "| 123 |" in results_table(doc)


def test_cli_bad_flags_fail_with_the_flag_named(capsys):
    with pytest.raises(SystemExit, match="n_heads"):
        bench_main(["training", "--d-model", "30", "--heads", "4"], prog="minitx bench")
    assert bench_main(["attention", "--head-dims", "48", "--model-dim", "64", "--quiet"], prog="minitx bench") == 2
    err = capsys.readouterr().err
    assert err.startswith("minitx: error:") and "model_dim" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        bench_main(["attention", "--no-such-flag"], prog="minitx bench")


# ---------------------------------------------------------------- bring your own kernel: --custom

CUSTOM = """
import torch.nn.functional as F


def my_sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


def one_percent_off(q, k, v, attn_mask=None, is_causal=False, scale=None):
    return 1.01 * F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)


def wrong_signature(q, k, v, causal):
    return q
"""


@pytest.fixture
def kernel_file(tmp_path):
    path = tmp_path / "my_kernels.py"
    path.write_text(CUSTOM)
    return path


def test_custom_kernel_from_the_cli_is_timed_and_a_one_percent_wrong_one_refused(kernel_file, tmp_path):
    out = tmp_path / "r.json"
    argv = ["attention", "--seq-lens", "16", "--head-dims", "8", "--tokens", "32", "--model-dim", "16",
            "--repeats", "2", "--warmup", "1", "--impls", "sdpa:math", "--custom", f"mine={kernel_file}:my_sdpa",
            "--custom", f"off={kernel_file}:one_percent_off", "--device", "cpu", "--out", str(out), "--quiet"]
    assert bench_main(argv, prog="minitx bench") == 0
    doc = json.loads(out.read_text())
    by = {(r["impl"], r["mask"]): r for r in doc["results"]}
    for mask in ("full", "causal"):
        mine, off = by[("mine", mask)], by[("off", mask)]
        assert mine["status"] == "ok" and mine["timings_ms"]["fwd"]["median_ms"] > 0
        assert max(mine["errors"].values()) < 1e-5
        assert off["status"] == "failed" and off["timings_ms"] is None and off["tflops"] is None
        assert off["errors"]["out"] == pytest.approx(0.01, rel=1e-3)  # exactly the 1% it is off by
    assert doc["config"]["custom"] == [f"mine={kernel_file}:my_sdpa", f"off={kernel_file}:one_percent_off"]
    assert doc["config"]["threads"] == 1 and doc["config"]["cpu_clock"] == "thread"  # CPU defaults


@pytest.mark.parametrize("spec, words", [("x={file}:nope", "no function"), ("x={file}:wrong_signature", "SDPA"),
                                         ("x=/no/such/file.py:f", "no such file"), ("{file}:my_sdpa", "NAME="),
                                         ("sdpa:math={file}:my_sdpa", "already")])
def test_bad_custom_specs_exit_2_naming_the_problem(kernel_file, capsys, spec, words):
    argv = ["attention", "--seq-lens", "16", "--head-dims", "8", "--impls", "sdpa:math", "--quiet",
            "--custom", spec.format(file=kernel_file)]
    assert bench_main(argv, prog="minitx bench") == 2
    err = capsys.readouterr().err
    assert err.startswith("minitx: error: ") and words in err


def test_a_typo_in_an_impl_name_exits_2_from_the_command_line():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "minitx", "bench", "attention", "--impls", "minitx:flsh",
                           "--seq-lens", "16", "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("minitx: error: ") and "flsh" in proc.stderr and "minitx:flash" in proc.stderr
    assert "records" not in proc.stdout  # nothing ran


def test_cpu_defaults_are_one_thread_the_thread_clock_and_runnable_impls(monkeypatch):
    import argparse

    from minitx.bench.cli import _attention_parser, config_from_args

    monkeypatch.delenv("MINITX_BENCH_INTERPRETER", raising=False)
    parser = argparse.ArgumentParser()
    _attention_parser(parser.add_subparsers())
    config = config_from_args(parser.parse_args(["attention", "--device", "cpu"]))
    assert config.threads == 1 and config.cpu_clock == "thread"
    assert "minitx:math" in config.impls and "sdpa:math" in config.impls
    assert not {"minitx:flash", "flex", "sdpa:cudnn", "sdpa:efficient"} & set(config.impls)
    explicit = config_from_args(parser.parse_args(["attention", "--device", "cpu", "--threads", "2"]))
    assert explicit.threads == 2 and explicit.cpu_clock == "wall"


# ---------------------------------------------------------------- GPU path (not run in CI: no GPU here)

@pytest.mark.gpu
def test_gpu_sweep_times_with_events_and_measures_peak_memory(tmp_path):
    config = AttentionBenchConfig(seq_lens=[256, 512], head_dims=[64], dtypes=["bf16", "fp16"], tokens=2048,
                                  model_dim=256, repeats=5, warmup=2, device="cuda",
                                  impls=["minitx:math", "minitx:flash", "sdpa:flash", "sdpa:efficient", "sdpa:math"])
    records = run_sweep(config, progress=None)
    ok = [r for r in records if r["status"] == "ok"]
    assert {"minitx:math", "sdpa:math"} <= {r["impl"] for r in ok}
    assert not [r for r in records if r["status"] == "failed"], [r["reason"] for r in records]
    for r in ok:
        # every kernel's forward + backward holds at least its 2-byte output (B, H, N, D) beyond the inputs
        assert r["peak_memory_bytes"] >= r["batch"] * r["heads"] * r["seq_len"] * 64 * 2
        assert all(t["median_ms"] > 0 for t in r["timings_ms"].values())
    # the readable path materializes the N x N probabilities P for its backward
    math_rows = [r for r in ok if r["impl"] == "minitx:math"]
    assert all(r["peak_memory_bytes"] >= r["batch"] * r["heads"] * r["seq_len"] ** 2 * 2 for r in math_rows)


def test_committed_cpu_results_and_readme_table_come_from_the_json():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    results = root / "results" / "cpu_attention.json"
    doc = json.loads(results.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert all(math.isfinite(x) for x in _numbers(doc))
    assert all(r["status"] != "failed" for r in doc["results"])
    assert all(max(r["errors"].values()) <= r["tolerance"] for r in doc["results"] if r["status"] == "ok")
    table = results_table(doc)
    assert (root / "results" / "cpu_attention.md").read_text() == table
    readme = (root / "README.md").read_text()
    start = readme.index("-->\n", readme.index("<!-- BEGIN cpu_attention table")) + len("-->\n")
    assert readme[start:readme.index("<!-- END cpu_attention table")] == table


def test_plots_draw_the_roofline_and_peak_memory_when_the_device_has_them(cli_run, tmp_path):
    """A GPU document (here: the CPU one relabelled as an H100 with measured memory) gets the dashed
    roofline min(peak, I W) in each TFLOP/s panel and a peak-memory-vs-N figure; the CPU one gets neither."""
    from minitx.bench.report import plot_memory, plot_tflops
    from minitx.plots import plt

    doc = json.loads((cli_run / "r.json").read_text())
    assert plot_memory(doc) is None  # no CUDA, no memory measured
    fig = plot_tflops(doc)
    assert not any(line.get_label().startswith("roofline") for ax in fig.axes for line in ax.get_lines())
    plt.close(fig)
    doc["environment"].update(device="cuda", device_name="NVIDIA H100 80GB HBM3")
    for i, r in enumerate(doc["results"]):
        r["peak_memory_bytes"] = (i + 1) * 2**20
    fig = plot_tflops(doc)
    roof = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "roofline fp32"]
    assert roof
    r = next(r for r in doc["results"] if r["status"] == "ok" and r["seq_len"] == 16)
    expected = min(66.9, r["flops"]["fwd_bwd"] / r["bytes"]["fwd_bwd"] * 3.35)
    assert any(y == pytest.approx(expected) for line in roof for y in line.get_ydata())
    plt.close(fig)
    mem = plot_memory(doc, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG" and mem.axes[0].get_lines()
    plt.close(mem)


def test_grouped_query_and_window_sweeps_gate_every_impl_and_count_attended_pairs(monkeypatch):
    """--gqa and --window: the float64 reference repeats k, v per group and masks the band (flash.10, flash.18);
    the flash kernel (under the interpreter), the math backend and SDPA pass it, an impl that ignores the window
    fails it, and FLOPs count the attended pairs (bench.8) and bytes the smaller k, v (bench.9)."""
    from minitx.bench.flops import attended_pairs

    monkeypatch.setenv("MINITX_BENCH_INTERPRETER", "1")

    def ignores_window(q, k, v, causal, scale, window=None):
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    config = AttentionBenchConfig(seq_lens=[40], head_dims=[16], dtypes=["fp32"], tokens=40, model_dim=64,
                                  repeats=1, warmup=0, gqa=2, window=7,
                                  impls=["minitx:math", "minitx:flash", "sdpa:math"])
    records = run_sweep(config, extra_impls={"ignores_window": ignores_window}, progress=None)
    by = {(r["impl"], r["causal"]): r for r in records}
    for causal in (False, True):
        for impl in ("minitx:math", "minitx:flash", "sdpa:math"):
            r = by[(impl, causal)]
            assert r["status"] == "ok", (impl, causal, r["reason"])
            assert (r["heads"], r["heads_kv"]) == (4, 2) and tuple(r["window"]) == ((7, 0) if causal else (7, 7))
            pairs = attended_pairs(40, 40, causal, (7, 0) if causal else (7, 7))
            assert r["flops"]["fwd"] == 4 * 1 * 4 * pairs * 16
            assert r["bytes"]["fwd"] == 4 * (2 * 4 * 40 * 16 + 2 * 2 * 40 * 16)
        assert by[("ignores_window", causal)]["status"] == "failed"
    with pytest.raises(ValueError, match="gqa"):
        AttentionBenchConfig(head_dims=[64], model_dim=256, gqa=3).validate()  # 4 heads: 3 does not divide


def test_dropout_sweep_gates_without_dropout_and_times_with_it(monkeypatch):
    """--dropout p: a random mask has no float64 reference, so the gate runs at p = 0 and only the timed calls
    drop; an impl that takes no dropout_p (a --custom kernel, a plain function) is skipped, never mis-timed."""
    monkeypatch.setenv("MINITX_BENCH_INTERPRETER", "1")
    seen = []

    def records_p(q, k, v, causal, scale, dropout_p=0.0):
        seen.append(dropout_p)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, dropout_p=dropout_p)
    config = AttentionBenchConfig(seq_lens=[40], head_dims=[16], masks=["causal"], dtypes=["fp32"], tokens=40,
                                  model_dim=32, repeats=1, warmup=0, dropout=0.25,
                                  impls=["minitx:math", "minitx:flash", "sdpa:math"])
    records = run_sweep(config, extra_impls={"records_p": records_p, "no_dropout": _sdpa}, progress=None)
    by = {r["impl"]: r for r in records}
    for impl in ("minitx:math", "minitx:flash", "sdpa:math", "records_p"):
        assert by[impl]["status"] == "ok" and by[impl]["dropout"] == 0.25 and by[impl]["timings_ms"], impl
    assert seen[0] == 0.0 and set(seen[1:]) == {0.25}  # gate first, undropped; every timed call dropped
    assert by["no_dropout"]["status"] == "skipped" and "dropout_p" in by["no_dropout"]["reason"]
    with pytest.raises(ValueError, match="dropout"):
        AttentionBenchConfig(dropout=1.0).validate()
