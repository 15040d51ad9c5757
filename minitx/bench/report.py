"""Benchmark results as data: the environment they were measured in, JSON, a markdown table and plots.

The JSON file is the source of truth; the table and figures are derived from it, so a README table can always
be regenerated from the numbers and never drifts from them.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

SCHEMA = "minitx.bench.attention/1"
_SOURCE = Path(__file__).resolve().parent  # the commit of the code that ran, wherever it was run from
_PASS_LABEL = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}


def _run(cmd: list[str], cwd: str | os.PathLike | None = None) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True,
                              cwd=cwd).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str) -> dict:
    """Everything a reader needs to reproduce or discount a number: versions, hardware, git commit."""
    device = torch.device(device)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = dict(python=platform.python_version(), torch=torch.__version__, triton=triton_version,
               platform=platform.platform(), cpu=_cpu_model(), cpu_count=os.cpu_count(),
               torch_threads=torch.get_num_threads(), device=device.type,
               # other processes on the machine skew timings: the 1-minute load average is the hint to look
               load_average_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else None, device_name=_cpu_model(),
               cuda=torch.version.cuda, cudnn=None, driver=None, compute_capability=None,
               git_commit=_run(["git", "rev-parse", "HEAD"], cwd=_SOURCE),
               git_dirty=bool(_run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_SOURCE)))
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device), cudnn=torch.backends.cudnn.version(),
                   compute_capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                   driver=_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
    return env


def results_document(records: list[dict], config: dict, device: torch.device | str,
                     env: dict | None = None) -> dict:
    """The JSON document; pass `env` captured *before* the sweep to record the load the timings ran under
    (the 1-minute load average at the end is added as `load_average_1min_end`)."""
    env = dict(env or environment(device))
    env["torch_threads"] = config.get("threads") or env["torch_threads"]  # the sweep's own setting, if any
    env["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return dict(schema=SCHEMA, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                environment=env, config=config, results=records)


def write_json(document: dict, path: str | os.PathLike) -> Path:
    """Write strictly valid JSON (allow_nan=False: a NaN or inf in the results is a bug, not a number)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def load(document: dict | str | os.PathLike) -> dict:
    """A results document given as a dict, or a path to its JSON file."""
    if isinstance(document, dict):
        return document
    return json.loads(Path(document).read_text(encoding="utf-8"))


def _kv(r: dict) -> str:
    """"/H_kv" after the head count of a grouped-query record."""
    return f"/{r['heads_kv']}" if r.get("heads_kv", r["heads"]) != r["heads"] else ""


def _ms(stats: dict) -> str:
    return f"{stats['median_ms']:.3f} ± {stats['iqr_ms'] / 2:.3f}"


def _clock(doc: dict) -> str:
    if doc["environment"]["device"] == "cuda":
        return "CUDA-event timing"
    return {"wall": "wall-clock timing", "thread": "thread-CPU-time timing"}[doc["config"].get("cpu_clock", "wall")]


def _load(env: dict) -> str:
    start, end = env.get("load_average_1min"), env.get("load_average_1min_end")
    if start is None:
        return "unknown"
    return f"{start:.1f}" + (f" -> {end:.1f}" if end is not None else "")


