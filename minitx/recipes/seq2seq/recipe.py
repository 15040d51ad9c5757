"""Sequence-to-sequence training: the recipe behind `minitx train-seq2seq`, on top of `minitx.training.loop`.

The original Transformer (minitx.models.transformer, post-LN, sinusoidal positions, tied embeddings) trained
with teacher forcing (tf.6), label-smoothed cross-entropy (ls.1) and the paper's warmup-then-inverse-square-root
learning rate (tf.8), on the built-in dates task (minitx.data.dates) or the user's parallel text (two files or
TSV, one character vocabulary for both sides). Batches are a pure function of (seed, step, micro-step, rank),
so a resumed run continues exactly. At the end the held-out pairs are decoded greedily and with beam search
(num_beams = eval_beams) and scored by exact match and corpus BLEU; the cross-attention maps of a few of them
are drawn. Results: docs/results/seq2seq.md.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from minitx.config import option
from minitx.data.dates import date_pairs
from minitx.generation.generate import generate
from minitx.models.transformer import Transformer, TransformerConfig
from minitx.recipes.seq2seq.data import BOS, EOS, PAD, CharVocab, encode_sources, read_parallel, seq2seq_batch
from minitx.recipes.seq2seq.figures import cross_attention_figure
from minitx.recipes.seq2seq.metrics import corpus_bleu, exact_match
from minitx.seeding import seed_for
from minitx.training import distributed as D
from minitx.training.config import TrainConfig
from minitx.training.loop import TrainResult, begin_recipe, train

__all__ = ["Seq2SeqConfig", "Seq2SeqResult", "run_seq2seq", "load_pairs", "evaluate_translations"]


@dataclass
class Seq2SeqConfig(TrainConfig):
    """Every knob of `minitx train-seq2seq`, flat; the TrainConfig fields first. Defaults: the dates task,
    a 2+2-layer width-64 Transformer, 1,500 steps of 64 pairs: about 2 CPU-minutes of compute."""
    lr: float = option(2e-3, "peak learning rate, reached at the end of warmup (tf.8)")
    weight_decay: float = option(0.01, "decoupled weight decay on matrices and embeddings (opt.2, opt.4)")
    betas: tuple[float, float] = option((0.9, 0.98), "AdamW β1 β2 (the paper's: 0.9, 0.98)")
    warmup_steps: int = option(150, "steps of linear warmup (opt.5)")
    max_steps: int = option(1500, "optimizer steps in the whole run")
    schedule: str = option("noam", "after warmup: noam (the paper's, tf.8), linear, cosine or constant",
                           choices=("noam", "linear", "cosine", "constant"))
    log_every: int = option(50, "write a train record to metrics.jsonl every this many steps")
    out_dir: str = option("runs/seq2seq", "run directory: checkpoint, vocabulary, metrics, figures, summary")
    # Data
    task: str = option("dates", "the built-in dates task (minitx.data.dates), or 'text' for --tsv / "
                       "--source-file and --target-file", choices=("dates", "text"))
    tsv: str | None = option(None, "parallel text, one 'source<TAB>target' pair per line (with --task text)")
    source_file: str | None = option(None, "source sentences, one per line (with --target-file)")
    target_file: str | None = option(None, "target sentences, line-aligned with --source-file")
    n_train: int = option(20000, "training pairs generated (dates)")
    n_eval: int = option(500, "held-out pairs decoded at the end (dates: the test split; text: the last ones)")
    eval_fraction: float = option(0.1, "share of the user's pairs held out for evaluation (text)")
    max_length: int = option(48, "longest source or target in characters (+ </s>); longer ones are cut")
    # Model
    d_model: int = option(64, "model width C")
    n_encoder_layers: int = option(2, "encoder blocks")
    n_decoder_layers: int = option(2, "decoder blocks")
    n_heads: int = option(4, "attention heads H")
    d_ff: int = option(256, "feed-forward width")
    dropout: float = option(0.1, "dropout on embeddings and residual branches (the paper's 0.1)")
    norm_first: bool = option(False, "pre-LN blocks (default post-LN, as the paper)")
    label_smoothing: float = option(0.1, "label smoothing ε (ls.1; the paper's 0.1)")
    attention_backend: str = option("sdpa", "attention backend (math, sdpa, ...); sdpa is the fastest on a CPU")
    # Batches, evaluation
    batch_size: int = option(64, "pairs per micro-batch, per rank")
    eval_beams: int = option(4, "beams for the final beam-search evaluation (greedy is always run too)")
    threads: int = option(1, "torch CPU threads per process (0: torch's default); 1, as every command")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_train", "n_eval", "max_length", "d_model", "n_encoder_layers", "n_decoder_layers",
                     "n_heads", "d_ff", "batch_size", "eval_beams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction: expected a share in (0, 1), got {self.eval_fraction!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a number in [0, 1), got {self.label_smoothing!r}")
        if self.task == "text" and self.tsv is None and (self.source_file is None or self.target_file is None):
            raise ValueError("task: 'text' needs --tsv, or --source-file and --target-file")
        if self.task == "dates" and (self.tsv or self.source_file or self.target_file):
            raise ValueError("task: --tsv / --source-file / --target-file need --task text")


@dataclass
class Seq2SeqResult:
    summary: dict[str, Any]
    model: Transformer
    vocab: CharVocab
    train: TrainResult


def load_pairs(config: Seq2SeqConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train pairs, held-out pairs): the dates task's train and test splits, or the user's pairs shuffled
    with the seed and split by eval_fraction."""
    if config.task == "dates":
        return date_pairs(config.n_train, "train", config.seed), date_pairs(config.n_eval, "test", config.seed)
    pairs = read_parallel(config.source_file, config.target_file, config.tsv)
    if len(pairs) < 2:
        raise ValueError(f"parallel text: expected at least 2 pairs (train and held out), got {len(pairs)}")
    random.Random(config.seed).shuffle(pairs)
    n_eval = min(config.n_eval, max(1, int(len(pairs) * config.eval_fraction)))
    return pairs[n_eval:], pairs[:n_eval]


