"""Side-by-side results as data: the JSON document, a markdown table with a floor column, and a ratio plot.
The JSON is the source of truth; the table and the plot are derived from it (the latency benchmark and the
GPT training benchmark write the same schema)."""

from __future__ import annotations

import os
from pathlib import Path


from minitx.bench.report import _load, load, results_document
from minitx.bench.training_report import _version

SCHEMA = "minitx.bench.sidebyside/1"
NOTE = ("Ratio = minitx time / reference time (< 1: minitx is faster), as the ratio of the medians and (in "
        "parentheses) the median and quartiles of the per-round ratios; floor: the ratio a row must not exceed. "
        "Each row was gated before timing (logits within the tolerance, generated ids equal, or loss and "
        "gradients), then both sides ran alternated round by round in one process on one thread, timed with "
        "that thread's CPU clock. Ops: ATen ops per call from torch.profiler, all `aten::` events (top-level "
        "ones, called from Python, in parentheses).")


def sidebyside_document(records: list[dict], config: dict, peak: dict | None, *, title: str,
                        env: dict | None = None, load_start: tuple[float, float, float] | None = None) -> dict:
    """The JSON document: the bench's environment record (versions, threads, git commit; pass `env` and
    `load_start` captured before the run), transformers' version, load averages, the matmul peak, the records."""
    doc = results_document(records, config, "cpu", env=env)
    doc.update(schema=SCHEMA, title=title, notes=NOTE, matmul_peak=peak,
               load_average=dict(start=list(load_start) if load_start is not None else None,
                                 end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None))
    doc["environment"]["transformers"] = _version("transformers")
    return doc


def _per_call(r: dict, name: str) -> str:
    """"median ± IQR/2" ms per call, then per unit and units/s when a call makes several units."""
    t = r["timings_ms"][name]
    text = f"{t['median_ms']:.2f} ± {t['iqr_ms'] / 2:.2f}"
    if r["unit"] != "call":
        text += f" ({r['per_unit_ms'][name]:.3f} ms/{r['unit']}, {r['units_per_s'][name]:.0f} {r['unit']}s/s)"
    return text


def _ratio(r: dict) -> str:
    x = r["ratio"]
    return f"{x['ratio']:.2f}x ({x['paired_median']:.2f} [{x['paired_p25']:.2f}, {x['paired_p75']:.2f}])"


def _ops(r: dict) -> str:
    """all (top-level) per call; per unit as well where a call makes several units one by one (decoding)."""
    if not r.get("ops"):
        return "–"
    text = " / ".join(f"{r['ops'][n]['all']} ({r['ops'][n]['top']})" for n in r["contenders"])
    if r.get("ops_per_unit"):
        units = r["units_per_call"]
        text += f"; per {r['unit']} " + " / ".join(f"{r['ops'][n]['all'] / units:.0f}" for n in r["contenders"])
    return text


def _mfu(r: dict) -> str:
    if not r.get("mfu_percent"):
        return "–"
    return " / ".join(f"{r['mfu_percent'][n]:.1f}%" for n in r["contenders"])


def sidebyside_table(document: dict | str | os.PathLike) -> str:
    """Markdown table of a side-by-side document: one row per gated and timed workload, then the failed ones."""
    doc = load(document)
    env, peak = doc["environment"], doc.get("matmul_peak")
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    lines = [f"{doc['title']}", "",
             f"Device: {env['device_name']}, torch {env['torch']}, transformers {env.get('transformers')}, "
             f"{env['torch_threads']} thread(s), {doc['config'].get('cpu_clock', 'thread')}-clock timing, "
             f"1-min load average {_load(env)}, commit {(env.get('git_commit') or 'unknown')[:10]}"
             f"{' (uncommitted changes)' if env.get('git_dirty') else ''}, {doc['created']}.", ""]
    if peak:
        lines += [f"Matmul peak of this CPU, measured in the same run: {peak['gflops']:.1f} GFLOP/s (fp32 "
                  f"{peak['size']} x {peak['size']} products, median of {peak['repeats']}, "
                  f"{peak['threads']} thread).", ""]
    lines += [f"Notes: {doc['notes']}", "",
              "| workload | minitx backend / reference attention | minitx ms per call | reference ms per call "
              "| minitx / reference | floor | meets floor | ops per call, minitx / reference | MFU minitx / "
              "reference | gate |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok:
        mx, ref = r["contenders"][0], r["contenders"][-1]
        gate = ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in r["gate"].items())
        lines.append(f"| {r['workload']}: {r['description']} | {r.get('minitx_backend')} / "
                     f"{r.get('reference_attention')} | {_per_call(r, mx)} | "
                     f"{_per_call(r, ref)} | {_ratio(r)} | <= {r['floor']:.1f}x | "
                     f"{'yes' if r['meets_floor'] else '**no**'} | {_ops(r)} | {_mfu(r)} | {gate} |")
    others = [r for r in doc["results"] if r["status"] != "ok"]
    if others:
        lines += ["", "Not timed:", ""]
    lines += [f"- **{r['workload']}** {r['status']}: {r['reason']}" for r in others]
    return "\n".join(lines) + "\n"


