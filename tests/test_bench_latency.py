"""The side-by-side benchmarks (`minitx bench latency`, `minitx bench gpt-training`): outputs gated before
anything is timed (a wrong contender is refused and never timed), alternated rounds and the time ratio from
given samples (bench.10), op counts, the FLOP count and MFU arithmetic (bench.11-12), the JSON / table / plot
round trip and the one-line CLI errors."""

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.bench import bench_main
from minitx.bench.flops import mfu_percent, transformer_flops
from minitx.bench.gpt_training import GPTTrainingBenchConfig
from minitx.bench.latency import LatencyBenchConfig, bert_forward_workload, gpt_decode_workload, run_latency_bench
from minitx.bench.sidebyside import Workload, alternate, count_ops, matmul_peak, outputs_gate, run_workload, time_ratio
from minitx.bench.sidebyside_report import (plot_ratios, sidebyside_document, sidebyside_table, summary_rows,
                                            update_readme)
from minitx.models.bert import BertConfig
from minitx.models.gpt import GPTConfig

pytest.importorskip("transformers")

BERT_TINY = dict(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1)
GPT_TINY = dict(vocab_size=40, max_position=24, d_model=16, n_layers=1, n_heads=2)


# ---------------------------------------------------------------- arithmetic on given samples and a fake clock

def test_time_ratio_from_given_samples():
    """(bench.10) on samples whose ratios are known."""
    # per-round ratios 2/1, 4/2, 9/3 = 2, 2, 3: median 2, quartiles 2 and 2.5 (linear, as numpy)
    r = time_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
    assert r == dict(ratio=pytest.approx(4.0 / 2.0), paired_median=pytest.approx(2.0),
                     paired_p25=pytest.approx(2.0), paired_p75=pytest.approx(2.5))
    with pytest.raises(ValueError, match="samples, reference"):
        time_ratio([1.0, 2.0], [1.0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3)), min_size=1, max_size=12))
def test_time_ratio_matches_numpy(pairs):
    """(bench.10) against numpy's median and percentiles."""
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    r = time_ratio(a, b)
    per_round = np.array(a) / np.array(b)
    assert r["ratio"] == pytest.approx(np.median(a) / np.median(b))
    assert r["paired_median"] == pytest.approx(np.median(per_round))
    assert r["paired_p25"] == pytest.approx(np.percentile(per_round, 25))
    assert r["paired_p75"] == pytest.approx(np.percentile(per_round, 75))


def test_alternate_reverses_the_order_each_round_and_averages_inner_calls():
    now, calls = [0.0], []
    cost = {"minitx": 0.003, "hf": 0.002}

    def make(name):
        def fn():
            calls.append(name)
            now[0] += cost[name]
        return fn
    samples = alternate({"minitx": make("minitx"), "hf": make("hf")}, rounds=3, inner=2, warmup=1,
                        clock=lambda: now[0])
    assert calls == ["minitx", "hf"] + ["minitx"] * 2 + ["hf"] * 2 + ["hf"] * 2 + ["minitx"] * 2 + \
        ["minitx"] * 2 + ["hf"] * 2
    assert samples["minitx"] == pytest.approx([3.0] * 3) and samples["hf"] == pytest.approx([2.0] * 3)
    with pytest.raises(ValueError, match="rounds"):
        alternate({"a": lambda: None}, rounds=0)


def test_count_ops_counts_aten_events_all_and_top_level():
    x = torch.randn(4, 4)
    ops = count_ops(lambda: torch.nn.functional.linear(x, x) + x)
    # linear -> (t, addmm or mm) inside; add at the top: two top-level ops, more in all
    assert ops["top"] == 2 and ops["all"] > ops["top"]


# ---------------------------------------------------------------- FLOPs and MFU (bench.11-12)

def test_transformer_flops_and_mfu_on_a_known_count():
    """(bench.11) and (bench.12) by hand."""
    # L 2, C 4, d_ff 8, V 10, B 3, N 5: P_mm = 2 (4*16 + 2*4*8) + 10*4 = 2*128 + 40 = 296
    # forward = 2*296*15 + 4*2*3*25*4 = 8880 + 2400 = 11280; fwd+bwd = 3x = 33840; causal halves attention
    kw = dict(n_layers=2, d_model=4, d_ff=8, vocab_size=10, batch=3, seq_len=5)
    assert transformer_flops(**kw, causal=False, pass_="fwd") == 11280
    assert transformer_flops(**kw, causal=False) == 33840
    assert transformer_flops(**kw, causal=True) == 3 * (8880 + 1200)
    assert transformer_flops(**kw, causal=False, extra_matrix_params=16, pass_="fwd") == 11280 + 2 * 16 * 15
    # 33840 FLOPs in 1 us (1e-3 ms) = 33.84 GFLOP/s; against a 100 GFLOP/s peak that is 33.84 %
    assert mfu_percent(33840, 1e-3, 100.0) == pytest.approx(33.84)
    assert mfu_percent(33840, 2e-3, 100.0) == pytest.approx(16.92)
    with pytest.raises(ValueError, match="peak_gflops"):
        mfu_percent(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="pass_"):
        transformer_flops(**kw, causal=False, pass_="both")


