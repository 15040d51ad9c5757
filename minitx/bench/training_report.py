"""Training-throughput results as data: tokens/s and ratios from the step times, the JSON document, a markdown
table and a bar plot. The JSON is the source of truth; the table and the plot are derived from it."""

from __future__ import annotations

import importlib.metadata
import os

import torch

from minitx.bench.report import _load, load, results_document
from minitx.bench.sidebyside import time_ratio
from minitx.bench.timing import percentile, summarize

SCHEMA = "minitx.bench.training/1"
FLOOR = 1.0  # minitx's step time over the reference's (the last HF implementation timed, HF's default sdpa)
NOTE = ("Absolute tokens/s depend on what else the machine is doing (several processes may share its cores); "
        "the ratio to Hugging Face, measured side by side in interleaved rounds on the same batch, is the number "
        "to read. Ratios: tokens/s over HF's, as a ratio of medians, and (in parentheses) the median and "
        "quartiles of the per-round ratios.")


def throughput(samples_ms: list[float], tokens: int) -> dict:
    """Timing statistics and tokens/s: at the median step time, and at p75 / p25 (the slow and fast quartiles)."""
    stats = summarize(samples_ms)
    return dict(timings_ms=stats.to_dict(), tokens_per_s=tokens / (stats.median_ms / 1e3),
                tokens_per_s_p25=tokens / (stats.p75_ms / 1e3), tokens_per_s_p75=tokens / (stats.p25_ms / 1e3))


def ratios(records: list[dict], samples: dict[str, list[float]]) -> None:
    """Fill each timed record's `ratio_to[hf impl]` (its tokens/s over HF's): the ratio of medians, and the
    median and quartiles of the per-round ratios t_hf / t (sample i of both comes from round i)."""
    hf = [r for r in records if r["status"] == "ok" and r["impl"].startswith("hf:")]
    for r in (r for r in records if r["status"] == "ok"):
        r["ratio_to"] = {}
        for h in (h for h in hf if h is not r):
            paired = sorted(th / t for th, t in zip(samples[h["impl"]], samples[r["impl"]]))
            r["ratio_to"][h["impl"]] = dict(ratio=r["tokens_per_s"] / h["tokens_per_s"],
                                            paired_median=percentile(paired, 0.5),
                                            paired_p25=percentile(paired, 0.25), paired_p75=percentile(paired, 0.75),
                                            time=time_ratio(samples[r["impl"]], samples[h["impl"]]))


def _version(package: str) -> str | None:
    try:  # the installed version, without importing the package
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def training_document(records: list[dict], config: dict, device: torch.device | str, env: dict | None = None,
                      load_start: tuple[float, float, float] | None = None) -> dict:
    """The JSON document: the bench's environment record (pass `env` and `load_start` captured *before* the
    run), transformers' version, `os.getloadavg()` at start and end, the config, the notes and the records."""
    doc = results_document(records, config, device, env=env)
    doc["schema"] = SCHEMA
    doc["environment"]["transformers"] = _version("transformers")
    doc["load_average"] = dict(start=list(load_start) if load_start is not None else None,
                               end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    doc["notes"] = NOTE
    return doc


def _ratio(r: dict, hf: str) -> str:
    if r["impl"] == hf:
        return "1 (itself)"
    x = (r.get("ratio_to") or {}).get(hf)
    if x is None:
        return "–"
    return f"{x['ratio']:.2f} ({x['paired_median']:.2f} [{x['paired_p25']:.2f}, {x['paired_p75']:.2f}])"


def _header(doc: dict) -> list[str]:
    env, c = doc["environment"], doc["config"]
    r0 = doc["results"][0]
    clock = "CUDA-event timing" if env["device"] == "cuda" else f"{c.get('cpu_clock', 'wall')}-clock timing"
    return [f"Device: {env['device_name']} ({env['device']}), torch {env['torch']}, transformers "
            f"{env.get('transformers')}, {env['torch_threads']} thread(s), {clock}, 1-min load average "
            f"{_load(env)}, commit {(env.get('git_commit') or 'unknown')[:10]}, {doc['created']}.", "",
            f"Model: BERT, d_model {c['d_model']}, {c['n_layers']} layers, {c['n_heads']} heads, d_ff "
            f"{c['d_ff'] or 4 * c['d_model']}, vocab {c['vocab_size']}. Batch {c['batch_size']} x {c['seq_len']} = "
            f"{r0['tokens_per_step']} tokens ({r0['real_tokens_per_step']} real, {r0['predicted_tokens_per_step']} "
            f"predicted), {c['precision']}, dropout {c['dropout']} / attention dropout {c['attention_dropout']}. "
            f"Step = forward + loss + backward + AdamW step + zero_grad; {c['warmup']} warm-up and {c['repeats']} "
            "timed steps each, interleaved round by round. tokens/s count every position, padding included.", "",
            f"Notes: {doc['notes']}", ""]


def training_table(document: dict | str | os.PathLike) -> str:
    """Markdown table of a training results document: timed rows, then the failed and skipped ones."""
    doc = load(document)
    records = doc["results"]
    hfs = [r["impl"] for r in records if r["status"] == "ok" and r["impl"].startswith("hf:")]
    lines = _header(doc) + [
        "| impl | attention | step ms | tokens/s | " + " | ".join(f"vs {h}" for h in hfs)
        + (f" | time / {hfs[-1]}'s (paired [quartiles]) | floor | meets floor" if hfs else "")
        + " | gate: loss diff | gate: grad rel err | peak MiB | ATen ops per step | GFLOP/s | MFU |",
        "|---|---|---|---|" + "---|" * len(hfs) + ("---|---|---|" if hfs else "") + "---|---|---|---|---|---|"]
    for r in (r for r in records if r["status"] == "ok"):
        t, g = r["timings_ms"], r["gate"]
        mem = "–" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f}"
        lines.append(f"| {r['impl']} | {r['attention']} | {t['median_ms']:.1f} ± {t['iqr_ms'] / 2:.1f} | "
                     f"{r['tokens_per_s']:.0f} | " + " | ".join(_ratio(r, h) for h in hfs)
                     + (_floor(r, hfs[-1]) if hfs else "")
                     + f" | {g['loss_abs_diff']:.1e} | {g['grad_rel_error']:.1e} | {mem} | {_ops(r)} | "
                     f"{_num(r.get('gflops'), '.1f')} | {_num(r.get('mfu_percent'), '.1f', '%')} |")
    peak = next((r["matmul_peak"] for r in records if r.get("matmul_peak")), None)
    if peak or any(r.get("model_flops_per_step") for r in records):
        flops = next(r["model_flops_per_step"] for r in records if r.get("model_flops_per_step"))
        lines += ["", f"Model FLOPs per step (bench.11, the full-head model, the same for every row): {flops:.3g} = "
                      "6 P_mm B N + 12 L B N^2 C with P_mm = L (4 C^2 + 2 C d_ff) + C^2 + V C. MFU = model FLOP/s / "
                      + (f"the matmul peak, {peak['gflops']:.1f} GFLOP/s ({peak['source']}; fp32 "
                         f"{peak.get('size', '?')}^3 products, {peak.get('threads', '?')} thread(s))" if peak else
                         "an unknown peak") + " (bench.12). ATen ops per step: every `aten::` event of one step "
                      "(forward + backward + optimizer) in torch.profiler, top-level ones in parentheses."]
    others = [r for r in records if r["status"] != "ok"]
    if others:
        lines += ["", "Not timed:", ""]
    lines += [f"- **{r['impl']}** {r['status']}: {r['reason']}" for r in others]
    return "\n".join(lines) + "\n"


