"""Masked-language-model pretraining: the recipe behind `minitx pretrain`, on top of `minitx.train`.

The recipe trains (or loads) a WordPiece tokenizer, builds a BertForMaskedLM, and hands `train()` three pure
pieces: MLM batches that are a function of (seed, step, rank) only, a loss with masked accuracy (mlm.1), and an
evaluation on held-out text. On the built-in synthetic language the evaluation also probes every *determined*
position (a word its context fixes: subject-verb agreement, a closing bracket, the end of a fixed phrase) masked
alone, and reports accuracy per kind against the chance baseline of a model that ignores the cue.
Guide: docs/pretraining.md. Batches and probes: minitx.data. Evaluation: minitx.mlm_eval. Metrics and equations:
docs/math/mlm.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minitx import distributed as D
from minitx.checkpoint import CheckpointError, read_checkpoint
from minitx.compile import apply_compile
from minitx.data import IGNORE_INDEX
from minitx.fill_mask import fill_mask, fill_mask_main, load_pretrained  # noqa: F401 (re-exported)
from minitx.mlm_eval import evaluate, probe_accuracy  # noqa: F401 (probe_accuracy re-exported)
from minitx.model import BertConfig, BertForMaskedLM, labelled_logits
from minitx.plots import loss_curve, plt
from minitx.pretrain_data import SyntheticCorpus, TextCorpus, build_corpus  # noqa: F401 (re-exported)
from minitx.tokenizer import WordPieceTokenizer
from minitx.train import TrainConfig, TrainResult, _f, begin_recipe, train

__all__ = ["PretrainConfig", "PretrainResult", "run_pretraining", "load_pretrained", "fill_mask",
           "fill_mask_main", "masked_lm_loss"]


# Defaults that depend on the corpus: (synthetic language, real text). Real text (--corpus shakespeare, --text)
# wants longer sequences, a larger vocabulary, BERT's masking rate. A field left unset (None) takes the value for
# its corpus; one given explicitly is kept. Chosen on tiny Shakespeare: docs/results/pretrain_shakespeare.md.
REAL_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": (1000, 1000), "max_length": (48, 64), "mlm_probability": (0.4, 0.3), "batch_size": (64, 64),
    "max_steps": (600, 1800), "eval_every": (150, 300), "warmup_steps": (60, 80),
}


@dataclass
class PretrainConfig(TrainConfig):
    """Every knob of `minitx pretrain`, flat; the TrainConfig fields come first (lr, max_steps, seed, ...).
    The fields of REAL_TEXT_DEFAULTS left unset (None) take their corpus's default."""
    # Defaults retuned for MLM on the built-in language: ~2 minutes on 2 CPU cores (docs/results/pretrain_default.md).
    lr: float = _f(2e-3, "peak learning rate η, reached at the end of warmup (opt.5)")
    warmup_steps: int | None = _f(None, "steps of linear warmup from 0 to lr (opt.5) (unset: 60; real text 80)")
    max_steps: int | None = _f(None, "optimizer steps in the whole run (unset: 600; real text 1800)")
    log_every: int = _f(20, "write a train record to metrics.jsonl every this many steps")
    eval_every: int | None = _f(None, "evaluate on the held-out split every this many steps (0: only at the end; "
                                "unset: 150; real text 300)")
    out_dir: str = _f("runs/pretrain", "run directory: checkpoint, tokenizer, metrics, figures, summary")
    # Corpus
    corpus: str = _f("synthetic", "built-in corpus: the synthetic language (probed per kind of dependency) or tiny "
                     "Shakespeare (real English, shipped with the package); --text replaces it. Some defaults "
                     "depend on it: --vocab-size, --max-length, --mlm-probability, --batch-size, --max-steps, "
                     "--eval-every, --warmup-steps",
                     choices=("synthetic", "shakespeare"))
    text: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "UTF-8 text files, read lazily, line by line (default: the built-in --corpus)"})
    eval_text: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "held-out UTF-8 text files for evaluation (default: a held-out split of the training text: "
                "5 percent of its 16-line passages, chosen by a hash)"})
    packing: bool = _f(True, "real text: concatenate lines and cut them into full max-length blocks (as Hugging "
                       "Face's group_texts); --no-packing makes one example per line, truncated at --max-length")
    shuffle_buffer: int = _f(10000, "real text: examples held in the seeded shuffle buffer (1: file order)")
    train_sentences: int = _f(20000, "synthetic sentences in the training set (ignored with real text)")
    eval_sentences: int = _f(500, "held-out sentences (or blocks / lines of real text) for evaluation")
    tokenizer_lines: int = _f(100000, "lines of real text the tokenizer is trained on (the synthetic set: all)")
    # Tokenizer
    vocab_size: int | None = _f(None, "WordPiece vocabulary size (at most; training stops once every word is "
                                "whole; unset: 1000; real text 1000)")
    min_frequency: int = _f(2, "a pair of pieces seen fewer times is never merged into a new piece")
    lowercase: bool = _f(True, "lowercase and strip accents (BERT uncased); --no-lowercase keeps case (cased)")
    tokenizer: str = _f("", "load this tokenizer.json instead of training one")
    # Model
    d_model: int = _f(128, "model width C")
    n_layers: int = _f(2, "encoder blocks")
    n_heads: int = _f(8, "attention heads H (d_model must be divisible by it)")
    d_ff: int = _f(256, "feed-forward width")
    init_std: float = _f(0.05, "std of the normal initial weights; BERT uses 0.02, but a larger start keeps "
                          "tokens seen in identical contexts (the bracket openers) apart, so they are told apart sooner")
    norm_first: bool = _f(False, "pre-LN blocks (LayerNorm before each sublayer) instead of BERT's post-LN")
    dropout: float = _f(0.0, "dropout on embeddings, residual branches and attention weights")
    attention_backend: str = _f("sdpa", "attention backend", choices=("math", "sdpa", "flash"))
    # Batches
    batch_size: int | None = _f(None, "sequences per micro-batch, per rank (unset: 64; real text 64)")
    max_length: int | None = _f(None, "tokens per sequence, [CLS] and [SEP] included (longer ones are truncated; "
                                "unset: 48; real text 64)")
    mlm_probability: float | None = _f(None, "share of tokens (or words) selected for prediction (mlm.2); BERT uses "
                                       "0.15 (unset: 0.4, which scores ~2.7x as many positions per step on the "
                                       "small synthetic corpus; real text 0.3)")
    whole_word: bool = _f(False, "select whole words, all their WordPiece pieces together (mlm.4)")
    threads: int = _f(1, "torch CPU threads per process (0: torch's default); one is fastest for a model this "
                          "small when anything else runs on a 2-core machine")
    compile: bool = _f(False, "torch.compile the hand-written kernel bodies (minitx.compile; pays compile time first)")

    def __post_init__(self) -> None:
        real = bool(self.text) or self.corpus != "synthetic"
        for name, values in REAL_TEXT_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, values[real])
        super().__post_init__()
        positive = ("train_sentences", "tokenizer_lines", "d_model", "n_layers", "n_heads", "d_ff", "batch_size")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        if self.eval_sentences < 0 or self.threads < 0:
            raise ValueError(f"eval_sentences, threads: expected >= 0, got {self.eval_sentences}, {self.threads}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model: expected a multiple of n_heads={self.n_heads}, got {self.d_model}")
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability: expected a value in (0, 1], got {self.mlm_probability}")
        if not self.init_std > 0:
            raise ValueError(f"init_std: expected a finite number > 0, got {self.init_std!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if self.max_length < 4:
            raise ValueError(f"max_length: expected an int >= 4 ([CLS], [SEP] and some text), got {self.max_length}")
        if self.vocab_size <= 5:
            raise ValueError(f"vocab_size: expected an int > 5 (the special tokens), got {self.vocab_size}")
        self._check_corpus()

    def _check_corpus(self) -> None:
        if self.corpus not in ("synthetic", "shakespeare"):
            raise ValueError(f"corpus: expected 'synthetic' or 'shakespeare', got {self.corpus!r}")
        for name in ("shuffle_buffer", "min_frequency"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        for name in ("text", "eval_text"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else list(value))
            for path in getattr(self, name):
                if Path(path).is_dir():
                    raise ValueError(f"{name}: expected UTF-8 text files, got the directory {str(path)!r}")
                if not Path(path).is_file():
                    raise ValueError(f"{name}: expected existing UTF-8 text files, got {str(path)!r} (no such file)")
        if self.text and self.corpus != "synthetic":
            raise ValueError(f"text: expected either --text files or --corpus {self.corpus}, got both")
        if self.eval_text and not (self.text or self.corpus != "synthetic"):
            raise ValueError("eval_text: expected with real text (--text or --corpus shakespeare); the synthetic "
                             "language has its own held-out split")
        if self.tokenizer and Path(self.tokenizer).is_dir():
            raise ValueError(f"tokenizer: expected a tokenizer.json file, got the directory {self.tokenizer!r}")
        if self.tokenizer and not Path(self.tokenizer).is_file():
            raise ValueError(f"tokenizer: expected an existing tokenizer.json, got {self.tokenizer!r} (no such file)")

    @property
    def real_text(self) -> bool:
        """Training on real text (--text files or a built-in real corpus), not the synthetic language."""
        return bool(self.text) or self.corpus != "synthetic"


@dataclass
class PretrainResult:
    summary: dict[str, Any]             # what summary.json holds
    model: BertForMaskedLM              # the trained model (bare, on the CPU or the run's device)
    tokenizer: WordPieceTokenizer
    train: TrainResult                  # the loop's own result (history of every record, paths)


def model_config(config: PretrainConfig, tokenizer: WordPieceTokenizer) -> BertConfig:
    return BertConfig(vocab_size=tokenizer.vocab_size, d_model=config.d_model, n_layers=config.n_layers,
                      n_heads=config.n_heads, d_ff=config.d_ff, max_position=config.max_length,
                      dropout=config.dropout, attention_dropout=config.dropout, norm_first=config.norm_first,
                      initializer_range=config.init_std,
                      attention_backend=config.attention_backend, pad_token_id=tokenizer.pad_id)


def _tokenizer_state(tok: WordPieceTokenizer) -> dict[str, Any]:
    return {"vocab": list(tok.vocab), "lowercase": tok.lowercase,
            "max_input_chars_per_word": tok.max_input_chars_per_word}


# ----------------------------------------------------------------------------------------------- loss
def masked_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """(mlm.1) on the batch, plus the share of selected tokens predicted right and exp(loss) (perplexity)."""
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], labels=batch["labels"])
    selected = batch["labels"] != IGNORE_INDEX
    correct = labelled_logits(out, batch["labels"]).detach().argmax(-1) == batch["labels"][selected]  # (K,)
    accuracy = correct.sum() / selected.sum().clamp(min=1)
    # A batch with nothing selected (likely at a small mlm_probability and batch size) has a mean over zero
    # targets, NaN: it contributes zero loss and zero gradient instead.
    loss = out.loss if bool(selected.any()) else out.logits.sum() * 0.0
    return loss, {"masked_accuracy": accuracy, "perplexity": torch.exp(loss.detach())}