def model_config(config: Seq2SeqConfig, vocab: CharVocab) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=vocab.vocab_size, max_position=config.max_length + 1, d_model=config.d_model,
        n_encoder_layers=config.n_encoder_layers, n_decoder_layers=config.n_decoder_layers,
        n_heads=config.n_heads, d_ff=config.d_ff, dropout=config.dropout, norm_first=config.norm_first,
        attention_backend=config.attention_backend, pad_token_id=PAD, decoder_start_token_id=BOS,
        eos_token_id=EOS)


def seq2seq_loss(label_smoothing: float):
    def loss_fn(model: Transformer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        out = model(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"],
                    labels=batch["labels"], label_smoothing=label_smoothing)  # (tf.6), (ls.1)
        labelled = batch["labels"] != -100
        accuracy = (out.logits.detach().argmax(-1) == batch["labels"])[labelled].float().mean()
        return out.loss, {"token_accuracy": accuracy}
    return loss_fn


@torch.no_grad()
def translate_batch(model: Transformer, vocab: CharVocab, sources: Sequence[str], num_beams: int = 1,
                    max_length: int | None = None, batch_size: int = 64) -> list[str]:
    """Decode `sources` greedily (num_beams 1) or with beam search; returns the decoded target texts."""
    max_length = max_length or model.config.max_position - 1
    out = []
    for i in range(0, len(sources), batch_size):
        enc = encode_sources(vocab, list(sources[i:i + batch_size]), max_length)
        ids = generate(model, enc["input_ids"], max_length, temperature=0, attention_mask=enc["attention_mask"],
                       num_beams=num_beams)
        out += [vocab.decode(row[1:]) for row in ids]
    return out


def evaluate_translations(model: Transformer, vocab: CharVocab, pairs: Sequence[tuple[str, str]],
                          num_beams: int, max_length: int) -> dict[str, Any]:
    """Exact match and BLEU of greedy and beam-search decoding on `pairs`, with each one's CPU time."""
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    report: dict[str, Any] = {"n": len(pairs)}
    for name, beams in (("greedy", 1), (f"beam{num_beams}", num_beams)):
        began = time.thread_time()
        hyps = translate_batch(model, vocab, sources, beams, max_length)
        report[name] = {"exact_match": round(exact_match(hyps, references), 2),
                        "bleu": round(corpus_bleu(hyps, references), 2),
                        "decode_cpu_s": round(time.thread_time() - began, 1),
                        "examples": [[s, h, r] for s, h, r in zip(sources[:5], hyps[:5], references[:5])]}
    return report


def run_seq2seq(config: Seq2SeqConfig) -> Seq2SeqResult:
    """Build the data and vocabulary, train a Transformer as `config` says, evaluate, write the run directory."""
    began = begin_recipe(config, Seq2SeqConfig)
    cpu_began = time.thread_time()
    main, out = D.world_info().rank == 0, (Path(config.out_dir) if config.out_dir else None)
    train_pairs, eval_pairs = load_pairs(config)
    vocab = CharVocab.train(s + t for s, t in train_pairs)
    t_config = model_config(config, vocab)
    torch.manual_seed(config.seed)
    model = Transformer(t_config)
    if main and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "model_config.json").write_text(json.dumps(t_config.to_dict(), indent=2) + "\n")
        (out / "vocab.json").write_text(json.dumps(vocab.state()) + "\n")
    fixed_eval = seq2seq_batch(eval_pairs[:256], vocab, config.max_length)
    loss_fn = seq2seq_loss(config.label_smoothing)

    def batch_fn(step: int, micro: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        rng = random.Random(seed_for(config.seed, step, micro, rank))
        return seq2seq_batch([train_pairs[rng.randrange(len(train_pairs))] for _ in range(config.batch_size)],
                             vocab, config.max_length)

    def eval_fn(m: Transformer) -> dict[str, float]:  # teacher-forced, cheap; generation runs at the end
        loss, metrics = loss_fn(m, fixed_eval)
        return {"loss": float(loss), "token_accuracy": float(metrics["token_accuracy"])}

    extra = {"model_config": t_config.to_dict(), "tokenizer": vocab.state()}
    result = train(model, batch_fn, loss_fn, config, eval_fn=eval_fn, extra_state=extra)
    train_cpu_s = time.thread_time() - cpu_began
    summary: dict[str, Any] = {"steps": result.step, "wall_time_s": round(time.perf_counter() - began, 1),
                               "train_cpu_s_main_thread": round(train_cpu_s, 1),
                               "parameters": sum(p.numel() for p in model.parameters()),
                               "vocab_size": vocab.vocab_size, "train_pairs": len(train_pairs),
                               "eval": {k: v for k, v in result.eval_metrics.items() if k not in ("step", "split")}}
    if main:
        model.eval()
        summary["held_out"] = evaluate_translations(model, vocab, eval_pairs, config.eval_beams, config.max_length)
        summary["wall_time_s"] = round(time.perf_counter() - began, 1)
        summary["config"] = dataclasses.asdict(config)
        if out is not None:
            cross_attention_figure(model, vocab, [s for s, _ in eval_pairs[:3]], out / "cross_attention.png")
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        held = summary["held_out"]
        print(json.dumps({"steps": result.step, "wall_time_s": summary["wall_time_s"],
                          **{k: {m: held[k][m] for m in ("exact_match", "bleu")} for k in held if k != "n"}}))
    return Seq2SeqResult(summary, model, vocab, result)
