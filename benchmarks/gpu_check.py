"""What the autotuner picked for each flash kernel, with the registers and spills of the code that ran, next
to the compile report's prediction for that config under the same Triton version:
`python benchmarks/gpu_check.py OUT.jsonl [--dry-run]`.

Runs forward + backward in bf16 at D = 64 and 128, causal and not, N = 4096, and with every feature (sliding
window, bottom-right causal, ALiBi, GQA) at D = 128; one JSON line per kernel launch is appended to OUT.jsonl
the moment it exists. `--dry-run`: tiny fp16 problems on the CPU under TRITON_INTERPRET=1 (fixed tiles there,
so the rows say so), to keep this script honest without a GPU.
"""

import json
import sys
from pathlib import Path

import torch

from minitx.kernels import flash_autograd
from minitx.kernels.flash_attention import flash_attention
from minitx.kernels.flash_configs import arch_of, triton_version_key

RESULTS = Path(__file__).resolve().parent / "results"
# (D, causal, every feature, deterministic): the last runs the single-kernel backward (flash.24) where accepted
CASES = ((64, False, False, True), (64, True, False, True), (128, False, False, True), (128, True, False, True),
         (128, True, True, True), (64, True, False, False))


def predictions(arch: int) -> list[dict]:
    path = RESULTS / f"compile_report_triton{triton_version_key()}.json"
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text())["records"] if r["arch"] == arch]


def predicted(report: list[dict], kernel: str, d: int, config) -> dict:
    """The report's worst registers and stack over the variants it compiled for this config."""
    hits = [r for r in report if r["kernel"] == kernel and r["head_dim"] == d and "error" not in r
            and [r["block_n"], r["block_m"], r["num_warps"], r["num_stages"]] == list(config)]
    if not hits:
        return {}
    return dict(registers=max(r["registers"] for r in hits), stack_bytes=max(r["stack_bytes"] for r in hits),
                wgmma=min(r["wgmma"] for r in hits), fits=all(r["fits"] for r in hits))


def main(argv: list[str]) -> int:
    dry = "--dry-run" in argv
    out = Path([a for a in argv if not a.startswith("--")][0]) if any(not a.startswith("--") for a in argv) else None
    device, dtype, n = ("cpu", torch.float16, 40) if dry else ("cuda", torch.bfloat16, 4096)
    arch = 90 if dry else arch_of(torch.cuda.get_device_capability())
    report = predictions(arch)
    for d, causal, features, deterministic in CASES:
        flash_autograd.LAST_LAUNCH.clear()
        d_run = d // 4 if dry else d
        h, h_kv = (4, 2) if dry else (16, 4 if features else 16)
        q = torch.randn(1 if dry else 2, h, n, d_run, device=device, dtype=dtype, requires_grad=True)
        k, v = (torch.randn(q.shape[0], h_kv if features else h, n, d_run, device=device, dtype=dtype,
                            requires_grad=True) for _ in range(2))
        extra = dict(window=(256 if not dry else 8, 0), causal_align="bottom_right",
                     alibi_slopes=torch.linspace(0.5, 0.01, h, device=device)) if features else {}
        flash_attention(q, k, v, causal=causal, deterministic=deterministic, **extra).sum().backward()
        if not dry:
            torch.cuda.synchronize()
        case = (f"D={d} {'causal' if causal else 'full'}{' +window,bottom-right,ALiBi,GQA' if features else ''}"
                f"{'' if deterministic else ' single-kernel backward'}")
        launches = flash_autograd.LAST_LAUNCH.items() if not dry else [
            (k_, dict(config=[*flash_autograd.INTERPRETER_BLOCKS.values(), None, None], registers=None, spills=None,
                      note="interpreter: fixed tiles, nothing tuned"))
            for k_ in (("fwd", "dkdv", "dq") if deterministic else ("fwd", "atomic"))]
        for kernel, launch in launches:
            row = dict(case=case, kernel=kernel, config=launch.get("config"), registers=launch.get("registers"),
                       spills=launch.get("spills"), tried=launch.get("tried"), triton=launch.get("triton"),
                       table=launch.get("table"), note=launch.get("note"),
                       predicted=predicted(report, kernel, d, launch.get("config")))
            print(json.dumps(row), flush=True)
            if out:
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