def run_pretraining(config: PretrainConfig) -> PretrainResult:
    """Train a tokenizer and a BertForMaskedLM as `config` says; write the run directory (rank 0 only)."""
    began = begin_recipe(config, PretrainConfig)
    apply_compile(config.compile)
    main = D.world_info().rank == 0
    out = Path(config.out_dir) if config.out_dir else None
    corpus = build_corpus(config)
    tokenizer = _get_tokenizer(config, corpus, out)
    bert_config = model_config(config, tokenizer)
    torch.manual_seed(config.seed)  # the initial weights: the same on every rank (DDP also broadcasts rank 0's)
    model = BertForMaskedLM(bert_config)
    if main and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out / "tokenizer.json")
        (out / "model_config.json").write_text(json.dumps(bert_config.to_dict(), indent=2) + "\n")
    batch_fn = corpus.batch_fn(tokenizer)
    extra = {"model_config": bert_config.to_dict(), "tokenizer": _tokenizer_state(tokenizer)}
    result = train(model, batch_fn, masked_lm_loss, config,
                   eval_fn=lambda m: evaluate(m, corpus, tokenizer, config), extra_state=extra)
    summary = _summary(config, result, model, tokenizer, time.perf_counter() - began)
    if main:
        if out is not None:
            keys = ("loss", "masked_accuracy") + (("probe_accuracy",) if corpus.probe_sentences else ())
            plt.close(loss_curve(result.history, keys=keys, title="MLM pretraining", path=out / "loss_curve.png"))
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary))
    return PretrainResult(summary, model, tokenizer, result)


