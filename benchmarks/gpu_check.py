"""On a GPU: what the autotuner picked for each flash kernel, with the registers and spills of the code that
ran, next to the compile report's prediction for that config (`python benchmarks/gpu_check.py [out.json]`).

Runs forward + backward in bf16 at D = 64 and 128, causal and not, N = 4096, and with every feature
(sliding window, bottom-right causal, ALiBi, GQA) at D = 128.
"""

import json
import sys
from pathlib import Path

import torch

from minitx.kernels import flash_autograd
from minitx.kernels.flash_attention import flash_attention
from minitx.kernels.flash_configs import arch_of

REPORT = Path(__file__).resolve().parent / "results" / "compile_report.json"


def main(argv: list[str]) -> int:
    arch = arch_of(torch.cuda.get_device_capability())
    report = json.loads(REPORT.read_text())["records"] if REPORT.exists() else []
    rows = []
    for d, causal, features in ((64, False, False), (64, True, False), (128, False, False), (128, True, False),
                                (128, True, True)):
        h_kv = 4 if features else 16
        q = torch.randn(2, 16, 4096, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(2, h_kv, 4096, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                for _ in range(2))
        extra = dict(window=(256, 0), causal_align="bottom_right",
                     alibi_slopes=torch.linspace(0.5, 0.01, 16, device="cuda")) if features else {}
        flash_attention(q, k, v, causal=causal, **extra).sum().backward()
        torch.cuda.synchronize()
        for name, (config, regs, spills) in flash_autograd.LAST_LAUNCH.items():
            predicted = [r for r in report if r["kernel"] == name and r["arch"] == arch and r["head_dim"] == d
                         and f"BLOCK_N: {r['block_n']}, BLOCK_M: {r['block_m']}," in config
                         and f"num_warps: {r['num_warps']}," in config and f"num_stages: {r['num_stages']}" in config]
            rows.append(dict(kernel=name, head_dim=d, causal=causal, features=features, config=config,
                             registers=regs, spills=spills,
                             predicted=[{k_: r.get(k_) for k_ in ("variant", "registers", "stack_bytes", "fits")}
                                        for r in predicted]))
            print(json.dumps(rows[-1]), flush=True)
    if argv:
        Path(argv[0]).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