def test_matmul_peak_is_2n3_over_the_median_time():
    """(bench.12): the peak is 2 n^3 FLOPs over the median product time."""
    ticks = iter([0.0, 0.010, 1.0, 1.020, 2.0, 2.030])  # 10, 20, 30 ms: median 20 ms
    peak = matmul_peak(size=64, repeats=3, clock=lambda: next(ticks))
    assert peak["median_ms"] == pytest.approx(20.0)
    assert peak["gflops"] == pytest.approx(2 * 64**3 / 0.020 / 1e9)


# ---------------------------------------------------------------- the gate comes first

def test_a_wrong_contender_is_refused_and_never_timed():
    good = bert_forward_workload("bert-tiny", BERT_TINY, seq_len=8, atol=1e-4, seed=0)
    calls = {"minitx": 0, "hf": 0}

    def counted(name, fn, shift=0.0):
        def call():
            calls[name] += 1
            return fn() + shift
        return call
    contenders = {"minitx": counted("minitx", good.contenders["minitx"], 1e-3),
                  "hf": counted("hf", good.contenders["hf"])}
    bad = Workload("bert-off", "logits 1e-3 off", contenders, outputs_gate(contenders, 1e-4))
    record = run_workload(bad, rounds=3, inner=2)
    assert record["status"] == "failed" and "gate" in record["reason"] and "> 0.0001" in record["reason"]
    assert record["gate"]["minitx_max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert record["timings_ms"] is None and record["ratio"] is None and record["meets_floor"] is None
    assert calls == {"minitx": 1, "hf": 1}, "only the gate ran them"


def test_decoding_gate_wants_equal_ids():
    w = gpt_decode_workload("gpt-tiny", GPT_TINY, prompt_len=4, new_tokens=6, use_cache=True, seed=0)
    ok, reason, values = w.gate()
    assert ok and reason is None and values == {"minitx_mismatches": 0}
    ids = w.contenders["minitx"]()
    assert ids.shape == (1, 10)
    off = {"minitx": lambda: ids.clone().index_fill_(1, torch.tensor([9]), (int(ids[0, 9]) + 1) % 40),
           "hf": w.contenders["hf"]}
    ok, reason, values = outputs_gate(off, None)()
    assert not ok and values["minitx_mismatches"] == 1 and "1 of 10 ids" in reason


def test_latency_rows_pass_the_gate_and_record_backend_ops_and_ratio():
    config = LatencyBenchConfig(workloads=["gpt-decode-nano"], rounds=3, bert_inner=2, warmup=1, new_tokens=3,
                                peak=False)
    extra = {"bert-tiny": lambda: bert_forward_workload("bert-tiny", BERT_TINY, 8, 1e-4, 0),
             "gpt-tiny-uncached": lambda: gpt_decode_workload("gpt-tiny-uncached", GPT_TINY, 4, 3, False, 0)}
    records, peak = run_latency_bench(config, extra_workloads=extra, progress=None)
    assert peak is None
    by = {r["workload"]: r for r in records}
    assert list(by) == ["gpt-decode-nano", "bert-tiny", "gpt-tiny-uncached"]
    for r in records:
        assert r["status"] == "ok", r["reason"]
        default = (BertConfig() if r["workload"].startswith("bert") else GPTConfig()).attention_backend
        assert r["minitx_backend"] == default, "a model built from its config as a user gets it"
        assert r["reference_attention"] == "sdpa"
        assert all(len(s) == 3 for s in r["samples_ms"].values())
        assert r["ratio"] == time_ratio(r["samples_ms"]["minitx"], r["samples_ms"]["hf"])
        assert r["meets_floor"] == (r["ratio"]["ratio"] <= 1.0)
        assert all(r["ops"][n]["all"] >= r["ops"][n]["top"] > 0 for n in ("minitx", "hf"))
    assert by["gpt-decode-nano"]["units_per_call"] == 3 and by["gpt-decode-nano"]["unit"] == "token"
    assert by["gpt-decode-nano"]["sizes"]["d_model"] == 128
    t = by["bert-tiny"]
    assert t["per_unit_ms"]["minitx"] == pytest.approx(t["timings_ms"]["minitx"]["median_ms"])
    assert t["gate"]["minitx_max_abs_diff"] <= 1e-4


# ---------------------------------------------------------------- JSON, table, plot, CLI

def _strict(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency")
    paths = {kind: out / f"r.{kind}" for kind in ("json", "md", "png")}
    assert bench_main(["latency", "--workloads", "gpt-decode-nano-uncached", "--rounds", "2", "--new-tokens", "2",
                       "--warmup", "0", "--quiet", "--out", str(paths["json"]), "--table", str(paths["md"]),
                       "--plot", str(paths["png"])]) == 0
    return paths


def test_cli_json_table_and_plot_round_trip(cli_run):
    doc = _strict(cli_run["json"].read_text())
    assert doc["schema"] == "minitx.bench.sidebyside/1"
    assert doc["environment"]["torch_threads"] == 1 and doc["environment"]["transformers"]
    assert "git_commit" in doc["environment"] and doc["config"]["cpu_clock"] == "thread"
    assert doc["matmul_peak"]["gflops"] > 0
    (r,) = doc["results"]
    assert r["workload"] == "gpt-decode-nano-uncached" and r["status"] == "ok" and r["minitx_backend"]
    table = cli_run["md"].read_text()
    assert table == sidebyside_table(doc)
    row = next(line for line in table.splitlines() if line.startswith("| gpt-decode-nano-uncached"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4].startswith(f"{r['ratio']['ratio']:.2f}x ({r['ratio']['paired_median']:.2f} [")
    assert cells[5] == "<= 1.0x" and cells[6] == ("yes" if r["meets_floor"] else "**no**")
    ops = r["ops"]
    assert cells[7] == (f"{ops['minitx']['all']} ({ops['minitx']['top']}) / {ops['hf']['all']} ({ops['hf']['top']}); "
                        f"per token {ops['minitx']['all'] / 2:.0f} / {ops['hf']['all'] / 2:.0f}")
    # the table follows the numbers it is given
    r["ratio"]["ratio"], r["meets_floor"] = 0.5, True
    changed = next(line for line in sidebyside_table(doc).splitlines() if line.startswith("| gpt-decode"))
    assert "| 0.50x (" in changed and "| yes |" in changed
    png = cli_run["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 300


def test_report_lists_a_failed_row_under_not_timed(tmp_path):
    failed = dict(workload="x", status="failed", reason="gate (outputs compared before timing): off")
    doc = sidebyside_document([failed], {"cpu_clock": "thread"}, None, title="T")
    assert "- **x** failed: gate (outputs compared before timing): off" in sidebyside_table(doc)
    plot_ratios(doc, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


@pytest.mark.parametrize("argv, words", [
    (["latency", "--rounds", "0"], "rounds"),
    (["latency", "--workloads", "bert-fwd-c96"], "bert-fwd-c96"),
    (["latency", "--threads", "2"], "threads"),
    (["latency", "--no-such-flag"], "--no-such-flag"),
    (["latency", "--rounds", "many"], "many"),
    (["gpt-training", "--seq-len", "4096"], "seq_len"),
    (["gpt-training", "--dropout", "1.5"], "dropout"),
])
def test_cli_user_errors_are_one_line_exit_2(capsys, argv, words):
    assert bench_main([*argv, "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("minitx: error: ") and words in captured.err
    assert len(captured.err.splitlines()) == 1 and captured.out == ""


def test_update_readme_rewrites_only_the_marked_rows(cli_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- cpu_latency -->\nold rows\n<!-- /cpu_latency -->\nafter\n")
    assert update_readme(readme, "cpu_latency", cli_run["json"])
    text = readme.read_text()
    doc = _strict(cli_run["json"].read_text())
    assert text == f"intro\n<!-- cpu_latency -->\n{summary_rows(doc)}\n<!-- /cpu_latency -->\nafter\n"
    assert "old rows" not in text and "| GPT greedy decoding, uncached" in text and "| <= 1.0x |" in text
    assert update_readme(readme, "cpu_latency", doc) and readme.read_text() == text, "idempotent"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not update_readme(plain, "cpu_latency", doc) and plain.read_text() == "no markers\n"


@pytest.mark.parametrize("config_class", ["latency", "gpt-training"])
@pytest.mark.parametrize("field, value", [("workloads", ["nope"]), ("workloads", []), ("rounds", 0),
                                          ("rounds", True), ("warmup", -1), ("threads", 0), ("cpu_clock", "sundial")])
def test_side_by_side_configs_name_the_bad_field(config_class, field, value):
    """Both side-by-side configs run the shared checks (sidebyside.check_side_by_side); each error names its field."""
    cls = LatencyBenchConfig if config_class == "latency" else GPTTrainingBenchConfig
    cls().validate()  # the defaults pass
    with pytest.raises(ValueError, match=field.replace("_", ".") if field != "threads" else "thread"):
        cls(**{field: value}).validate()


def test_side_by_side_optional_sizes_may_be_none_but_not_zero():
    LatencyBenchConfig(new_tokens=None).validate()
    GPTTrainingBenchConfig(batch_size=None, seq_len=None).validate()
    for config in (LatencyBenchConfig(new_tokens=0), GPTTrainingBenchConfig(batch_size=0),
                   GPTTrainingBenchConfig(seq_len=10**6)):
        with pytest.raises(ValueError, match="new_tokens|batch_size|seq_len"):
            config.validate()
