"""The training-throughput benchmark: the loss/gradient gate against transformers' BertForMaskedLM, the
interleaved timing and tokens/s arithmetic on a fake clock, the MLM batch, the JSON document and the CLI."""

import json
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from minitx.bench import bench_main
from minitx.bench.training import (PAD_ID, TrainingBenchConfig, attention_name, build_impl, gate, loss_and_grads,
                                   make_batch, run_training_bench, time_interleaved)
from minitx.bench.training_report import SCHEMA, ratios, throughput, training_table
from minitx.models.bert import BertForMaskedLM

pytest.importorskip("transformers")

TINY = dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, seq_len=16, batch_size=4, repeats=3, warmup=1)
TINY_FLAGS = ["--vocab-size", "64", "--d-model", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
              "--batch-size", "4", "--repeats", "3", "--warmup", "1", "--threads", "1", "--quiet"]


def _reference(config):
    torch.manual_seed(config.seed)
    base = BertForMaskedLM(config.model_config())
    batch = make_batch(config)
    hf, _ = build_impl("hf:eager", base, config)
    return base, batch, loss_and_grads(hf, batch)


# ---------------------------------------------------------------- the batch

def test_batch_pads_the_tails_and_masks_about_15_percent_of_real_tokens():
    config = TrainingBenchConfig(**{**TINY, "batch_size": 64, "seq_len": 128, "vocab_size": 1000})
    batch = make_batch(config)
    real = batch["attention_mask"].bool()
    assert real[0].all(), "row 0 is full, so the batch is really N long"
    assert (~real).any(), "some rows are padded"
    assert (real.long().sum(1) >= 64).all(), "min_length_fraction 0.5 of N = 128"
    # padding is at the end of each row: once a row is padded it stays padded
    assert (real[:, 1:] <= real[:, :-1]).all()
    assert ((batch["input_ids"] == PAD_ID) == ~real).all()
    labelled = batch["labels"] != -100
    assert not (labelled & ~real).any(), "no loss on padding"
    # (mlm.2): each real token selected with p = 0.15; 4 standard deviations of the binomial
    n = int(real.sum())
    share = int(labelled.sum()) / n
    assert abs(share - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    # (mlm.3): about 80% of the selected positions show [MASK] (id 4)
    masked = (batch["input_ids"][labelled] == 4).float().mean().item()
    assert abs(masked - 0.8) < 4 * math.sqrt(0.8 * 0.2 / int(labelled.sum()))


# ---------------------------------------------------------------- the gate

def test_gate_passes_for_the_same_weights_in_minitx_and_transformers():
    config = TrainingBenchConfig(**TINY)
    base, batch, reference = _reference(config)
    for name in ("minitx:math", "minitx:sdpa", "hf:sdpa"):
        model, _ = build_impl(name, base, config)
        status, reason, values = gate(model, batch, reference, config)
        assert status == "ok", reason
        assert values["loss_abs_diff"] <= 1e-5 and values["grad_rel_error"] <= 1e-4
        assert model.training, "the gate runs in eval mode and hands the model back in train mode"
        assert all(p.grad is None for p in model.parameters()), "the gate leaves no gradients behind"
    # (mlm.1): the reference loss is the mean cross-entropy over the labelled positions only, and at BERT's
    # initialisation (logits near 0) it is close to ln V.
    logits = base.eval()(batch["input_ids"], batch["attention_mask"]).logits
    keep = batch["labels"] != -100
    by_hand = F.cross_entropy(logits[keep], batch["labels"][keep])
    assert reference[0] == pytest.approx(by_hand.item(), abs=1e-5)
    assert abs(reference[0] - math.log(config.vocab_size)) < 0.1


def _loss_visible(model):
    with torch.no_grad():  # the output bias tilted by up to +-0.1: at initialisation the logits are ~0, so
        model.mlm_head.bias.add_(torch.linspace(-0.1, 0.1, model.config.vocab_size))  # this moves the loss
    return model


def _backward_only(model):
    # the forward is untouched (same loss, bit for bit), only the gradient of one matrix is wrong
    model.bert.blocks[0].feed_forward.fc_in.weight.register_hook(lambda g: 1.5 * g)
    return model


@pytest.mark.parametrize("perturb, what", [(_loss_visible, "loss"), (_backward_only, "gradient")])
def test_gate_rejects_a_perturbed_model_and_never_times_it(perturb, what):
    built = []
    config = TrainingBenchConfig(**{**TINY, "impls": ["minitx:math", "hf:eager"], "repeats": 2})
    records = {r["impl"]: r for r in run_training_bench(
        config, extra_impls={"perturbed": lambda m: built.append(perturb(m)) or built[-1]}, progress=None)}
    bad = records["perturbed"]
    assert bad["status"] == "failed" and what in bad["reason"]
    assert bad["timings_ms"] is None and bad["tokens_per_s"] is None and bad["ratio_to"] is None
    if what == "gradient":
        # a loss-only gate would pass it (the loss is the reference's to float rounding); the gradient check does not
        assert bad["gate"]["loss_abs_diff"] < config.loss_tolerance / 10
        assert bad["gate"]["grad_rel_error"] > 10 * config.grad_tolerance
    # never stepped: the weights are exactly the base model's, which the gated good rows started from
    fresh, _, _ = _reference(config)
    for (name, p), q in zip(built[0].named_parameters(), fresh.parameters()):
        tilted = what == "loss" and name == "mlm_head.bias"
        expected = q + torch.linspace(-0.1, 0.1, q.numel()) if tilted else q
        assert torch.equal(p, expected), name
    for name in ("minitx:math", "hf:eager"):
        assert records[name]["status"] == "ok" and records[name]["timings_ms"]["repeats"] == 2
        assert "perturbed" not in records[name]["ratio_to"]


# ---------------------------------------------------------------- timing arithmetic on a fake clock

@given(st.lists(st.tuples(st.floats(1e-3, 2.0), st.floats(1e-3, 2.0)), min_size=1, max_size=9),
       st.integers(1, 4096))
def test_interleaved_rounds_tokens_per_second_and_ratios_on_a_fake_clock(durations, tokens):
    now, calls = [0.0], []

    def fake_step(name, seconds):
        def step():
            calls.append(name)
            now[0] += seconds.pop(0) if seconds else 0.0
        return step

    mx, hf = [d[0] for d in durations], [d[1] for d in durations]
    steps = {"minitx:math": fake_step("minitx:math", [5.0, *mx]), "hf:eager": fake_step("hf:eager", [5.0, *hf])}
    samples = time_interleaved(steps, warmup=1, repeats=len(durations), clock=lambda: now[0])
    # warm-up (5 s each) untimed; then rounds alternate the order: A B, B A, A B, ...
    expected_order = ["minitx:math", "hf:eager"] + sum(
        (["minitx:math", "hf:eager"] if r % 2 == 0 else ["hf:eager", "minitx:math"] for r in range(len(durations))), [])
    assert calls == expected_order
    assert samples["minitx:math"] == pytest.approx([1e3 * s for s in mx])
    assert samples["hf:eager"] == pytest.approx([1e3 * s for s in hf])
    records = [dict(impl=name, status="ok", **throughput(samples[name], tokens)) for name in steps]
    a, b = records
    assert a["tokens_per_s"] == pytest.approx(tokens / np.median(mx))
    assert a["tokens_per_s_p25"] == pytest.approx(tokens / np.percentile(mx, 75))
    assert a["tokens_per_s_p75"] == pytest.approx(tokens / np.percentile(mx, 25))
    ratios(records, samples)
    assert a["ratio_to"]["hf:eager"]["ratio"] == pytest.approx(np.median(hf) / np.median(mx))
    assert a["ratio_to"]["hf:eager"]["paired_median"] == pytest.approx(np.median(np.array(hf) / np.array(mx)))
    assert b["ratio_to"] == {}, "an implementation has no ratio to itself"


# ---------------------------------------------------------------- config, CLI, JSON, table, plot

def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="impls"):
        TrainingBenchConfig(impls=["hf:flash_attention_2"]).validate()
    with pytest.raises(ValueError, match="d_model"):
        TrainingBenchConfig(d_model=30, n_heads=4).validate()
    with pytest.raises(ValueError, match="precision"):
        TrainingBenchConfig(precision="fp16").validate()
    with pytest.raises(ValueError, match="cpu_clock"):
        TrainingBenchConfig(cpu_clock="cycles").validate()
    with pytest.raises(ValueError, match="threads"):  # a thread's CPU time misses other threads' work
        TrainingBenchConfig(cpu_clock="thread", threads=2).validate()
    TrainingBenchConfig(cpu_clock="thread", threads=1).validate()
    with pytest.raises(SystemExit, match="warmup"):
        bench_main(["training", *TINY_FLAGS, "--warmup", "0"])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("training")
    paths = {kind: out / f"r.{kind}" for kind in ("json", "md", "png")}
    assert bench_main(["training", *TINY_FLAGS, "--out", str(paths["json"]), "--table", str(paths["md"]),
                       "--plot", str(paths["png"])]) == 0
    return paths


