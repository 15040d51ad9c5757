"""The packed variable-length sweep (`minitx bench attention --varlen`, minitx/bench/varlen.py).

Equation labels: (bench.8) in docs/benchmarking.md, (flash.10) and (flash.19) in docs/math/flash_attention.md.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from minitx.attention.backends import register_backend
from minitx.bench import AttentionBenchConfig, bench_main, run_sweep
from minitx.bench.flops import attended_pairs
from minitx.bench.varlen import (cu_seqlens, draw_lengths, pad, padding_mask, run_varlen_sweep, unpad)


def test_lengths_are_drawn_in_range_from_the_seed_and_pad_unpad_round_trip():
    a, b = draw_lengths(50, 9, seed=3), draw_lengths(50, 9, seed=3)
    assert a == b and min(a) >= 1 and max(a) <= 9 and len(set(a)) > 3  # seeded, in 1..N, not constant
    assert draw_lengths(50, 9, seed=4) != a
    assert cu_seqlens([3, 1, 4], "cpu").tolist() == [0, 3, 4, 8]
    packed = torch.randn(8, 2, 5)
    padded = pad(packed, [3, 1, 4], 6)  # (T, H, D) -> (B, H, N, D)
    assert padded.shape == (3, 2, 6, 5) and torch.equal(unpad(padded, [3, 1, 4]), packed)
    assert torch.equal(padded[1, :, 0], packed[3]) and not padded[1, :, 1:].any()  # zeros after the end


def test_padding_mask_allows_only_the_real_keys_within_the_band():
    """(flash.10) inside each sequence; keys past a sequence's end never; a padded query row keeps the real keys."""
    mask = padding_mask([2, 4], 4, causal=True, window=(1, 0), device="cpu")  # (B, 1, N, N)
    allowed = lambda i, j, n: j < n and j <= i and i - j <= 1  # noqa: E731
    expected = torch.tensor([[[[allowed(i, j, n) for j in range(4)] for i in range(4)]] for n in (2, 4)])
    assert torch.equal(mask[1], expected[1]) and torch.equal(mask[0, :, :2], expected[0, :, :2])
    # rows 2, 3 of the length-2 sequence are padding; row 3's band holds no real key: it sees both (no NaN)
    assert mask[0, 0, 2:].tolist() == [[True, True, False, False]] * 2
    assert padding_mask([2], 3, causal=False, window=None, device="cpu")[0, 0].tolist() == [[True, True, False]] * 3


def test_varlen_sweep_gates_every_impl_counts_real_pairs_and_refuses_a_kernel_that_crosses_sequences(monkeypatch):
    """Packed minitx backends (flash under the interpreter: one kernel over cu_seqlens, flash.19) and SDPA on the
    padded batch pass the float64 gate on the real rows; a varlen backend that lets queries see the previous
    sequence's keys fails it and is never timed; FLOPs are the attended pairs summed per sequence (bench.8)."""
    monkeypatch.setenv("MINITX_BENCH_INTERPRETER", "1")

    def crosses(q, k, v, cu_q, cu_k, *, is_causal=False, scale=None, **_):  # the packing as one sequence
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (T, H, D) -> (1, H, T, D)
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)[0].transpose(0, 1)

    def backend(q, k, v, **kw):
        raise AssertionError("the varlen sweep must call the backend's varlen entry")
    backend.varlen = crosses
    register_backend("bench_test_crosses", backend)
    config = AttentionBenchConfig(seq_lens=[20], head_dims=[16], dtypes=["fp32"], tokens=60, model_dim=32, gqa=2,
                                  repeats=1, warmup=0, varlen=True,
                                  impls=["minitx:math", "minitx:flash", "sdpa:math", "minitx:bench_test_crosses"])
    records = run_varlen_sweep(config, extra_impls={"mine": lambda *a, **k: None}, progress=None)
    by = {(r["impl"], r["causal"]): r for r in records}
    for causal in (False, True):
        lengths = by[("minitx:math", causal)]["lengths"]
        assert len(lengths) == 3 and all(1 <= n <= 20 for n in lengths) and len(set(lengths)) > 1
        pairs = sum(attended_pairs(n, n, causal) for n in lengths)
        for impl in ("minitx:math", "minitx:flash", "sdpa:math"):
            r = by[(impl, causal)]
            assert r["status"] == "ok" and max(r["errors"].values()) < 1e-5, (impl, causal, r["reason"])
            assert r["lengths"] == lengths and r["real_tokens"] == sum(lengths) and r["timings_ms"]
            assert r["flops"]["fwd"] == 4 * 2 * pairs * 16 and r["flops"]["bwd"] == 2.5 * r["flops"]["fwd"]
            assert r["bytes"]["fwd"] == 4 * (2 * 2 * sum(lengths) * 16 + 2 * 1 * sum(lengths) * 16)
            assert r["mask"] == ("causal varlen" if causal else "full varlen") and r["heads_kv"] == 1
        bad = by[("minitx:bench_test_crosses", causal)]
        assert bad["status"] == "failed" and bad["timings_ms"] is None and "relative error" in bad["reason"]
        assert by[("mine", causal)]["status"] == "skipped" and "packed" in by[("mine", causal)]["reason"]
    with pytest.raises(ValueError, match="varlen"):
        run_sweep(config, progress=None)  # the dense sweep does not silently ignore varlen=True
    with pytest.raises(ValueError, match="varlen"):
        AttentionBenchConfig(varlen="yes").validate()


def test_varlen_from_the_command_line_with_a_window(tmp_path, capsys):
    """`--varlen --window`: the flag reaches the config, the records say varlen and count the band per sequence."""
    out = tmp_path / "v.json"
    code = bench_main(["attention", "--varlen", "--window", "3", "--causal", "--seq-lens", "12",
                       "--head-dims", "8", "--tokens", "36", "--model-dim", "16", "--repeats", "1", "--warmup", "0",
                       "--impls", "minitx:math", "sdpa:math", "--device", "cpu", "--quiet", "--out", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["varlen"] is True and len(doc["results"]) == 2
    for r in doc["results"]:
        assert r["status"] == "ok" and r["mask"] == "causal window 3 varlen" and r["window"] == [3, 0]
        assert r["flops"]["fwd"] == 4 * 2 * 8 * sum(attended_pairs(n, n, True, (3, 0)) for n in r["lengths"])
    assert "causal window 3 varlen" in capsys.readouterr().out  # the table shows it
