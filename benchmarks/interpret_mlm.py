"""Which heads of the default synthetic MLM carry subject-verb agreement and bracket matching? Found three ways
(attention to the cue, ablation, patching), then ablated: checked against the grammar's ground truth.

    python benchmarks/interpret_mlm.py [--runs RUN_DIR ...] [--seeds 0 1 2]

Without --runs it trains `minitx pretrain` with its defaults (one per seed, ~1 min each on a quiet machine)
into runs/interpret/mlm_s{seed}, or reuses them. For every run, on the 500 held-out validation sentences the
run was evaluated on, each determined word is masked alone (as `minitx pretrain`'s probe does), and:
  1. attention to the cue (interp.1): the weight each head puts from the masked word to the word that decides
     it (the subject noun for `is`/`are`, the opening bracket for a closer, the word before a phrase's last);
  2. ablation (interp.4): probe accuracy per kind with each head's output replaced by its mean;
  3. patching (interp.5)-(interp.6): clean vs corrupted sentences (subject number flipped; opening bracket
     changed), each head's output patched from the clean run into the corrupted one, the logit difference of
     the two answers restored;
then the heads found for a kind are ablated together: does that kind fall toward chance while the others hold?
Writes benchmarks/results/interpret_mlm.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from minitx.data.mlm import encode_example
from minitx.data.synthetic import BRACKETS, DETERMINERS, KINDS, SUBJECT_NOUNS, SyntheticLanguage, chance_baselines
from minitx.interpret.cache import run_with_cache, run_with_hooks
from minitx.interpret.edits import ablate_heads, mean_activation
from minitx.interpret.patching import patch_heads
from minitx.recipes.pretrain.fill_mask import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OPENERS = {o: c for o, c in BRACKETS}
FLIP = {**{s: p for s, p in SUBJECT_NOUNS}, **{p: s for s, p in SUBJECT_NOUNS},
        **dict(zip(DETERMINERS[0], DETERMINERS[1])), **dict(zip(DETERMINERS[1], DETERMINERS[0]))}


def cue_of(sentence, word: int, kind: str) -> int:
    """The word index that decides the determined word `word` (the grammar's ground truth)."""
    if kind == "agreement":
        return next(i for i, k in sentence.free.items() if k == "subject")
    if kind == "bracket":
        return max(i for i in range(word) if sentence.words[i] in OPENERS)
    return word - 1  # phrase: the word before the last one fixes it


def probes(sentences, tokenizer, max_length=48):
    """One probe per determined word: (ids, masked positions, cue positions, kind, label ids, sentence, word)."""
    out = []
    for s in sentences:
        enc, _ = encode_example(s, tokenizer, max_length)
        for word, kind in sorted(s.determined.items()):
            cue = cue_of(s, word, kind)
            masked = [i for i, w in enumerate(enc.word_ids) if w == word]
            cued = [i for i, w in enumerate(enc.word_ids) if w == cue]
            if masked and cued:
                out.append(dict(ids=list(enc.ids), masked=masked, cue=cued, kind=kind, sentence=s, word=word))
    return out


def batch_of(items, tokenizer, key="ids"):
    n = max(len(p[key]) for p in items)
    ids = torch.full((len(items), n), tokenizer.pad_id)
    mask = torch.zeros(len(items), n, dtype=torch.long)
    labels = torch.full((len(items), n), -100)
    for b, p in enumerate(items):
        row = torch.tensor(p[key])
        labels[b, p["masked"]] = row[p["masked"]]
        row[p["masked"]] = tokenizer.mask_id
        ids[b, :len(row)], mask[b, :len(row)] = row, 1
    return ids, mask, labels


def chunks(items, size=128):
    return [items[i:i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def attention_to_cue(model, items, tokenizer) -> dict[str, torch.Tensor]:
    """kind -> (L, H): mean over probes of the weight from the (first) masked token to the cue word's tokens."""
    sums = {k: 0.0 for k in KINDS}
    counts = {k: 0 for k in KINDS}
    for chunk in chunks(items):
        ids, mask, _ = batch_of(chunk, tokenizer)
        _, cache = run_with_cache(model, ids, attention_mask=mask, names=lambda n: n.endswith("pattern"))
        pattern = cache.stack("attention.pattern")  # (L, B, H, N, N)
        for b, p in enumerate(chunk):
            sums[p["kind"]] = sums[p["kind"]] + pattern[:, b, :, p["masked"][0], p["cue"]].sum(-1)
            counts[p["kind"]] += 1
    return {k: sums[k] / max(counts[k], 1) for k in KINDS}


@torch.no_grad()
def accuracy(model, items, tokenizer, hooks=None) -> dict[str, float]:
    """Probe accuracy per kind (a probe is right when every masked piece is), with `hooks` applied."""
    hits = {k: [] for k in KINDS}
    for chunk in chunks(items):
        ids, mask, labels = batch_of(chunk, tokenizer)
        logits = run_with_hooks(model, ids, attention_mask=mask, hooks=hooks).logits
        right = ((logits.argmax(-1) == labels) | (labels == -100)).all(dim=1)
        for p, r in zip(chunk, right.tolist()):
            hits[p["kind"]].append(float(r))
    return {k: sum(v) / len(v) for k, v in hits.items() if v}


def corrupted_pairs(items, tokenizer, kind):
    """Clean and corrupted token ids of the same length: agreement flips the subject's number (its noun and
    determiner; sentences with a later pronoun, which also carries it, are left out); bracket changes the
    opener. Returns the pairs with the clean and the corrupted answer token."""
    pairs = []
    for p in items:
        if p["kind"] != kind or len(p["masked"]) != 1:
            continue
        s, words = p["sentence"], list(p["sentence"].words)
        if kind == "agreement":
            if any(w in ("it", "they") for w in words):
                continue
            subject = cue_of(s, p["word"], kind)
            for i in (subject, subject - 1, subject - 2):
                if i >= 0 and words[i] in FLIP:
                    words[i] = FLIP[words[i]]
            answer = {"is": "are", "are": "is"}
        else:
            opener = cue_of(s, p["word"], kind)
            order = [o for o, _ in BRACKETS]
            words[opener] = order[(order.index(words[opener]) + 1) % len(order)]
            answer = {c: OPENERS[words[opener]] for c in OPENERS.values()}
        corrupted = tokenizer.encode(words, max_length=48)
        if len(corrupted.ids) != len(p["ids"]):
            continue
        clean_answer = s.words[p["word"]]
        pairs.append(dict(ids=p["ids"], corrupted=list(corrupted.ids), masked=p["masked"],
                          clean=tokenizer.token_to_id[clean_answer],
                          wrong=tokenizer.token_to_id[answer[clean_answer]]))
    return pairs


def patching(model, pairs, tokenizer) -> tuple[torch.Tensor, float, float]:
    """(interp.5)-(interp.6): (L, H) restored fraction of logit(clean answer) - logit(corrupted answer)."""
    pairs = pairs[:200]
    ids, mask, _ = batch_of(pairs, tokenizer)
    bad, _, _ = batch_of(pairs, tokenizer, key="corrupted")
    rows = torch.arange(len(pairs))
    where = torch.tensor([p["masked"][0] for p in pairs])
    right, wrong = torch.tensor([p["clean"] for p in pairs]), torch.tensor([p["wrong"] for p in pairs])

    def metric(out):
        at = out.logits[rows, where]  # (P, V)
        return (at[rows, right] - at[rows, wrong]).mean()
    result = patch_heads(model, ids, bad, metric, attention_mask=mask)
    return result.normalized(), result.clean, result.corrupted


def analyse(run: Path, seed: int) -> dict:
    torch.manual_seed(0)
    model, tokenizer = load_pretrained(run)
    config = json.loads((run / "summary.json").read_text()).get("config", {})
    sentences = SyntheticLanguage(seed).sentences(config.get("eval_sentences", 500), "validation")
    items = probes(sentences, tokenizer)
    L, H = len(model.bert.blocks), model.config.n_heads
    ids, mask, _ = batch_of(items, tokenizer)
    means = {layer: mean_activation(model, f"bert.blocks.{layer}.attention.z", ids, attention_mask=mask)
             for layer in range(L)}
    cue = attention_to_cue(model, items, tokenizer)
    table = {"none": accuracy(model, items, tokenizer)}
    for layer in range(L):
        for head in range(H):
            table[f"L{layer}H{head}"] = accuracy(model, items, tokenizer, ablate_heads(model, [(layer, head)], means))
    patched = {k: patching(model, corrupted_pairs(items, tokenizer, k), tokenizer) for k in ("agreement", "bracket")}
    found = {}
    for kind in ("agreement", "bracket"):
        drop = torch.tensor([[table["none"][kind] - table[f"L{l}H{h}"][kind] for h in range(H)] for l in range(L)])
        score = cue[kind] / cue[kind].max() + patched[kind][0].clamp_min(0) + drop / max(float(drop.max()), 1e-6)
        top = sorted(((float(score[l, h]), l, h) for l in range(L) for h in range(H)), reverse=True)[:2]
        found[kind] = [(l, h) for _, l, h in top]
        table[f"{kind} heads " + "+".join(f"L{l}H{h}" for l, h in found[kind])] = accuracy(
            model, items, tokenizer, ablate_heads(model, found[kind], means))
    counts = {k: sum(p["kind"] == k for p in items) for k in KINDS}
    return {"run": str(run), "seed": seed, "probes": counts, "accuracy": table,
            "attention_to_cue": {k: v.tolist() for k, v in cue.items()},
            "patching": {k: {"restored": v[0].tolist(), "clean": v[1], "corrupted": v[2]} for k, v in patched.items()},
            "found": {k: [f"L{l}H{h}" for l, h in v] for k, v in found.items()}}


def figure(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure
    panels = [("attention to the cue", result["attention_to_cue"]["agreement"], "agreement"),
              ("attention to the cue", result["attention_to_cue"]["bracket"], "bracket"),
              ("patching: restored", result["patching"]["agreement"]["restored"], "agreement"),
              ("patching: restored", result["patching"]["bracket"]["restored"], "bracket")]
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    for ax, (title, values, kind) in zip(fig.subplots(2, 2).T.flatten(), panels):
        t = torch.tensor(values)
        im = ax.imshow(t.numpy(), cmap="viridis", vmin=min(0.0, float(t.min())), vmax=max(1.0, float(t.max())))
        ax.set_title(f"{kind}: {title}", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(t.shape[1]))
        ax.set_yticks(range(t.shape[0]))
        for l in range(t.shape[0]):
            for h in range(t.shape[1]):
                ax.text(h, l, f"{float(t[l, h]):.2f}", ha="center", va="center", fontsize=6,
                        color="white" if float(t[l, h]) < 0.5 else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"default synthetic MLM, seed {result['seed']}: which heads carry agreement and bracket matching",
                 fontsize=10)
    fig.savefig(path, dpi=100)


def markdown(results: list[dict]) -> str:
    chance = chance_baselines()
    rows = list(results[0]["accuracy"])
    seeds = [r["seed"] for r in results]
    lines = ["# Heads of the default synthetic MLM: found, then ablated", "",
             "Written by `python benchmarks/interpret_mlm.py` (the runs: `minitx pretrain --seed S`, defaults). "
             "Probe accuracy per kind of determined position (every determined word of the 500 held-out sentences "
             "masked alone), each head's output mean-ablated (interp.4); seeds " + ", ".join(map(str, seeds)) +
             ", shown seed by seed (a head's number means nothing across seeds: each run finds its own). Chance: " +
             ", ".join(f"{k} {chance[k]:.1%}" for k in KINDS) + ".", "",
             "| ablated | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    for row in [r for r in rows if not r.startswith(("agreement heads", "bracket heads"))]:
        cells = []
        for k in KINDS:
            values = [r["accuracy"][row][k] for r in results]
            cells.append(" / ".join(f"**{v:.1%}**" if v < 0.9 else f"{v:.1%}" for v in values))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "The heads found per kind (attention to the cue + patching + single-head ablation drop, top 2), "
              "ablated together:", "", "| seed | kind | heads | " + " | ".join(KINDS) + " |",
              "|---|---|---|" + "---|" * len(KINDS)]
    for r in results:
        for kind, heads in r["found"].items():
            row = next(k for k in r["accuracy"] if k.startswith(f"{kind} heads"))
            lines.append(f"| {r['seed']} | {kind} | {' + '.join(heads)} | "
                         + " | ".join(f"{r['accuracy'][row][k]:.1%}" for k in KINDS) + " |")
    lines += ["", "Patching (interp.5)-(interp.6), logit difference of the clean vs the corrupted answer at the masked "
              "word; clean / corrupted runs and the best single head's restored fraction:", "",
              "| seed | kind | clean | corrupted | best head (restored) |", "|---|---|---|---|---|"]
    for r in results:
        for kind, p in r["patching"].items():
            t = torch.tensor(p["restored"])
            l, h = divmod(int(t.argmax()), t.shape[1])
            lines.append(f"| {r['seed']} | {kind} | {p['clean']:.2f} | {p['corrupted']:.2f} | "
                         f"L{l}H{h} ({float(t.max()):.2f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=None, help="pretrain run directories (default: train them)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--render", action="store_true", help="only rewrite the .md and .png from the .json")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads((RESULTS / "interpret_mlm.json").read_text())["runs"]
        (RESULTS / "interpret_mlm.md").write_text(markdown(results))
        figure(results[0], RESULTS / "interpret_mlm.png")
        return 0
    torch.set_num_threads(1)
    runs = [Path(r) for r in args.runs] if args.runs else []
    if not runs:
        for seed in args.seeds:
            run = ROOT / "runs" / "interpret" / f"mlm_s{seed}"
            if not (run / "checkpoint.pt").is_file():
                subprocess.run([sys.executable, "-m", "minitx", "pretrain", "--seed", str(seed), "--out-dir",
                                str(run), "--threads", "1", "--no-progress"], check=True, cwd=ROOT)
            runs.append(run)
    began = time.perf_counter()
    results = []
    for run in runs:
        seed = json.loads((run / "summary.json").read_text()).get("config", {}).get("seed", 0)
        results.append(analyse(run, seed))
        print(json.dumps({"seed": seed, "found": results[-1]["found"], "none": results[-1]["accuracy"]["none"]}))
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"analysis_s": round(time.perf_counter() - began, 1), "load_average": os.getloadavg(),
            "torch": torch.__version__, "machine": platform.machine()}
    (RESULTS / "interpret_mlm.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1) + "\n")
    (RESULTS / "interpret_mlm.md").write_text(markdown(results))
    figure(results[0], RESULTS / "interpret_mlm.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
