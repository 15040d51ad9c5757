"""`PretrainConfig`: every knob of `minitx pretrain`, flat, one CLI flag per field, and the model it describes.

Its own module because the recipe's parts read it (the corpora in `data`, the evaluation in `evaluate`, the
recipe itself), and each of them sits below the recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minitx.attention.backends import available_backends
from minitx.config import option
from minitx.models.bert import BertConfig
from minitx.tokenizers.wordpiece import WordPieceTokenizer
from minitx.training.config import TrainConfig


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
    lr: float = option(2e-3, "peak learning rate η, reached at the end of warmup (opt.5)")
    warmup_steps: int | None = option(None, "steps of linear warmup from 0 to lr (opt.5) (unset: 60; real text 80)")
    max_steps: int | None = option(None, "optimizer steps in the whole run (unset: 600; real text 1800)")
    log_every: int = option(20, "write a train record to metrics.jsonl every this many steps")
    eval_every: int | None = option(None, "evaluate on the held-out split every this many steps (0: only at the end; "
                                "unset: 150; real text 300)")
    out_dir: str = option("runs/pretrain", "run directory: checkpoint, tokenizer, metrics, figures, summary")
    # Corpus
    corpus: str = option("synthetic", "built-in corpus: the synthetic language (probed per kind of dependency) or tiny "
                     "Shakespeare (real English, shipped with the package); --text replaces it. Some defaults "
                     "depend on it: --vocab-size, --max-length, --mlm-probability, --batch-size, --max-steps, "
                     "--eval-every, --warmup-steps",
                     choices=("synthetic", "shakespeare"))
    text: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "UTF-8 text files, read lazily, line by line (default: the built-in --corpus)"})
    eval_text: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "held-out UTF-8 text files for evaluation (default: a held-out split of the training text: "
                "5 percent of its 16-line passages, chosen by a hash)"})
    packing: bool = option(True, "real text: concatenate lines and cut them into full max-length blocks (as Hugging "
                       "Face's group_texts); --no-packing makes one example per line, truncated at --max-length")
    shuffle_buffer: int = option(10000, "real text: examples held in the seeded shuffle buffer (1: file order)")
    train_sentences: int = option(20000, "synthetic sentences in the training set (ignored with real text)")
    eval_sentences: int = option(500, "held-out sentences (or blocks / lines of real text) for evaluation")
    tokenizer_lines: int = option(100000, "lines of real text the tokenizer is trained on (the synthetic set: all)")
    # Tokenizer
    vocab_size: int | None = option(None, "WordPiece vocabulary size (at most; training stops once every word is "
                                "whole; unset: 1000; real text 1000)")
    min_frequency: int = option(2, "a pair of pieces seen fewer times is never merged into a new piece")
    lowercase: bool = option(True, "lowercase and strip accents (BERT uncased); --no-lowercase keeps case (cased)")
    tokenizer: str = option("", "load this tokenizer.json instead of training one")
    # Model
    d_model: int = option(128, "model width C")
    n_layers: int = option(2, "encoder blocks")
    n_heads: int = option(8, "attention heads H (d_model must be divisible by it)")
    d_ff: int = option(256, "feed-forward width")
    init_std: float = option(0.05, "std of the normal initial weights; BERT uses 0.02, but a larger start keeps "
                          "tokens seen in identical contexts (the bracket openers) apart, so they are told apart sooner")
    norm_first: bool = option(False, "pre-LN blocks (LayerNorm before each sublayer) instead of BERT's post-LN")
    dropout: float = option(0.0, "dropout on embeddings, residual branches and attention weights")
    attention_backend: str = option("sdpa", "attention backend (any registered one)", choices=available_backends)
    # Batches
    batch_size: int | None = option(None, "sequences per micro-batch, per rank (unset: 64; real text 64)")
    max_length: int | None = option(None, "tokens per sequence, [CLS] and [SEP] included (longer ones are truncated; "
                                "unset: 48; real text 64)")
    mlm_probability: float | None = option(None, "share of tokens (or words) selected for prediction (mlm.2); BERT uses "
                                       "0.15 (unset: 0.4, which scores ~2.7x as many positions per step on the "
                                       "small synthetic corpus; real text 0.3)")
    whole_word: bool = option(False, "select whole words, all their WordPiece pieces together (mlm.4)")
    threads: int = option(1, "torch CPU threads per process (0: torch's default); one is fastest for a model this "
                          "small when anything else runs on a 2-core machine")
    compile: bool = option(False, "torch.compile the hand-written kernel bodies (minitx.training.compile; pays "
                                  "compile time first)")

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


def model_config(config: PretrainConfig, tokenizer: WordPieceTokenizer) -> BertConfig:
    return BertConfig(vocab_size=tokenizer.vocab_size, d_model=config.d_model, n_layers=config.n_layers,
                      n_heads=config.n_heads, d_ff=config.d_ff, max_position=config.max_length,
                      dropout=config.dropout, attention_dropout=config.dropout, norm_first=config.norm_first,
                      initializer_range=config.init_std,
                      attention_backend=config.attention_backend, pad_token_id=tokenizer.pad_id,
                      sparse_prediction=True)  # the head at the labelled rows only (mlm.7): training's choice
