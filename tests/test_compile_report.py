"""The compile reports in CI (minitx/bench/compile_report.py, docs/math/flash_attention.md section 11).

One config per kernel is compiled for sm_90 on this CPU (a child process without TRITON_INTERPRET), so a
change that makes a default config spill, or loses the warpgroup MMA, TMA or the loop split, fails here; and
the accepted-config table of every Triton version the autotuner knows is checked against that version's
committed report.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("triton")

from minitx.bench.compile_report import CompileSpec, compile_all  # noqa: E402
from minitx.bench.compile_table import accepted_table, hopper_shaped, markdown, specs_for  # noqa: E402
from minitx.kernels import flash_configs  # noqa: E402
from minitx.kernels.flash_accepted import ACCEPTED_BY_TRITON  # noqa: E402
from minitx.kernels.flash_configs import CANDIDATES, FP32_CONFIG, accepted, configs_to_time  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def report(version: str) -> dict:
    return json.loads((RESULTS / f"compile_report_triton{version}.json").read_text())


@pytest.fixture(scope="module")
def default_compiles():
    """The first accepted config of each kernel at D = 128 on sm_90 for the running Triton, causal bf16, plus
    fwd with every feature and dK/dV with dropout (the kernel that regenerates the most masks)."""
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


def test_hopper_code_runs_every_product_on_wgmma_and_the_forward_uses_tma(default_compiles):
    """Forward and both backward kernels the Hopper way: warpgroup MMA and no Ampere mma.sync (dK/dV's
    transposed tiles, flash.23, give its products the 64-row M a warpgroup needs); K/V through tensor
    descriptors in the forward."""
    for r in default_compiles:
        assert r["wgmma"] > 0 and r["mma_sync"] == 0, (r["kernel"], r["variant"], r["wgmma"], r["mma_sync"])
        assert hopper_shaped(r)
    fwd = [r for r in default_compiles if r["kernel"] == "fwd"]
    assert all(r["tma"] > 0 for r in fwd)
    assert all(r["tma"] == 0 for r in default_compiles if r["kernel"] != "fwd")  # pointer loads there


def test_key_loop_is_split_in_the_compiled_code(default_compiles):
    """(flash.17): causal = an unmasked interior loop + a masked diagonal loop over the keys (forward, dQ); a
    two-sided window adds the masked left edge. dK/dV loops over queries, whose lower bound is the causal
    edge: masked diagonal + interior + masked end of the sequence."""
    loops = {(r["kernel"], r["variant"]): r["loops"] for r in default_compiles}
    assert loops[("fwd", "causal")] == 2 and loops[("dq", "causal")] == 2
    assert loops[("dkdv", "causal")] == 3
    assert loops[("fwd", "features")] == 3


def test_one_dkdv_kernel_body_adds_dq_atomically_only_when_asked(default_compiles):
    """(flash.24) is the dK/dV kernel with ATOMIC_DQ set: its compiled code adds dQ with global atomics, and
    the deterministic dK/dV kernel (ATOMIC_DQ off, flash.16) compiled from the same body has none."""
    spec = CompileSpec("atomic", 90, 64, "causal", "bf16", *accepted("atomic", 90, 64)[0])
    (atomic,) = compile_all([spec])
    assert "error" not in atomic and atomic["fits"] and atomic["wgmma"] > 0, atomic
    assert atomic["atomics"] > 0
    dkdv = [r for r in default_compiles if r["kernel"] == "dkdv"]
    assert dkdv and all(r["atomics"] == 0 for r in dkdv)
    assert all(r["atomics"] == 0 for r in default_compiles)


@pytest.mark.parametrize("version", sorted(ACCEPTED_BY_TRITON))
def test_accepted_table_agrees_with_the_committed_report(version):
    """Per Triton version: the table the autotuner reads is the report's verdict; every config it keeps for
    D <= 128 on sm_80/sm_90 in 16-bit dtypes compiled without a spill in every variant, and on sm_90 every
    accepted config of every kernel (backward included) runs on wgmma alone."""
    document = report(version)
    assert document["triton"].startswith(version + ".") and document["triton_key"] == version
    assert accepted_table(document["records"]) == {k: {a: {d: [tuple(c) for c in cs] for d, cs in by_d.items()}
                                                       for a, by_d in by_a.items()}
                                                   for k, by_a in ACCEPTED_BY_TRITON[version].items()
                                                   if k != "atomic"}  # its own report, tested below
    for kernel in CANDIDATES:
        for arch in (80, 90):
            for d in (64, 128):
                chosen = accepted(kernel, arch, d, version)
                assert chosen, (version, kernel, arch, d)
                compiled = [r for r in document["records"] if (r["kernel"], r["arch"], r["head_dim"]) ==
                            (kernel, arch, d) and (r["block_n"], r["block_m"], r["num_warps"], r["num_stages"])
                            in chosen and r["dtype"] != "fp32"]  # fp32 has its own config, judged apart
                assert {r["dtype"] for r in compiled} == {"bf16", "fp16"}, (version, kernel, arch, d)
                assert all(r["fits"] and r["stack_bytes"] == 0 for r in compiled)
                if arch == 90:
                    assert all(r["wgmma"] > 0 and r["mma_sync"] == 0 for r in compiled), (version, kernel, d)
    rejected = [r for r in document["records"] if not r["fits"]]
    assert rejected, "a report that rejects nothing has not looked at large tiles"
    assert "| fwd | sm_90 | 128 |" in markdown(document)


def test_the_autotuner_reads_the_table_of_its_triton_and_falls_back_to_the_common_configs():
    import triton

    own, table = flash_configs.accepted_table()
    assert own == flash_configs.triton_version_key(triton.__version__) and table is ACCEPTED_BY_TRITON[own]
    label, common = flash_configs.accepted_table("99.1.0")
    assert label.startswith("intersection")
    for kernel, by_arch in common.items():
        for arch, by_d in by_arch.items():
            for d, configs in by_d.items():
                for c in configs:  # accepted under every known version, with the largest shared memory of any
                    for ver in ACCEPTED_BY_TRITON.values():
                        match = [x for x in ver[kernel][arch][d] if x[:4] == c[:4]]
                        assert match and match[0][4] <= c[4]
    if len(ACCEPTED_BY_TRITON) > 1:  # the versions disagree somewhere (3.6 spills where 3.9 does not)
        assert any(len(common[k][a][d]) < len(ACCEPTED_BY_TRITON[v][k][a][d]) for v in ACCEPTED_BY_TRITON
                   for k in common for a in common[k] for d in common[k][a])


def test_configs_to_time_never_keeps_a_rejected_config():
    for arch, limit in ((90, 232448), (80, 166912), (80, 101376)):  # the last: an sm_86's shared memory
        kept = configs_to_time("dkdv", arch, limit, 128, fp32=False)
        assert kept and set(kept) <= set(accepted("dkdv", arch, 128))
        shared = flash_configs._shared_bytes("dkdv", arch, 128)
        assert all(shared[k] <= limit for k in kept) or len(kept) == 1
    assert configs_to_time("fwd", 90, 232448, 128, fp32=False, max_configs=2) == accepted("fwd", 90, 128)[:2]
    assert configs_to_time("dq", 90, 232448, 64, fp32=True) == [FP32_CONFIG]


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


@pytest.mark.parametrize("version", sorted(ACCEPTED_BY_TRITON))
def test_single_kernel_backward_has_its_own_verdict_per_version(version):
    """(flash.24): the optional atomic backward's accepted configs come from its own compiles under each
    Triton version. At D = 64 some compile without a spill (on sm_90 with wgmma: its dQ product may be
    mma.sync); at D = 128 every config spills in some variant, so none is accepted and the deterministic
    kernels run there instead (`single_kernel_ok`)."""
    from minitx.kernels.flash_configs import single_kernel_ok

    document = json.loads((RESULTS / f"compile_report_atomic_triton{version}.json").read_text())
    assert {r["kernel"] for r in document["records"]} == {"atomic"} and document["triton_key"] == version
    table = accepted_table(document["records"])["atomic"]
    assert {a: {d: [tuple(c) for c in cs] for d, cs in by_d.items()}
            for a, by_d in ACCEPTED_BY_TRITON[version]["atomic"].items()} == table
    for arch in (80, 90):
        for d in (64, 128):
            chosen = [c[:4] for c in table[arch][d]]
            records = [r for r in document["records"] if (r["arch"], r["head_dim"]) == (arch, d)
                       and r["dtype"] != "fp32"]
            by_cfg: dict = {}
            for r in records:
                by_cfg.setdefault((r["block_n"], r["block_m"], r["num_warps"], r["num_stages"]), []).append(r)
            for cfg, rs in by_cfg.items():  # accepted <=> spill-free in every variant (and wgmma on sm_90)
                clean = all(r["fits"] and r["stack_bytes"] == 0 and (arch == 80 or r["wgmma"] > 0) for r in rs)
                assert (cfg in chosen) == clean, (version, arch, d, cfg)
            assert single_kernel_ok(arch, d, version) == bool(chosen)
        assert table[arch][64] and not table[arch][128]


@pytest.mark.parametrize("version", sorted(ACCEPTED_BY_TRITON))
def test_readme_summary_is_generated_from_the_committed_report(version):
    from minitx.bench.compile_table import summary_markdown

    readme = (RESULTS.parent / "README.md").read_text()
    begin = f"<!-- BEGIN compile summary triton {version}"
    start = readme.index("-->\n", readme.index(begin)) + len("-->\n")
    assert readme[start:readme.index(f"<!-- END compile summary triton {version} -->")] == \
        summary_markdown(report(version))
