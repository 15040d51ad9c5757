"""The one-page summary of a GPU session (benchmarks/gpu_session.py): environment, steps with exit codes, test
counts from the JUnit XML, the autotuner's picks beside the compile report, and per sweep minitx:flash against
the fastest other implementation. Every section is read from the work folder as it is; one that cannot be read
yet says so instead of failing the session."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

def summarize(work: Path, status: dict) -> str:
    lines = [f"# GPU session, mode {status['mode']}{' (DRY RUN on a CPU)' if status['dry_run'] else ''}", "",
             f"Started {status['started']}, {status['elapsed_s']} s of {status['budget_s']} s. "
             f"Everything is in the archive beside this file.", ""]
    for section in (_env_section, _steps_section, _tests_section, _autotune_section, _sweep_section):
        try:
            lines += section(work, status) + [""]
        except Exception as exc:  # noqa: BLE001 (a summary never fails the session)
            lines += [f"({section.__name__}: {type(exc).__name__}: {exc})", ""]
    return "\n".join(lines)


def _env_section(work, status):
    path = work / "environment.json"
    if not path.exists():
        return ["Environment: not recorded yet."]
    e = json.loads(path.read_text())
    return [f"Environment: {e.get('gpu', 'no GPU')} (sm {e.get('capability', '-')}), driver/nvidia-smi: "
            f"{e.get('nvidia_smi')}; torch {e.get('torch')}, CUDA {e.get('cuda')}, Triton {e.get('triton')}, "
            f"Python {e.get('python')}."]


def _steps_section(work, status):
    out = ["| step | budget s | wall s | exit code | status |", "|---|---|---|---|---|"]
    out += [f"| {r['step']} | {r['budget_s']} | {r['wall_s']} | {r['rc']} | {r['status']} |" for r in status["steps"]]
    return out


def _tests_section(work, status):
    out = []
    for path in [*sorted(work.glob("gpu_tests_*.xml")), work / "compile_check.xml"]:
        name = path.name
        if not path.exists():
            continue
        root = ET.parse(path).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        bad = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
               if c.find("failure") is not None or c.find("error") is not None]
        out.append(f"{name}: {counts['tests']} tests, {counts['failures']} failures, {counts['errors']} errors, "
                   f"{counts['skipped']} skipped." + (" Failing: " + ", ".join(bad[:12]) if bad else ""))
    return out or ["Tests: no JUnit XML yet."]


def _autotune_section(work, status):
    path = work / "autotune.jsonl"
    if not path.exists():
        return ["Autotuner: no rows yet."]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = ["| case | kernel | config (BLOCK_N x BLOCK_M, warps, stages) | regs | spills | report: regs, stack |",
           "|---|---|---|---|---|---|"]
    for r in rows[:24]:
        pred = r.get("predicted") or {}
        out.append(f"| {r.get('case')} | {r.get('kernel')} | {r.get('config')} | {r.get('registers')} | "
                   f"{r.get('spills')} | {pred.get('registers', '-')}, {pred.get('stack_bytes', '-')} |")
    return out


def _sweep_section(work, status):
    """Per sweep, one row per (D, mask, N): minitx:flash's TFLOP/s beside the fastest other implementation's."""
    out = []
    for path in sorted(work.glob("attention_*.json")):
        doc = json.loads(path.read_text())
        results = doc.get("results", [])
        ok = [r for r in results if r["status"] == "ok"]
        failed = sorted({r["impl"] for r in results if r["status"] == "failed"})
        out += [f"{path.stem}: {len(ok)} of {len(results)} timed; failed the gate: {', '.join(failed) or 'none'}"
                f"{'' if doc.get('complete', True) else ' (partial: the step was still running or was killed)'}",
                "", "| dtype | D | mask | N | minitx:flash fwd / bwd TFLOP/s | best other: fwd / bwd TFLOP/s | "
                "flash speed vs best, fwd+bwd (best ms / flash ms) |", "|---|---|---|---|---|---|---|"]
        points: dict = {}
        for r in ok:
            points.setdefault((r["dtype"], r["head_dim"], r["mask"], r["seq_len"]), {})[r["impl"]] = r
        for key in sorted(points):
            by = points[key]
            flash = by.get("minitx:flash")
            others = [r for name, r in by.items() if name != "minitx:flash"]
            best = min(others, key=lambda r: r["timings_ms"]["fwd_bwd"]["median_ms"], default=None)
            cell = lambda r: "-" if r is None else f"{r['tflops']['fwd']:.3g} / {r['tflops']['bwd']:.3g}"  # noqa: E731
            ratio = "-" if flash is None or best is None else \
                f"{best['timings_ms']['fwd_bwd']['median_ms'] / flash['timings_ms']['fwd_bwd']['median_ms']:.2f}x"
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {cell(flash)} | "
                       f"{'-' if best is None else best['impl']}: {cell(best)} | {ratio} |")
        out.append("")
    return out or ["Sweeps: none finished yet."]