def _get_tokenizer(config: PretrainConfig, corpus: Any, out: Path | None) -> WordPieceTokenizer:
    """--tokenizer if given; on resume, the run's own tokenizer.json; else train one (deterministic, so every
    DDP rank trains the same vocabulary without talking to the others)."""
    if config.tokenizer:
        return WordPieceTokenizer.load(config.tokenizer)
    if config.resume and out is not None and (out / "checkpoint.pt").is_file():
        # The checkpoint carries the tokenizer: a damaged tokenizer.json beside it does not block the resume
        # (it is written again below). A damaged checkpoint is reported by the loop's own load.
        try:
            state = read_checkpoint(out / "checkpoint.pt")["extra_state"]["tokenizer"]
            return WordPieceTokenizer(state["vocab"], state["lowercase"], state["max_input_chars_per_word"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            pass
    if config.resume and out is not None and (out / "tokenizer.json").is_file():
        return WordPieceTokenizer.load(out / "tokenizer.json")
    return WordPieceTokenizer.train(corpus.tokenizer_texts(), config.vocab_size, config.min_frequency,
                                    config.lowercase)


def _summary(config: PretrainConfig, result: TrainResult, model: BertForMaskedLM, tokenizer: WordPieceTokenizer,
             wall_s: float) -> dict[str, Any]:
    ev = result.eval_metrics
    kinds = sorted(k[len("probe_accuracy_"):] for k in ev if k.startswith("probe_accuracy_"))
    return {
        "steps": result.step,
        "wall_time_s": round(wall_s, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": tokenizer.vocab_size,
        "world_size": D.world_info().world_size,
        "corpus": "text files" if config.text else config.corpus,
        "out_dir": config.out_dir or None,
        "train": {k: v for k, v in result.metrics.items() if k not in ("step", "split")},
        "eval": {k: v for k, v in ev.items() if k in ("loss", "perplexity", "masked_accuracy", "unigram_loss",
                                                      "unigram_accuracy", "accuracy_at_mask",
                                                      "unigram_accuracy_at_mask")},
        "determined": {"accuracy": ev.get("probe_accuracy"), "chance": ev.get("chance"),
                       "per_kind": {k: {"accuracy": ev[f"probe_accuracy_{k}"], "chance": ev[f"chance_{k}"],
                                        "probes": int(ev[f"probes_{k}"])} for k in kinds}} if kinds else None,
        "config": dataclasses.asdict(config),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The final table `minitx pretrain` prints."""
    ev, tr = summary["eval"], summary["train"]
    rows = [("steps", f"{summary['steps']}"), ("wall time", f"{summary['wall_time_s']:.1f} s"),
            ("parameters", f"{summary['parameters']:,}"), ("train loss", f"{tr.get('loss', float('nan')):.4f}")]
    if ev:
        rows += [("eval loss", f"{ev['loss']:.4f}"), ("eval perplexity", f"{ev['perplexity']:.3f}"),
                 ("eval masked accuracy", f"{ev['masked_accuracy']:.2%}")]
        if "unigram_loss" in ev:  # real text: the context-free baseline beside the model
            rows += [("unigram baseline", f"loss {ev['unigram_loss']:.4f}, accuracy {ev['unigram_accuracy']:.2%}")]
        if "accuracy_at_mask" in ev:
            rows += [("accuracy at [MASK]", f"{ev['accuracy_at_mask']:.2%}  (unigram "
                                            f"{ev['unigram_accuracy_at_mask']:.2%})")]
    det = summary.get("determined")
    if det:
        for kind, v in det["per_kind"].items():
            rows.append((f"determined: {kind}", f"{v['accuracy']:.2%}  (chance {v['chance']:.2%}, "
                                                f"{v['probes']} probes)"))
        rows.append(("determined: all", f"{det['accuracy']:.2%}  (chance {det['chance']:.2%})"))
    if summary.get("out_dir"):
        rows.append(("run directory", f"{summary['out_dir']}  (checkpoint, metrics.jsonl, summary.json, "
                                      f"loss_curve.png)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(["MLM pretraining summary", "-" * (width + 30)] + [f"{k:<{width}}  {v}" for k, v in rows])