def _strict(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_json_records_environment_load_gate_and_consistent_throughput(cli_run):
    doc = _strict(cli_run["json"].read_text())
    assert doc["schema"] == SCHEMA
    env = doc["environment"]
    assert env["torch"] == torch.__version__ and env["transformers"] and env["torch_threads"] == 1
    assert all(len(doc["load_average"][k]) == 3 for k in ("start", "end"))
    assert doc["config"]["d_model"] == 16 and doc["config"]["precision"] == "fp32"
    records = {r["impl"]: r for r in doc["results"]}
    assert set(records) == {"minitx:math", "minitx:math:full-head", "minitx:sdpa", "minitx:flash", "hf:eager",
                            "hf:sdpa"}
    assert records["minitx:math"]["attention"] == "minitx math, head at labelled positions"
    assert records["minitx:math:full-head"]["attention"] == "minitx math, head at every position"
    assert records["minitx:flash"]["status"] == "skipped" and "interpreter" in records["minitx:flash"]["reason"]
    assert records["hf:sdpa"]["attention"] == "transformers sdpa"
    for r in (r for r in records.values() if r["status"] == "ok"):
        assert r["tokens_per_step"] == 4 * 16 and 0 < r["predicted_tokens_per_step"] < r["real_tokens_per_step"]
        assert r["gate"]["loss_abs_diff"] <= 1e-5
        assert r["tokens_per_s"] == pytest.approx(64 / (r["timings_ms"]["median_ms"] / 1e3))
        for hf, x in r["ratio_to"].items():
            assert x["ratio"] == pytest.approx(r["tokens_per_s"] / records[hf]["tokens_per_s"])
            assert x["paired_p25"] <= x["paired_median"] <= x["paired_p75"]
        assert r["parameters"] == records["hf:eager"]["parameters"], "same model, tied weights counted once"
        assert r["peak_memory_bytes"] > 0 and "profiler" in r["memory_note"]  # CPU: from the profiler's records


def test_cli_writes_a_table_derived_from_the_json_and_a_png(cli_run):
    table = cli_run["md"].read_text()
    assert table == training_table(_strict(cli_run["json"].read_text()))
    assert "| vs hf:eager | vs hf:sdpa |" in table and "the ratio to Hugging Face" in table
    assert "| minitx:math | minitx math, head at labelled positions |" in table and "**minitx:flash** skipped" in table
    png = cli_run["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 300 and height > 300


@pytest.mark.gpu
def test_gpu_bf16_run_times_flash_and_measures_peak_memory():
    config = TrainingBenchConfig(**{**TINY, "device": "cuda", "precision": "bf16", "attention_dropout": 0.0})
    records = {r["impl"]: r for r in run_training_bench(config, progress=None)}
    assert all(r["status"] == "ok" for r in records.values()), records
    assert all(r["peak_memory_bytes"] > 0 for r in records.values())


def test_cpu_peak_memory_counts_what_a_call_allocates_beyond_what_was_live():
    from minitx.bench.timing import cpu_peak_memory
    x = torch.ones(1000, 1000)  # live before: not counted

    def two_live_buffers():
        a = x * 2          # 4 MB
        b = a * 3          # 4 MB more while a is alive
        del a, b
    peak = cpu_peak_memory(two_live_buffers)
    assert 8e6 <= peak < 8.2e6
    assert cpu_peak_memory(lambda: None) == 0


def test_impl_names_choose_the_head():
    config = TrainingBenchConfig(**TINY)
    torch.manual_seed(0)
    base = BertForMaskedLM(config.model_config())
    sparse, _ = build_impl("minitx:math", base, config)
    full, _ = build_impl("minitx:math:full-head", base, config)
    assert sparse.config.sparse_prediction and not full.config.sparse_prediction
    assert base.config.sparse_prediction, "the base model's config is not changed by building a copy"
    with pytest.raises(ValueError, match="impls"):
        TrainingBenchConfig(impls=["hf:sdpa:full-head"]).validate()


def test_attention_column_says_when_sdpa_runs_math():
    """With attention dropout on a CPU minitx's sdpa backend runs math (minitx.attention.backends): the row says so."""
    for dropout, expected in ((0.1, "minitx sdpa (math: dropout on a CPU), head at every position"),
                              (0.0, "minitx sdpa, head at every position")):
        config = TrainingBenchConfig(**{**TINY, "attention_dropout": dropout})
        torch.manual_seed(0)
        model, _ = build_impl("minitx:sdpa:full-head", BertForMaskedLM(config.model_config()), config)
        assert attention_name(model) == expected
