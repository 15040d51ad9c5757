"""The compile report in CI (minitx/bench/compile_report.py, docs/math/flash_attention.md section 11).

One config per kernel is compiled for sm_90 on this CPU (a child process without TRITON_INTERPRET), so a
change that makes a default config spill, or loses the tensor cores, TMA or the loop split, fails here; and
the accepted-config table the autotuner prunes to is checked against the committed full report.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("triton")

from minitx.bench.compile_report import CompileSpec, compile_all  # noqa: E402
from minitx.bench.compile_table import accepted_table, markdown, specs_for  # noqa: E402
from minitx.kernels import flash_configs  # noqa: E402
from minitx.kernels.flash_configs import CANDIDATES, FP32_CONFIG, accepted  # noqa: E402

REPORT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "compile_report.json"


@pytest.fixture(scope="module")
def default_compiles():
    """The first accepted config of each kernel at D = 128 on sm_90, causal bf16, plus fwd with every feature
    and dK/dV with dropout (the kernel that regenerates the most masks)."""
    specs = [CompileSpec(kernel, 90, 128, "causal", "bf16", *accepted(kernel, 90, 128)[0])
             for kernel in ("fwd", "dkdv", "dq")]
    specs.append(CompileSpec("fwd", 90, 128, "features", "bf16", *accepted("fwd", 90, 128)[0]))
    specs.append(CompileSpec("dkdv", 90, 128, "dropout", "bf16", *accepted("dkdv", 90, 128)[0]))  # (flash.21)
    return compile_all(specs, workers=2)


def test_default_configs_do_not_spill_on_sm90(default_compiles):
    for r in default_compiles:
        assert "error" not in r, r.get("error")
        assert r["stack_bytes"] == 0 and r["local_bytes"] == 0, r
        assert r["registers"] <= 255 and r["shared_bytes"] <= r["shared_limit"], r
        assert r["fits"]


def test_hopper_code_uses_tensor_cores_and_the_forward_uses_tma(default_compiles):
    """Every product on tensor cores; the forward's the Hopper way (wgmma: its query tile has the 64 rows a
    warpgroup MMA needs; a 16- or 32-row tile falls back to Ampere's mma.sync), K/V through tensor descriptors."""
    for r in default_compiles:
        assert r["wgmma"] + r["mma_sync"] > 0, r["kernel"]
    fwd = [r for r in default_compiles if r["kernel"] == "fwd"]
    assert all(r["tma"] > 0 and r["wgmma"] > 0 for r in fwd)
    assert all(r["tma"] == 0 for r in default_compiles if r["kernel"] != "fwd")  # pointer loads there


def test_key_loop_is_split_in_the_compiled_code(default_compiles):
    """(flash.17): causal = an unmasked interior loop + a masked diagonal loop over the keys (forward, dQ); a
    two-sided window adds the masked left edge. dK/dV loops over queries, whose lower bound is the causal
    edge: masked diagonal + interior + masked end of the sequence."""
    loops = {(r["kernel"], r["variant"]): r["loops"] for r in default_compiles}
    assert loops[("fwd", "causal")] == 2 and loops[("dq", "causal")] == 2
    assert loops[("dkdv", "causal")] == 3
    assert loops[("fwd", "features")] == 3


def test_accepted_table_agrees_with_the_committed_report():
    """Every config the pruner may keep fits in every compiled variant; D <= 128 on sm_80/90 always has one."""
    document = json.loads(REPORT.read_text())
    table = accepted_table(document["records"])
    for kernel in CANDIDATES:
        for arch in (80, 90):
            for d in (64, 128):
                chosen = accepted(kernel, arch, d)
                assert chosen, (kernel, arch, d)
                assert [tuple(c[:4]) for c in table[kernel][arch][d]] == chosen
                compiled = [r for r in document["records"] if (r["kernel"], r["arch"], r["head_dim"]) ==
                            (kernel, arch, d) and (r["block_n"], r["block_m"], r["num_warps"], r["num_stages"])
                            in chosen and r["dtype"] != "fp32"]  # fp32 has its own config, judged apart
                assert compiled and all(r["fits"] and r["stack_bytes"] == 0 for r in compiled)
    rejected = [r for r in document["records"] if not r["fits"]]
    assert rejected, "a report that rejects nothing has not looked at large tiles"
    assert "| fwd | sm_90 | 128 |" in markdown(document)


def test_pruner_never_keeps_a_rejected_config(monkeypatch):
    import triton

    configs = [triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=s)
               for bn, bm, w, s in dict.fromkeys(CANDIDATES["dkdv"] + [FP32_CONFIG])]  # as flash_configs.autotuned

    class Q:
        dtype = "torch.bfloat16"
    for arch, limit in ((90, 232448), (80, 166912), (80, 101376)):  # the last: an sm_86's shared memory
        monkeypatch.setattr(flash_configs, "_device_limits", lambda: (arch, limit))
        kept = flash_configs.make_pruner("dkdv")(configs, {"Q": Q()}, BLOCK_D=128)
        keys = [flash_configs._key(c) for c in kept]
        assert keys and set(keys) <= set(accepted("dkdv", arch, 128))
        shared = flash_configs._shared_bytes("dkdv", arch, 128)
        assert all(shared[k] <= limit for k in keys) or len(keys) == 1

    class Q32:
        dtype = "torch.float32"
    kept = flash_configs.make_pruner("dq")(configs, {"Q": Q32()}, BLOCK_D=64)
    assert [flash_configs._key(c) for c in kept] == [FP32_CONFIG]


def test_grid_covers_every_kernel_config_head_dim_and_arch():
    specs = specs_for(["fwd", "dkdv", "dq"], [80, 90, 100], [64, 128, 256])
    want = {(k, a, d) for k in CANDIDATES for a in (80, 90) for d in (64, 128, 256)}
    assert {(s.kernel, s.arch, s.head_dim) for s in specs} == want | {(k, 100, 128) for k in CANDIDATES}
    assert {(s.block_n, s.block_m, s.num_warps, s.num_stages) for s in specs if s.kernel == "dq"} == set(CANDIDATES["dq"]) | {FP32_CONFIG}
    assert specs[0].arch in (80, 90) and specs[0].head_dim <= 128  # the no-spill rule's cases come first


def test_cli_has_the_compile_subcommand(capsys):
    from minitx.bench import bench_main

    with pytest.raises(SystemExit) as exit_info:
        bench_main(["compile", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--write-accepted" in text and "--archs" in text and "cuobjdump" in text