def results_table(document: dict | str | os.PathLike) -> str:
    """Markdown table of a results document: one row per timed record, then the skipped and failed ones.

    Times are "median ± IQR/2" in ms; TFLOP/s are from the median under the FlashAttention FLOP convention.
    """
    doc = load(document)
    env = doc["environment"]
    records = doc["results"]
    # documents made since the bandwidth columns exist count FLOPs by attended pairs (bench.8) and show them
    extended = any("tb_per_s" in r for r in records)
    convention = ("FLOPs by attended pairs (bench.8), backward 2.5x; % of the device's dense peak and HBM "
                  "bandwidth where known" if extended else "FlashAttention FLOP convention")
    lines = [f"Device: {env['device_name']} ({env['device']}), torch {env['torch']}, "
             f"{env['torch_threads']} thread(s), {_clock(doc)}, 1-min load average {_load(env)}, "
             f"commit {(env.get('git_commit') or 'unknown')[:10]}, {doc['created']}. "
             f"Times: median ± IQR/2 in ms; TFLOP/s from the median, {convention}.", "",
             "| impl | dtype | mask | D | N | B x H | fwd ms | bwd ms | fwd+bwd ms | fwd TFLOP/s | bwd TFLOP/s "
             "| fwd+bwd TFLOP/s |" + (" fwd % peak | bwd % peak | fwd+bwd TB/s | fwd+bwd % BW |" if extended else "")
             + " peak MiB | max rel err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if extended else "")
             + "---|---|"]
    for r in (r for r in records if r["status"] == "ok"):
        t, f = r["timings_ms"], r["tflops"]
        mem = "–" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.1f}"
        more = ""
        if extended:
            pct, bw = r.get("pct_peak") or {}, r.get("pct_bandwidth") or {}
            cell = lambda d, p: "–" if p not in d else f"{d[p]:.3g}"  # noqa: E731
            more = (f" {cell(pct, 'fwd')} | {cell(pct, 'bwd')} | {cell(r.get('tb_per_s') or {}, 'fwd_bwd')} | "
                    f"{cell(bw, 'fwd_bwd')} |")
        lines.append(f"| {r['impl']} | {r['dtype']} | {r['mask']} | {r['head_dim']} | {r['seq_len']} | "
                     f"{r['batch']} x {r['heads']}{_kv(r)} | {_ms(t['fwd'])} | {_ms(t['bwd'])} | {_ms(t['fwd_bwd'])} | "
                     f"{f['fwd']:.3g} | {f['bwd']:.3g} | {f['fwd_bwd']:.3g} |{more} {mem} | "
                     f"{max(r['errors'].values()):.1e} |")
    groups: dict[tuple, list[dict]] = {}
    for r in (r for r in records if r["status"] != "ok"):
        # one line per implementation and kind of reason (its text up to the first ": "), not per config
        groups.setdefault((r["impl"], r["status"], (r["reason"] or "").split(": ")[0]), []).append(r)
    if groups:
        lines += ["", "Not timed:", ""]
    for (impl, status, _), group in groups.items():
        example = "e.g. " if len({r["reason"] for r in group}) > 1 else ""
        lines.append(f"- **{impl}** {status} ({len(group)} config(s)): {example}{group[0]['reason']}")
    return "\n".join(lines) + "\n"


