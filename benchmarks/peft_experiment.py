"""Does pretraining pay off with few labels, and does LoRA get there training a sliver of the weights?

    python benchmarks/peft_experiment.py [--pretrained RUN_DIR] [--budgets 64 256] [--seeds 0 1 2] [--workers 2]

Pretrains once with `minitx pretrain`'s defaults (or reuses --pretrained), then fine-tunes on the built-in
sentiment task with each label budget: from scratch (same architecture and tokenizer, random init, full
training), and from the pretrained encoder with full fine-tuning, LoRA r=4 and r=8, adapters and BitFit, each
over several seeds (a seed draws the labelled sentences, the head's init and the batch order). Every run is
tested on the same 2,000 held-out sentences. Before fine-tuning it probes the encoder: does it know which
adjectives are positive without ever seeing a label? Writes results/peft_experiment.{json,md,png}.
Runs share the CPU cores one thread each (`--workers`); the load average is recorded, since the machine may
be shared. Guide: docs/finetuning.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import minitx.data.synthetic as corpus
from minitx.data.synthetic import NEGATIVE_ADJECTIVES, POSITIVE_ADJECTIVES
from minitx.models.bert import BertForMaskedLM
from minitx.plots import method_accuracy
from minitx.recipes.finetune.config import FinetuneConfig
from minitx.recipes.finetune.recipe import run_finetuning

RESULTS = Path(__file__).resolve().parent / "results"
# name -> FinetuneConfig overrides; "scratch" takes the pretrained run's architecture and tokenizer, not weights.
METHODS = {
    "scratch (full)": {"method": "full", "from_checkpoint": None},
    "full": {"method": "full"},
    "LoRA r=4": {"method": "lora", "lora_r": 4, "lora_alpha": 8.0},
    "LoRA r=8": {"method": "lora", "lora_r": 8, "lora_alpha": 16.0},
    "adapter": {"method": "adapter"},
    "BitFit": {"method": "bitfit"},
}


def shrink_lexicon(k: int) -> None:
    """Diagnostic (--adjectives K): the grammar draws from the first K adjectives of each polarity only. In place,
    so every module holding the lists sees it; a worker process calls it again before generating sentences."""
    if k:
        corpus.POSITIVE_ADJECTIVES[:] = corpus.POSITIVE_ADJECTIVES[:k]
        corpus.NEGATIVE_ADJECTIVES[:] = corpus.NEGATIVE_ADJECTIVES[:k]


def one_run(job: tuple[str, int, int, str, dict, int]) -> dict:
    """One fine-tuning run in a worker process (one torch thread: on shared cores more threads only spin)."""
    name, budget, seed, pretrained, extra, adjectives = job
    torch.set_num_threads(1)
    shrink_lexicon(adjectives)
    overrides = {**METHODS[name], **extra}
    frm = overrides.pop("from_checkpoint", pretrained)
    paths = {} if frm else {"model_config": f"{pretrained}/model_config.json",
                            "tokenizer": f"{pretrained}/tokenizer.json"}
    config = FinetuneConfig(from_checkpoint=frm, n_train_labels=budget, seed=seed, out_dir="", progress=False,
                            **paths, **overrides)
    s = run_finetuning(config).summary
    return {"method": name, "budget": budget, "seed": seed, "test_accuracy": s["test_accuracy"],
            "best_validation_accuracy": s["best_validation_accuracy"], "best_step": s["best_step"],
            "steps_run": s["steps_run"], "trainable_parameters": s["trainable_parameters"],
            "trainable_share": s["trainable_share"], "wall_time_s": s["wall_time_s"], "lr": s["lr"]}


@torch.no_grad()
def polarity_probe(model: BertForMaskedLM, tokenizer) -> dict[str, float]:
    """What the encoder knows about sentiment before any label: (1) leave-one-out nearest-centroid accuracy of
    the adjectives' input embeddings by polarity; (2) the share of `the dog is ADJ and|but [MASK] .` where
    the MLM puts more mass on adjectives of the right polarity (same after `and`, opposite after `but`)."""
    ids = {p: [tokenizer.token_to_id[w] for w in ws] for p, ws in ((1, POSITIVE_ADJECTIVES), (0, NEGATIVE_ADJECTIVES))}
    emb = torch.nn.functional.normalize(model.bert.embeddings.token.weight, dim=-1)
    x = torch.cat([emb[ids[1]], emb[ids[0]]])  # (64, C)
    y = torch.tensor([1] * len(ids[1]) + [0] * len(ids[0]))
    right = 0
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        c1, c0 = x[keep & (y == 1)].mean(0), x[keep & (y == 0)].mean(0)
        right += int(bool(x[i] @ c1 > x[i] @ c0) == bool(y[i]))
    model.eval()
    hits = []
    for polarity, words in ((1, POSITIVE_ADJECTIVES), (0, NEGATIVE_ADJECTIVES)):
        for word in words:
            for conj, same in (("and", True), ("but", False)):
                enc = tokenizer.encode(f"the dog is {word} {conj} x .").ids
                enc[-3] = tokenizer.mask_id  # [CLS] ... conj [MASK] . [SEP]
                probs = model(torch.tensor([enc])).logits[0, -3].softmax(-1)
                own, other = float(probs[ids[polarity]].sum()), float(probs[ids[1 - polarity]].sum())
                hits.append((own > other) == same)
    return {"embedding_polarity_accuracy": right / len(y), "coordination_accuracy": sum(hits) / len(hits)}


def with_definitions(share: float):
    """Diagnostic (--definitions P): a generator that, with chance P, emits `to be ADJ is a virtue|vice .` instead
    of a grammar sentence: a binary slot the adjective alone determines, as `is|are` is determined by the
    subject. Used for the *pretraining* corpus only; labelled sentences always come from the real grammar."""
    original = corpus.generate_sentence

    def generate(rng):
        if rng.random() >= share:
            return original(rng)
        positive = rng.random() < 0.5
        word = rng.choice(POSITIVE_ADJECTIVES if positive else NEGATIVE_ADJECTIVES)
        words = ["to", "be", word, "is", "a", "virtue" if positive else "vice", "."]
        return corpus.Sentence(" ".join(words), words, {}, int(positive))
    return generate


def pretrain(args) -> tuple[str, dict]:
    from minitx.recipes.pretrain.config import PretrainConfig
    from minitx.recipes.pretrain.recipe import run_pretraining
    out = Path(args.work_dir) / "pretrain"
    overrides = {"max_steps": 60, "train_sentences": 2000, "eval_every": 0} if args.fast else {}
    original = corpus.generate_sentence
    if args.definitions:
        corpus.generate_sentence = with_definitions(args.definitions)
    try:
        result = run_pretraining(PretrainConfig(out_dir=str(out), progress=False, threads=1, **overrides))
    finally:
        corpus.generate_sentence = original  # fine-tuning data comes from the real grammar
    return str(out), result.summary


def summarise(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """{budget: {method: {mean, std, n, trainable_parameters, trainable_share, wall_time_s}}}."""
    table: dict[str, dict[str, dict]] = {}
    for r in runs:
        table.setdefault(str(r["budget"]), {}).setdefault(r["method"], []).append(r)
    out = {}
    for budget, methods in table.items():
        out[budget] = {}
        for name, rs in methods.items():
            acc = [r["test_accuracy"] for r in rs]
            out[budget][name] = {"mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                                 "accuracies": acc, "trainable_parameters": rs[0]["trainable_parameters"],
                                 "trainable_share": rs[0]["trainable_share"],
                                 "wall_time_s": statistics.mean(r["wall_time_s"] for r in rs)}
    return out


def markdown(result: dict) -> str:
    budgets = list(result["summary"])
    head = "| method | trainable params (share) | " + " | ".join(f"{b} labels: test acc" for b in budgets) \
        + " | wall time / run |"
    lines = [head, "|" + "---|" * (len(budgets) + 3)]
    for name in METHODS:
        cells = [result["summary"][b].get(name) for b in budgets]
        if not any(cells):
            continue
        first = next(c for c in cells if c)
        accs = [f"{c['mean']:.1%} ± {c['std']:.1%}" if c else "—" for c in cells]
        wall = statistics.mean(c["wall_time_s"] for c in cells if c)
        lines.append(f"| {name} | {first['trainable_parameters']:,} ({first['trainable_share']:.2%}) | "
                     + " | ".join(accs) + f" | {wall:.1f} s |")
    probe, meta = result["probe"], result["machine"]
    notes = [
        "", f"Mean ± sample std over seeds {result['seeds']}; test set: {result['n_test']} held-out sentences "
            f"(chance 50%). Pretraining: {result['pretrained']} ({result['pretrain_wall_time_s']} s).",
        f"Probe before fine-tuning (pretrained vs random init): adjective polarity from input embeddings "
        f"{probe['pretrained']['embedding_polarity_accuracy']:.0%} vs "
        f"{probe['random']['embedding_polarity_accuracy']:.0%}; "
        f"MLM coordination (`ADJ and/but [MASK]`) {probe['pretrained']['coordination_accuracy']:.0%} vs "
        f"{probe['random']['coordination_accuracy']:.0%}.",
        f"Corpus: {result.get('adjectives_per_polarity', 32)} adjectives per polarity"
        + (" (a diagnostic variant, --adjectives; the real corpus has 32)"
           if result.get("adjectives_per_polarity", 32) != 32 else "")
        + (f"; pretraining corpus with {result['definitions']:.0%} `to be ADJ is a virtue|vice .` sentences "
           f"(--definitions, a diagnostic)." if result.get("definitions") else "."),
        f"Machine: {meta['cpus']} CPUs, {meta['workers']} worker(s) x 1 thread; load average {meta['load_before']} "
        f"before, {meta['load_after']} after; whole experiment {result['total_wall_time_s']:.0f} s.",
    ]
    return "\n".join(lines + notes) + "\n"


def write_results(result: dict, out: Path, budgets: list[int]) -> None:
    """out.json (everything), out.md (the table and the notes), out.png (accuracy by method per budget)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    method_accuracy({f"{b} labels": {m: v["accuracies"] for m, v in result["summary"][str(b)].items()}
                     for b in budgets}, title="built-in sentiment task: test accuracy by method",
                    path=out.with_suffix(".png"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/peft_experiment.py", description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default="", help="reuse this pretraining run dir instead of pretraining")
    parser.add_argument("--work-dir", default="runs/peft_experiment", help="where the pretraining run goes")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 256], help="labelled examples")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    parser.add_argument("--fast", action="store_true", help="tiny pretraining and few steps: a smoke test")
    parser.add_argument("--adjectives", type=int, default=0,
                        help="diagnostic: a corpus with only K adjectives per polarity (0: the real one, 32)")
    parser.add_argument("--definitions", type=float, default=0.0,
                        help="diagnostic: share of pretraining sentences `to be ADJ is a virtue|vice .` (0: none)")
    parser.add_argument("--out", default=str(RESULTS / "peft_experiment"), help="path stem for .json/.md/.png")
    args = parser.parse_args(argv)
    began, load_before = time.perf_counter(), os.getloadavg()
    torch.set_num_threads(1)
    shrink_lexicon(args.adjectives)
    if args.pretrained:
        pretrained, pre_summary = args.pretrained, json.loads((Path(args.pretrained) / "summary.json").read_text())
    else:
        pretrained, pre_summary = pretrain(args)
    from minitx.recipes.pretrain.fill_mask import load_pretrained
    mlm, tokenizer = load_pretrained(pretrained)
    torch.manual_seed(0)
    probe = {"pretrained": polarity_probe(mlm, tokenizer),
             "random": polarity_probe(BertForMaskedLM(mlm.config), tokenizer)}
    print("probe:", json.dumps(probe))
    extra = {"max_steps": 30, "eval_every": 10, "n_test": 200} if args.fast else {}
    jobs = [(m, b, s, pretrained, extra, args.adjectives)
            for b in args.budgets for m in args.methods for s in args.seeds]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = []
        for r in pool.map(one_run, jobs):
            runs.append(r)
            print(f"{r['budget']:>4} labels  {r['method']:<15} seed {r['seed']}  test {r['test_accuracy']:.3f}  "
                  f"({r['wall_time_s']:.1f} s)", flush=True)
    result = {"adjectives_per_polarity": len(POSITIVE_ADJECTIVES), "definitions": args.definitions,
              "pretrained": pretrained,
              "pretrain_wall_time_s": pre_summary.get("wall_time_s"),
              "pretrain_eval": pre_summary.get("eval"), "seeds": args.seeds, "budgets": args.budgets,
              "n_test": FinetuneConfig(**extra).n_test if extra else FinetuneConfig().n_test,
              "defaults": {k: v for k, v in vars(FinetuneConfig()).items()
                           if k in ("max_steps", "eval_every", "patience", "batch_size", "dropout", "use_pooler",
                                    "lora_targets", "adapter_bottleneck", "n_validation", "warmup_steps")},
              "probe": probe, "runs": runs, "summary": summarise(runs)}
    result["total_wall_time_s"] = round(time.perf_counter() - began, 1)
    result["machine"] = {"cpus": os.cpu_count(), "workers": args.workers, "platform": platform.platform(),
                         "torch": torch.__version__, "load_before": [round(x, 2) for x in load_before],
                         "load_after": [round(x, 2) for x in os.getloadavg()]}
    write_results(result, Path(args.out), args.budgets)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