def _floor(r: dict, hf: str) -> str:
    """' | time ratio | floor | meets' against `hf` (minitx rows only: HF rows are the reference)."""
    x = (r.get("ratio_to") or {}).get(hf, {}).get("time")
    if x is None or not r["impl"].startswith("minitx:"):
        return " | – | – | –"
    verdict = "yes" if x["ratio"] <= FLOOR else "**no**"
    return (f" | {x['ratio']:.2f}x ({x['paired_median']:.2f} [{x['paired_p25']:.2f}, {x['paired_p75']:.2f}]) "
            f"| <= {FLOOR:.1f}x | {verdict}")


def _ops(r: dict) -> str:
    ops = r.get("ops_per_step")
    return "–" if not ops else f"{ops['all']} ({ops['top']})"


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def plot_training(document: dict | str | os.PathLike, path: str | os.PathLike | None = None):
    """Bars of tokens/s per timed implementation (error bars: the p25..p75 step times), each annotated with
    its paired ratio to every HF implementation."""
    from minitx.plots import plt, save_figure

    doc = load(document)
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(1.6 * max(3, len(ok)) + 1.5, 4.0))
    x = range(len(ok))
    mid = [r["tokens_per_s"] for r in ok]
    err = [[m - r["tokens_per_s_p25"] for m, r in zip(mid, ok)], [r["tokens_per_s_p75"] - m for m, r in zip(mid, ok)]]
    colors = ["tab:blue" if r["impl"].startswith("minitx:") else "tab:orange" for r in ok]
    ax.bar(x, mid, yerr=err, capsize=4, color=colors)
    for i, r in enumerate(ok):
        text = "\n".join(f"{v['paired_median']:.2f}x {h}" for h, v in (r.get("ratio_to") or {}).items())
        ax.annotate(text, (i, mid[i] + err[1][i]), ha="center", va="bottom", fontsize=7,
                    xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(list(x), [r["impl"] for r in ok])
    ax.set_ylabel("tokens / s (median, p25..p75)")
    ax.set_xlabel("above each bar: its tokens/s over each HF implementation's (median of per-round ratios)",
                  fontsize=8)
    ax.set_ylim(0, max((m + e for m, e in zip(mid, err[1])), default=1.0) * 1.3)
    c, env = doc["config"], doc["environment"]
    ax.set_title(f"MLM training step, d_model {c['d_model']} x {c['n_layers']} layers, batch {c['batch_size']} x "
                 f"{c['seq_len']}, {c['precision']}, on {env['device_name']}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