def plot_tflops(document: dict | str | os.PathLike, path: str | os.PathLike | None = None,
                pass_: str = "fwd_bwd"):
    """TFLOP/s against N (log x), one panel per (mask, head dim), one line per (implementation, dtype);
    error bars span the TFLOP/s at the p75 and p25 times."""
    from minitx.plots import plt, save_figure

    doc = load(document)
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    masks = sorted({r["mask"] for r in doc["results"]}, reverse=True)
    dims = sorted({r["head_dim"] for r in doc["results"]})
    fig, axes = plt.subplots(len(masks), len(dims), figsize=(4.6 * len(dims), 3.4 * len(masks)),
                             squeeze=False, sharey=True)
    for (i, mask), (j, d) in ((a, b) for a in enumerate(masks) for b in enumerate(dims)):
        ax = axes[i][j]
        for impl, dtype in sorted({(r["impl"], r["dtype"]) for r in ok}):
            pts = sorted((r["seq_len"], r) for r in ok
                         if (r["impl"], r["dtype"], r["mask"], r["head_dim"]) == (impl, dtype, mask, d))
            if not pts:
                continue
            ns = [n for n, _ in pts]
            mid = [r["tflops"][pass_] for _, r in pts]
            # clamped at 0: with one repeat p25 = median = p75, and rounding may leave a -1e-17 (matplotlib refuses)
            lo = [max(0.0, m - r["flops"][pass_] / (r["timings_ms"][pass_]["p75_ms"] * 1e9))
                  for m, (_, r) in zip(mid, pts)]
            hi = [max(0.0, r["flops"][pass_] / (r["timings_ms"][pass_]["p25_ms"] * 1e9) - m)
                  for m, (_, r) in zip(mid, pts)]
            ax.errorbar(ns, mid, yerr=[lo, hi], marker="o", capsize=3, label=f"{impl} {dtype}")
        _roofline_line(ax, doc, [r for r in ok if (r["mask"], r["head_dim"]) == (mask, d)], pass_)
        ax.set_xscale("log", base=2)
        ns_all = sorted({r["seq_len"] for r in doc["results"]})
        ax.set_xticks(ns_all, [str(n) for n in ns_all])
        ax.minorticks_off()
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(f"{_PASS_LABEL[pass_]} TFLOP/s")
        ax.set_title(f"{mask}, head dim {d}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"attention {_PASS_LABEL[pass_]} on {doc['environment']['device_name']}", fontsize=10)
    return save_figure(fig, path)


def _roofline_line(ax, doc: dict, records: list[dict], pass_: str) -> None:
    """The device's roofline for these records, min(peak, I W) with I = FLOPs / compulsory bytes (bench.6,
    bench.8, bench.9), dashed; only for a GPU with a known spec-sheet peak."""
    from minitx.bench.flops import device_peak

    for dtype in sorted({r["dtype"] for r in records if "bytes" in r}):
        peak = device_peak(doc["environment"].get("device_name") if doc["environment"]["device"] == "cuda"
                           else None, dtype)
        if peak is None:
            continue
        by_n = {r["seq_len"]: r for r in records if r["dtype"] == dtype}
        ns = sorted(by_n)
        roof = [min(peak[0], by_n[n]["flops"][pass_] / by_n[n]["bytes"][pass_] * peak[1]) for n in ns]
        ax.plot(ns, roof, "k--", linewidth=1, label=f"roofline {dtype}")


def plot_memory(document: dict | str | os.PathLike, path: str | os.PathLike | None = None):
    """Peak memory of forward + backward (MiB, log) against N, one panel per (mask, head dim); None when no
    record measured it (a CPU)."""
    from minitx.plots import plt, save_figure

    doc = load(document)
    ok = [r for r in doc["results"] if r["status"] == "ok" and r.get("peak_memory_bytes")]
    if not ok:
        return None
    keys = sorted({(r["mask"], r["head_dim"]) for r in ok}, reverse=True)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.4), squeeze=False)
    for ax, (mask, d) in zip(axes[0], keys):
        for impl, dtype in sorted({(r["impl"], r["dtype"]) for r in ok}):
            pts = sorted((r["seq_len"], r["peak_memory_bytes"] / 2**20) for r in ok
                         if (r["impl"], r["dtype"], r["mask"], r["head_dim"]) == (impl, dtype, mask, d))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{impl} {dtype}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel("peak memory, forward + backward (MiB)")
        ax.set_title(f"{mask}, head dim {d}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_roofline(machines: dict[str, tuple[float, float]], seq_lens, head_dim: int = 64,
                  bytes_per_element: int = 2, query_block: int = 128, path: str | os.PathLike | None = None):
    """Left: attention's arithmetic intensity against N (bench.4, bench.5, bench.7) with each machine's ridge
    point peak / bandwidth. Right: the attainable TFLOP/s min(peak, I x bandwidth), (bench.6), per machine.

    `machines` maps a name to (peak TFLOP/s, memory bandwidth TB/s).
    """
    from minitx.plots import plt, save_figure
    from minitx.bench.flops import arithmetic_intensity, roofline

    ns = list(seq_lens)
    curves = {
        "IO-aware ideal (bench.4)": dict(),
        f"tiled, B_r={query_block} (bench.7)": dict(query_block=query_block),
        "materialized S, P (bench.5)": dict(materialize_scores=True),
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for label, kw in curves.items():
        left.plot(ns, [arithmetic_intensity(n, head_dim, bytes_per_element, **kw) for n in ns], marker=".",
                  label=label)
    for (name, (peak, bw)), color in zip(machines.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"][3:]):
        left.axhline(peak / bw, ls="--", color=color, label=f"{name} ridge {peak / bw:.0f}")
        for (label, kw), ls in zip(curves.items(), ("-", "-.", ":")):
            ys = [roofline(arithmetic_intensity(n, head_dim, bytes_per_element, **kw), peak, bw) for n in ns]
            right.plot(ns, ys, ls=ls, color=color, label=f"{name}, {label.split(' (')[0]}")
    for ax, ylabel in ((left, "FLOP / byte"), (right, "attainable TFLOP/s (roofline)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5)
    left.set_title(f"attention forward intensity, D={head_dim}, {bytes_per_element}-byte elements", fontsize=9)
    right.set_title("min(peak, intensity x bandwidth)", fontsize=9)
    return save_figure(fig, path)