def plot_ratios(document: dict | str | os.PathLike, path: str | os.PathLike | None = None):
    """Horizontal bars of minitx / reference time per workload (error bars: the per-round ratios' quartiles),
    with the floor drawn as a line."""
    from minitx.plots import plt, save_figure

    doc = load(document)
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 0.55 * max(1, len(ok))))
    y = list(range(len(ok)))
    mid = [r["ratio"]["paired_median"] for r in ok]
    err = [[m - r["ratio"]["paired_p25"] for m, r in zip(mid, ok)],
           [r["ratio"]["paired_p75"] - m for m, r in zip(mid, ok)]]
    colors = ["tab:green" if r["meets_floor"] else "tab:red" for r in ok]
    ax.barh(y, mid, xerr=err, capsize=3, color=colors)
    for i, r in enumerate(ok):
        ax.annotate(f"{r['ratio']['ratio']:.2f}x", (mid[i] + err[1][i], i), va="center", fontsize=8,
                    xytext=(3, 0), textcoords="offset points")
    for floor in sorted({r["floor"] for r in ok}):
        ax.axvline(floor, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y, [r["workload"] for r in ok])
    ax.invert_yaxis()
    ax.set_xlim(0, max([*(m + e for m, e in zip(mid, err[1])), 1.0]) * 1.2)
    ax.set_xlabel("minitx time / reference time (per-round ratios: median, quartiles; dashed: floor)", fontsize=9)
    env = doc["environment"]
    ax.set_title(f"{doc['title']} on {env['device_name']}, {env['torch_threads']} thread", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def summary_rows(document: dict | str | os.PathLike) -> str:
    """The short markdown table a README shows: per timed row the ratio with its paired quartiles, the floor
    and the verdict, the backend, ops per call (per token when decoding) and the run's date and commit."""
    doc = load(document)
    env = doc["environment"]
    lines = ["| workload | minitx / HF time (paired quartiles) | floor | meets | minitx backend | ops minitx / HF |",
             "|---|---|---|---|---|---|"]
    for r in (r for r in doc["results"] if r["status"] == "ok"):
        lines.append(f"| {r['description']} | {_ratio(r)} | <= {r['floor']:.1f}x | "
                     f"{'yes' if r['meets_floor'] else '**no**'} | {r.get('minitx_backend')} | {_ops(r)} |")
    lines += ["", f"{doc['title']}; {env['cpu']}, {env['torch_threads']} thread, thread-CPU clock, "
                  f"{doc['config'].get('rounds')} alternated rounds, "
                  f"commit {(env.get('git_commit') or 'unknown')[:10]}, "
                  f"{doc['created'][:10]}, 1-min load {_load(env)}."]
    return "\n".join(lines)


def update_readme(readme: str | os.PathLike, name: str, document: dict | str | os.PathLike) -> bool:
    """Replace the lines between `<!-- name -->` and `<!-- /name -->` in `readme` with `summary_rows(document)`;
    False (and the file untouched) when the markers are not there."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text or end not in text or text.index(start) > text.index(end):
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{summary_rows(document)}\n{end}{tail}", encoding="utf-8")
    return True
