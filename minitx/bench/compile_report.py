"""The compile report: every flash kernel x tile config x head dim x mask variant x dtype compiled for real
GPU architectures on a machine without one, and what the compiled code says about it.

`triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, warp))`
produces PTX and a cubin for sm_80 / sm_90 / sm_100 on the CPU; the arguments are specialised exactly as
Triton's launcher would for a contiguous (B, H, N, D) problem (pointer alignment, strides divisible by 16,
ints equal to 1 as constants). From each compile:
  - registers, stack frame and local memory from `cuobjdump --dump-resource-usage` on the cubin; a non-zero
    stack frame is a spill (the flash kernels use no local arrays, so nothing else lives on the stack);
  - shared memory from the compiled metadata (dynamic shared memory, which cuobjdump does not count), against
    the architecture's per-block limit;
  - the tensor-core instructions in the PTX: `mma.sync` (Ampere), `wgmma.mma_async` (Hopper), `tcgen05.mma`
    (Blackwell); TMA: `cp.async.bulk.tensor`; 16-byte vector loads (`ld.global.v4`, `cp.async ... 16`);
    global atomics (`atom.global`, `red.global`: only the single-kernel backward's dQ, flash.24);
  - the structure: the number of loops (`scf.for`) in the Triton GPU IR, i.e. how the key loop was split.

Triton's interpreter (TRITON_INTERPRET=1, set by the test suite) replaces `@triton.jit` functions, so the
compiles always run in a child process with it unset (`python -m minitx.bench.compile_report`).
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

ARCHS = (80, 90, 100)
KERNELS = ("fwd", "dkdv", "dq")
OPTIONAL_KERNELS = ("atomic",)  # the single-kernel backward (flash.24): compiled on request, with dkdv's tiles
VARIANTS = {  # name -> the mask structure compiled; "features" is everything a decoder with a cache may use
    "full": {},
    "causal": dict(HAS_RIGHT=True),
    "padding": dict(HAS_MASK=True),
    "features": dict(HAS_LEFT=True, HAS_RIGHT=True, BOTTOM_RIGHT=True, HAS_ALIBI=True, GROUP=4),
    "varlen": dict(HAS_RIGHT=True, VARLEN=True),
    "dropout": dict(HAS_RIGHT=True, HAS_DROPOUT=True),
}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
SHARED_LIMIT = {80: 166912, 90: 232448, 100: 232448}  # opt-in shared memory per block, bytes


@dataclass(frozen=True)
class CompileSpec:
    kernel: str
    arch: int
    head_dim: int
    variant: str
    dtype: str
    block_n: int
    block_m: int
    num_warps: int
    num_stages: int


def _fake_args(spec: CompileSpec) -> dict:
    """Argument values by name, as the launcher would pass them for B = 2, H = 16, N = M = 4096 contiguous
    (the values only matter through Triton's specialisation: dtypes, alignment, divisibility by 16, == 1)."""
    import torch

    from minitx.kernels.flash_autograd import block_d

    v = {"GROUP": 1, **VARIANTS[spec.variant]}
    dt = getattr(torch, DTYPES[spec.dtype])
    t = torch.empty(16, dtype=dt)
    f32, i8, i32 = torch.empty(16), torch.empty(16, dtype=torch.int8), torch.empty(16, dtype=torch.int32)
    h, n, d = 16, 4096, spec.head_dim
    group = v["GROUP"]
    q_str, kv_str, l_str = (h * n * d, n * d, d), (h // group * n * d, n * d, d), (h * n, n)
    if v.get("VARLEN"):
        q_str, kv_str, l_str = (0, q_str[1], d), (0, kv_str[1], d), (0, n)
    args = dict(Q=t, K=t, V=t, O=t, DO=t, DK=t, DV=t, DQ=t, DQ_ACC=f32, LSE=f32, DELTA=f32, MASK=i8, SLOPES=f32,
                CU_Q=i32, CU_K=i32, H=h, H_KV=h // group, GROUP=group, N=n, M=n, qk_scale=0.18, scale=0.125,
                win_left=256, win_right=0, seed=1234, p_drop=0.1)
    for names, strides in (("sqb sqh sqn", q_str), ("skb skh skm", kv_str), ("svb svh svm", kv_str),
                           ("sob soh son", q_str), ("sdb sdh sdn", q_str),
                           ("sgb sgh sgm", q_str if spec.kernel == "dq" else kv_str), ("sgqb sgqh sgqn", q_str)):
        args.update(zip(names.split(), strides))
    args.update(slb=l_str[0], slh=l_str[1])
    flags = dict(HAS_MASK=False, HAS_LEFT=False, HAS_RIGHT=False, BOTTOM_RIGHT=False, HAS_ALIBI=False,
                 VARLEN=False, HAS_DROPOUT=False, USE_TMA=spec.kernel == "fwd" and spec.arch >= 90,
                 DOT_PRECISION="ieee" if spec.dtype == "fp32" else "tf32", HEAD_DIM=d, BLOCK_D=block_d(d),
                 BLOCK_N=spec.block_n, BLOCK_M=spec.block_m)
    flags.update({k: val for k, val in v.items() if k in flags})
    return args, flags


def _require_triton() -> None:
    """Without Triton, minitx.kernels' ImportError, which names the extra that installs it."""
    import minitx.kernels  # noqa: F401


def _source(spec: CompileSpec):
    """The ASTSource Triton's launcher would build for `spec`."""
    _require_triton()
    import triton
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    from minitx.kernels.flash_autograd import _KERNELS

    fn = _KERNELS[spec.kernel]
    args, flags = _fake_args(spec)
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in flags:
            signature[name], constexprs[name] = "constexpr", flags[name]
            continue
        kind, attr = native_specialize_impl(CUDABackend, args[name], False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = attr
        elif attr:
            attrs[(i,)] = CUDABackend.parse_attr(attr)
    return triton.compiler.ASTSource(fn, signature, constexprs, attrs)


def _bin(tool: str) -> str:
    _require_triton()
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool)


def compile_one(spec: CompileSpec) -> dict:
    """Compile `spec` and read its resources and instructions (see the module docstring)."""
    _require_triton()
    import triton
    from triton.backends.compiler import GPUTarget

    record = asdict(spec)
    try:
        compiled = triton.compile(_source(spec), target=GPUTarget("cuda", spec.arch, 32),
                                  options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages))
    except Exception as exc:  # e.g. out of shared memory at compile time: a rejected config, recorded
        lines = [line for line in str(exc).splitlines() if line.strip()] or [""]
        return {**record, "error": f"{type(exc).__name__}: {lines[-1][:300]}", "fits": False}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout
    res = {key.lower(): int(val) for key, val in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", usage)}
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    record.update(
        registers=res["reg"], stack_bytes=res["stack"], local_bytes=res["local"],
        shared_bytes=compiled.metadata.shared,
        shared_limit=SHARED_LIMIT[spec.arch],
        mma_sync=len(re.findall(r"\bmma\.sync", ptx)), wgmma=len(re.findall(r"\bwgmma\.mma_async", ptx)),
        tcgen05=len(re.findall(r"\btcgen05\.mma", ptx)), tma=len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
        vector_loads=len(re.findall(r"ld\.global(?:\.\w+)*\.v4|cp\.async\.c[ag]\.shared\.global[^;]*, 16", ptx)),
        atomics=len(re.findall(r"\b(?:atom|red)\.global", ptx)),  # the single-kernel backward's dQ adds (flash.24)
        loops=ttgir.count("scf.for"))
    record["fits"] = (record["stack_bytes"] == 0 and record["local_bytes"] == 0
                      and record["shared_bytes"] <= record["shared_limit"])
    return record


def compile_all(specs: list[CompileSpec], workers: int = 1, progress=None) -> list[dict]:
    """Compile `specs` in `workers` child processes without TRITON_INTERPRET; records in `specs` order."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, set to silence its warning
    shards = [specs[i::workers] for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-m", "minitx.bench.compile_report"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
             for shard in shards if shard]
    for proc, shard in zip(procs, shards):
        proc.stdin.write(json.dumps([asdict(s) for s in shard]))
        proc.stdin.close()
    lines: queue.Queue = queue.Queue()

    def pump(proc):  # one reader per worker, so no worker blocks on a full pipe while another is read
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)
    for proc in procs:
        threading.Thread(target=pump, args=(proc,), daemon=True).start()
    by_spec, finished = {}, 0
    while finished < len(procs):
        line = lines.get()
        if line is None:
            finished += 1
            continue
        record = json.loads(line)
        by_spec[CompileSpec(**{k: record[k] for k in CompileSpec.__dataclass_fields__})] = record
        if progress:
            progress(record)
    for proc in procs:
        if proc.wait():
            raise RuntimeError(f"compile worker exited with status {proc.returncode}")
    return [by_spec[s] for s in specs]


def _worker() -> None:
    for raw in json.loads(sys.stdin.read()):
        print(json.dumps(compile_one(CompileSpec(**raw))), flush=True)


if __name__ == "__main__":
    _worker()
