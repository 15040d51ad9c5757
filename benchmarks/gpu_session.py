"""One GPU session that cannot fail to deliver: `bash benchmarks/gpu_session.sh [--mode first|second] [--dry-run]`.

A lent GPU comes for one command of at most 600 s, cold (Triton compiles everything), and only 8 files come
back from $OUT. So the session is a list of steps in priority order, each a child process in its own process
group with a declared time budget (`STEPS`; the budgets plus `PACK_RESERVE_S` add up to at most `BUDGET_S`,
which tests/test_gpu_session.py checks), whose log and results go to a work folder; after every step, and
every `REFRESH_S` seconds while one runs, the whole work folder is packed into ONE archive in $OUT and a
one-page summary is rewritten next to it, each by write-then-rename, so a SIGKILL at any moment still leaves
the latest complete pair. A step that overruns is killed (SIGTERM, then SIGKILL) and the session goes on;
every exit code is kept (status.json, the summary).

Mode "first" (the first call): the environment; the `gpu`-marked tests (each with a per-test timeout, JUnit
XML and the full log); what the autotuner picked with registers and spills, row by row, next to the compile
report's prediction; the bf16 attention sweep (fwd, bwd, fwd+bwd; causal and not; N 1k..16k) against SDPA's
flash, cuDNN and efficient kernels, one head dim at a time (D 128 first: the floors are there), then
FlexAttention, then the compile-report check under the image's Triton. Mode "second": the training comparison,
the papers' full sweep, and one packed variable-length point (`--varlen`) in the last 20 s.

`--dry-run` runs every step on a CPU at tiny sizes (the Triton kernels under TRITON_INTERPRET=1) end to end;
the test suite runs it, so this script cannot rot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpu_summary import summarize

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 540          # the whole call, cold start of the Python side included
PACK_RESERVE_S = 20     # kept back from the steps for the last pack and summary
REFRESH_S = 20          # re-pack this often while a step runs
KILL_GRACE_S = 5
GPU_TEST_FILES = ["tests/test_flash_gpu.py", "tests/test_flash_attention.py", "tests/test_bench.py"]
SWEEP_IMPLS = ["minitx:flash", "sdpa:flash", "sdpa:cudnn", "sdpa:efficient"]
SEQ_LENS = ["1024", "2048", "4096", "8192", "16384"]


@dataclass
class Step:
    name: str
    budget_s: int
    what: str
    argv: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)


# mode -> steps in priority order, with their time budgets in seconds (the declared table the test reads)
BUDGETS = {
    # gpu_tests: ~34 tests, each new dtype/flags/head-dim combination a cold compile of three kernels
    "first": {"environment": 20, "gpu_tests": 170, "autotune": 70, "sweep_d128": 100, "sweep_d64": 70,
              "flex": 40, "compile_check": 30},
    # varlen: the last 20 s; one point (bf16, D 128, causal, N 4096), no tuning (the first accepted config)
    "second": {"environment": 20, "training": 200, "full_sweep": 280, "varlen": 20},
}


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _sweep_argv(work: Path, stem: str, dry: bool, head_dims: list[str], impls: list[str],
                full: bool = False, varlen: bool = False) -> list[str]:
    outs = ["--out", str(work / f"{stem}.json"), "--table", str(work / f"{stem}.md"),
            "--plot", str(work / f"{stem}.png")]
    if dry:
        impls = ["flex", "sdpa:math"] if "flex" in impls else impls  # flex is skipped on a CPU, with its reason
        impls = ["minitx:flash", "sdpa:math"] if varlen else impls  # SDPA's fused kernels are CUDA-only
        return _py("benchmarks/attention.py", "--device", "cpu", "--dtypes", "fp32", "--head-dims", "16",
                   "--seq-lens", "40", "--tokens", "40" if not varlen else "80", "--model-dim", "32", "--repeats",
                   "1", "--warmup", "0", "--threads", "1", "--impls", *impls, *(["--varlen"] if varlen else []),
                   *outs)
    if varlen:  # packed sequences of lengths 1..4096 vs SDPA on the padded batch (its flash kernel takes no mask)
        return _py("benchmarks/attention.py", "--varlen", "--dtypes", "bf16", "--head-dims", *head_dims, "--causal",
                   "--seq-lens", "4096", "--repeats", "10", "--warmup", "3", "--impls", *impls, *outs)
    if full:  # the FlashAttention papers' sweep: the GPU defaults of `minitx bench attention`
        return _py("benchmarks/attention.py", "--impls", *impls, *outs)
    return _py("benchmarks/attention.py", "--dtypes", "bf16", "--head-dims", *head_dims, "--seq-lens", *SEQ_LENS,
               "--repeats", "10", "--warmup", "3", "--impls", *impls, *outs)


def plan(mode: str, work: Path, dry: bool) -> list[Step]:
    """The steps of `mode` with their commands (tiny CPU ones under --dry-run)."""
    tune = {"MINITX_FLASH_TUNE_CACHE": str(work / "tune_cache.json"),
            "MINITX_FLASH_TUNE_LOG": str(work / "autotune_picks.jsonl"), "MINITX_FLASH_MAX_CONFIGS": "2"}
    timeout = "20" if dry else "45"
    steps = {
        "environment": Step("environment", 0, "GPU, driver, torch, Triton, CUDA versions",
                            _py("benchmarks/gpu_session.py", "--environment", str(work / "environment.json"))),
        # correctness, not speed: one accepted config per kernel, no tuning (MINITX_FLASH_MAX_CONFIGS=1)
        # one pytest per file, side by side: the cold compiles are CPU-bound and the host has cores to spare
        "gpu_tests": Step("gpu_tests", 0, "the gpu-marked tests, per-test timeout, JUnit XML",
                          _py("benchmarks/gpu_session.py", "--gpu-tests", str(work), timeout, *GPU_TEST_FILES),
                          {"MINITX_FLASH_MAX_CONFIGS": "1"}),
        "autotune": Step("autotune", 0, "the autotuner's picks with registers/spills vs the compile report",
                         _py("benchmarks/gpu_check.py", str(work / "autotune.jsonl"), *(["--dry-run"] if dry else [])),
                         tune),
        "sweep_d128": Step("sweep_d128", 0, "bf16 sweep at D = 128 vs SDPA's kernels",
                           _sweep_argv(work, "attention_d128", dry, ["128"], SWEEP_IMPLS), tune),
        "sweep_d64": Step("sweep_d64", 0, "bf16 sweep at D = 64 vs SDPA's kernels",
                          _sweep_argv(work, "attention_d64", dry, ["64"], SWEEP_IMPLS), tune),
        "flex": Step("flex", 0, "FlexAttention beside minitx:flash, D 128 then 64",
                     _sweep_argv(work, "attention_flex", dry, ["128", "64"], ["flex", "minitx:flash"]), tune),
        "compile_check": Step("compile_check", 0, "the compile-report CI test under this image's Triton",
                              _py("-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/test_compile_report.py",
                                  f"--junitxml={work / 'compile_check.xml'}",
                                  # a dry run checks the tables, not the compiler (the suite compiles elsewhere)
                                  *(["-k", "accepted or pruner"] if dry else []))),
        "training": Step("training", 0, "MLM training step, minitx (math, sdpa, flash) vs Hugging Face",
                         _py("benchmarks/training.py", "--out", str(work / "training.json"), "--table",
                             str(work / "training.md"), "--plot", str(work / "training.png"),
                             *(["--device", "cpu", "--d-model", "32", "--heads", "2", "--layers", "1", "--seq-len",
                                "16", "--batch-size", "2", "--vocab-size", "64", "--repeats", "1", "--warmup", "1",
                                "--impls", "minitx:math", "minitx:flash", "hf:sdpa"] if dry else [])),
                         {"MINITX_BENCH_INTERPRETER": "1"} if dry else tune),
        "full_sweep": Step("full_sweep", 0, "the FlashAttention papers' sweep (bf16 and fp16, N 512..16k)",
                           _sweep_argv(work, "attention_full", dry, [], [*SWEEP_IMPLS, "sdpa:math", "flex"],
                                       full=True), tune),
        "varlen": Step("varlen", 0, "packed variable-length sequences (cu_seqlens) vs SDPA on the padded batch",
                       _sweep_argv(work, "attention_varlen", dry, ["128"], SWEEP_IMPLS, varlen=True),
                       {**tune, "MINITX_FLASH_MAX_CONFIGS": "1"}),
    }
    chosen = []
    for name, budget in BUDGETS[mode].items():
        step = steps[name]
        step.budget_s = budget
        if dry:
            step.env = {**step.env, "TRITON_INTERPRET": "1", "MINITX_BENCH_INTERPRETER": "1"}
        chosen.append(step)
    return chosen


def gpu_tests(work: Path, timeout: str, files: list[str]) -> int:
    """The `gpu`-marked tests of each file in its own pytest process, all at once (the step's process group:
    its timeout stops them all); per file a full log and a JUnit XML, gpu_tests_<file>.{log,xml}. The exit
    status is the worst of them."""
    procs = []
    for file in files:
        stem = Path(file).stem
        log = open(work / f"gpu_tests_{stem}.log", "w")
        procs.append((log, subprocess.Popen(
            [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-p", "gpu_test_timeout",
             "--test-timeout", timeout, "-rA", "-v", f"--junitxml={work / f'gpu_tests_{stem}.xml'}", file],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)))
    codes = []
    for log, proc in procs:
        codes.append(proc.wait())
        log.close()
    print(f"gpu tests: exit codes {dict(zip(files, codes))}")
    # pytest: 0 all passed, 5 nothing collected (e.g. every test deselected); anything else is worse
    return max((0 if c in (0, 5) else c) for c in codes)


def environment(path: Path) -> int:
    """Write what the numbers were measured on; never fails for want of a GPU or of nvidia-smi."""
    import platform

    import torch

    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available(), hostname=platform.node())
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable: {type(exc).__name__}"
    path.write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 0


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Session:
    def __init__(self, mode: str, work: Path, out: Path, dry: bool, budget_s: float):
        self.mode, self.work, self.out, self.dry = mode, work, out, dry
        self.start = time.monotonic()
        self.deadline = self.start + budget_s - PACK_RESERVE_S
        self.budget_s = budget_s
        self.rows: list[dict] = []
        self.started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        work.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def run(self, step: Step) -> dict:
        limit = min(step.budget_s, self.deadline - time.monotonic())
        row = dict(step=step.name, what=step.what, budget_s=step.budget_s, limit_s=round(limit, 1), rc=None,
                   timed_out=False, wall_s=0.0, log=f"{step.name}.log", command=" ".join(step.argv))
        self.rows.append(row)
        if limit < min(5, step.budget_s):  # too little left to start it usefully
            row["status"] = "not run: out of time"
            return row
        env = {**os.environ, **step.env, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
        if not self.dry:
            env.pop("TRITON_INTERPRET", None)  # a GPU session compiles for real
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        begin = time.monotonic()
        row["status"] = "running"
        with open(self.work / row["log"], "w") as log:
            log.write(f"$ {row['command']}\n")
            log.flush()
            proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            while True:
                try:
                    row["rc"] = proc.wait(timeout=min(REFRESH_S, max(0.1, begin + limit - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= begin + limit:
                        row["timed_out"] = True
                        row["rc"] = _kill(proc)
                        break
                    row["wall_s"] = round(time.monotonic() - begin, 1)
                    self.pack()
        row["wall_s"] = round(time.monotonic() - begin, 1)
        row["status"] = "timed out (killed)" if row["timed_out"] else ("ok" if row["rc"] == 0 else "failed")
        self.pack()
        return row

    def pack(self) -> None:
        """The work folder as one archive plus the summary, both replaced atomically in $OUT. A pack that
        fails (a step deleting a file while it is read) is reported and retried at the next refresh: it never
        stops the session, and the previous archive stays in place."""
        try:
            self._pack()
        except (OSError, tarfile.TarError) as exc:
            print(f"gpu session: packing failed, kept the previous archive: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)

    def _pack(self) -> None:
        status = dict(mode=self.mode, dry_run=self.dry, started=self.started, elapsed_s=round(self.elapsed(), 1),
                      budget_s=self.budget_s, steps=self.rows)
        (self.work / "status.json").write_text(json.dumps(status, indent=1))
        summary = summarize(self.work, status)
        (self.work / "summary.md").write_text(summary)
        archive = self.out / f"gpu_session_{self.mode}.tar.gz"
        tmp = archive.with_name(archive.name + ".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.work, arcname=f"gpu_session_{self.mode}")
        os.replace(tmp, archive)
        _write_atomic(self.out / f"summary_{self.mode}.md", summary.encode())


def _kill(proc: subprocess.Popen) -> int:
    """SIGTERM to the step's process group, SIGKILL after a grace period; its exit status."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_session.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=sorted(BUDGETS), default="first")
    p.add_argument("--dry-run", action="store_true", help="every step on a CPU at tiny sizes (interpreter)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "benchmarks/results/gpu_session"),
                   help="where the archive and summary go (default: $OUT)")
    p.add_argument("--work", type=Path, help="work folder (default: a fresh one under /tmp)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole call")
    p.add_argument("--environment", type=Path, help=argparse.SUPPRESS)  # the environment step itself
    p.add_argument("--gpu-tests", nargs="+", help=argparse.SUPPRESS)      # the gpu_tests step: WORK TIMEOUT FILES
    args = p.parse_args(argv)
    if args.environment:
        return environment(args.environment)
    if args.gpu_tests:
        return gpu_tests(Path(args.gpu_tests[0]), args.gpu_tests[1], args.gpu_tests[2:])
    work = args.work or Path(f"/tmp/minitx_gpu_session_{args.mode}_{os.getpid()}")
    session = Session(args.mode, work, args.out, args.dry_run, args.budget)
    for step in plan(args.mode, work, args.dry_run):
        row = session.run(step)
        print(f"gpu session: {row['step']}: {row['status']} (rc {row['rc']}, {row['wall_s']} s of {row['budget_s']})",
              flush=True)
    session.pack()
    print(f"gpu session: done in {session.elapsed():.0f} s; {args.out}/gpu_session_{args.mode}.tar.gz and "
          f"summary_{args.mode}.md", flush=True)
    return 0 if all(r["rc"] == 0 for r in session.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
