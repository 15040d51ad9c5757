"""minitx vs Hugging Face BERT, trained side by side on real text: `python benchmarks/mlm_real_text.py`.

One tokenizer (minitx's, trained on tiny Shakespeare's training split); one initial model, built by minitx and
copied into `transformers.BertForMaskedLM` with `minitx.interop.to_hf_bert`; the same packed, masked batches
(minitx.recipes.pretrain's --corpus shakespeare stream); the same torch AdamW with minitx's parameter groups (opt.4)
and schedule (opt.5-opt.6), the same gradient clipping; no dropout, so the two runs differ only by
floating-point rounding. Both are trained in the same plain PyTorch loop, interleaved step by step so machine
load hits both alike; both are evaluated on the same held-out masked blocks every --eval-every steps, beside
the unigram baseline (training-token frequencies, no context). Writes results/mlm_real_text.{json,md,png}.
Transformers is imported here, lazily, by to_hf_bert: a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from minitx.functional import IGNORE_INDEX
from minitx.interop.bert import to_hf_bert
from minitx.models.bert import BertForMaskedLM
from minitx.plots import plt, save_figure
from minitx.recipes.pretrain.config import PretrainConfig, model_config
from minitx.recipes.pretrain.data import build_corpus
from minitx.recipes.pretrain.evaluate import _eval_batches
from minitx.tokenizers.wordpiece import WordPieceTokenizer
from minitx.training.optim import lr_at, parameter_groups

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/mlm_real_text.py", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=128)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--eval-blocks", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "mlm_real_text"), help="path stem for .json/.md/.png")
    return p.parse_args(argv)


def setup(args: argparse.Namespace):
    cfg = PretrainConfig(corpus="shakespeare", vocab_size=args.vocab_size, d_model=args.d_model,
                         n_layers=args.n_layers, n_heads=args.n_heads, d_ff=args.d_ff, max_length=args.max_length,
                         batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                         max_steps=args.steps, eval_sentences=args.eval_blocks, mlm_probability=0.15,
                         init_std=0.02, dropout=0.0, seed=args.seed, out_dir="", progress=False)
    corpus = build_corpus(cfg)
    tokenizer = WordPieceTokenizer.train(corpus.tokenizer_texts(), cfg.vocab_size)
    batch_fn = corpus.batch_fn(tokenizer)
    torch.manual_seed(cfg.seed)
    ours = BertForMaskedLM(model_config(cfg, tokenizer))
    theirs = to_hf_bert(ours)  # the same initial weights
    theirs.config.hidden_dropout_prob = theirs.config.attention_probs_dropout_prob = 0.0
    return cfg, corpus, tokenizer, batch_fn, ours, theirs


def logits_of(model, batch: dict) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"])
    return out.logits


@torch.no_grad()
def evaluate(model, eval_batches: list[dict]) -> dict[str, float]:
    model.eval()
    nll = correct = count = 0.0
    for batch in eval_batches:
        logits, labels = logits_of(model, batch), batch["labels"]
        sel = labels != IGNORE_INDEX
        nll += float(torch.nn.functional.cross_entropy(logits[sel].float(), labels[sel], reduction="sum"))
        correct += float((logits[sel].argmax(-1) == labels[sel]).sum())
        count += float(sel.sum())
    model.train()
    return {"loss": nll / count, "masked_accuracy": correct / count}


def unigram(corpus, eval_batches: list[dict]) -> dict[str, float]:
    labels = torch.cat([b["labels"][b["labels"] != IGNORE_INDEX] for b in eval_batches])
    return {"loss": float(-corpus.unigram[labels].mean()),
            "masked_accuracy": float((labels == corpus.unigram.argmax()).float().mean())}


def train_step(model, optimizer, batch: dict, lr: float, clip: float) -> tuple[float, float]:
    """One AdamW step at rate `lr`; returns (loss, seconds)."""
    start = time.perf_counter()
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = logits_of(model, batch)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                                             ignore_index=IGNORE_INDEX)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return float(loss.detach()), time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    cfg, corpus, tokenizer, batch_fn, ours, theirs = setup(args)
    eval_batches = list(_eval_batches(corpus, tokenizer, cfg))  # fixed masks: every eval sees the same
    models = {"minitx": ours, "hf": theirs}
    optimizers = {k: torch.optim.AdamW(parameter_groups(m, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                       eps=cfg.eps) for k, m in models.items()}
    curves = {k: [] for k in models}
    seconds = {k: 0.0 for k in models}
    tokens = 0
    for step in range(0, cfg.max_steps + 1):
        if step % args.eval_every == 0 or step == cfg.max_steps:
            for k, m in models.items():
                curves[k].append({"step": step, **evaluate(m, eval_batches)})
            print(f"step {step:4d}  " + "  ".join(f"{k} eval loss {curves[k][-1]['loss']:.4f}" for k in models),
                  flush=True)
        if step == cfg.max_steps:
            break
        batch = batch_fn(step + 1, 0, 0, 1)
        tokens += int(batch["attention_mask"].sum())
        lr = lr_at(step + 1, cfg)
        for k in (("minitx", "hf") if step % 2 == 0 else ("hf", "minitx")):  # alternate who goes first
            _, dt = train_step(models[k], optimizers[k], batch, lr, cfg.grad_clip)
            seconds[k] += dt
    final = {k: curves[k][-1] for k in models}
    return {
        "benchmark": "mlm_real_text", "corpus": "shakespeare", "vocab_size": tokenizer.vocab_size,
        "model": {k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads", "d_ff", "max_length")},
        "parameters": sum(p.numel() for p in ours.parameters()),
        "train": {"steps": cfg.max_steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "warmup_steps":
                  cfg.warmup_steps, "schedule": cfg.schedule, "weight_decay": cfg.weight_decay,
                  "mlm_probability": cfg.mlm_probability, "tokens": tokens},
        "eval_blocks": len(corpus.eval_examples), "curves": curves,
        "tokens_per_s": {k: tokens / seconds[k] for k in models},
        "final": final, "unigram": unigram(corpus, eval_batches),
        "relative_difference": abs(final["minitx"]["loss"] - final["hf"]["loss"]) / final["hf"]["loss"],
        "env": {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
                "machine": platform.machine(), "note": "shared, busy 2-core machine"},
    }


def table(doc: dict) -> str:
    rows = ["| | eval loss | perplexity | masked accuracy | train tokens/s |", "|---|---|---|---|---|"]
    for k, name in (("minitx", "minitx `BertForMaskedLM`"), ("hf", "transformers `BertForMaskedLM`")):
        f = doc["final"][k]
        rows.append(f"| {name} | {f['loss']:.4f} | {math.exp(f['loss']):.1f} | {f['masked_accuracy']:.2%} | "
                    f"{doc['tokens_per_s'][k]:,.0f} |")
    u = doc["unigram"]
    rows.append(f"| unigram baseline (no context) | {u['loss']:.4f} | {math.exp(u['loss']):.1f} | "
                f"{u['masked_accuracy']:.2%} | |")
    worst = max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(doc["curves"]["minitx"], doc["curves"]["hf"]))
    return "\n".join(rows) + (f"\n\nFinal eval losses differ by {doc['relative_difference']:.2e} (relative); "
                               f"the largest difference at any eval is {worst:.2e}.\n")


def plot(doc: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k, style in (("minitx", "-o"), ("hf", "--x")):
        c = doc["curves"][k]
        ax.plot([r["step"] for r in c], [r["loss"] for r in c], style, label=k, ms=4)
    ax.axhline(doc["unigram"]["loss"], color="grey", ls=":", label="unigram baseline")
    ax.set(xlabel="step", ylabel="held-out MLM loss", title="tiny Shakespeare: minitx vs transformers")
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str]) -> int:
    args = parse(argv)
    doc = run(args)
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table(doc))
    plot(doc, stem.with_suffix(".png"))
    print(table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
