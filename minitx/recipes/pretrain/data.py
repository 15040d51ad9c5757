"""The corpora of `minitx pretrain`: the built-in synthetic language, and real text (--text files or a built-in
real corpus such as tiny Shakespeare), each as a held-out set plus a `batch_fn(tokenizer)` for minitx.training.loop.

Batches are pure functions of (seed, micro-batch index, rank), so a resumed run continues exactly.
Real text: minitx.data.text (split, packing, shuffling); guide docs/data.md.
"""

from __future__ import annotations

import itertools
import warnings
from typing import TYPE_CHECKING, Iterator

import torch

from minitx.data.corpora import iter_corpus_lines
from minitx.data.mlm import mlm_batch
from minitx.data.synthetic import SyntheticLanguage
from minitx.data.text import epochs, examples_stream, shuffled, split_lines
from minitx.data.text_files import iter_text_files
from minitx.recipes.pretrain.evaluate import unigram_log_probs
from minitx.seeding import seed_for
from minitx.tokenizers.wordpiece import WordPieceTokenizer

if TYPE_CHECKING:  # only for annotations: minitx.recipes.pretrain imports this module
    from minitx.recipes.pretrain.config import PretrainConfig

__all__ = ["SyntheticCorpus", "TextCorpus", "build_corpus"]


class SyntheticCorpus:
    """The built-in language: a fixed training set, held-out validation sentences with determined positions."""

    def __init__(self, config: PretrainConfig):
        lang = SyntheticLanguage(config.seed)
        self.config = config
        self.train_examples = lang.sentences(config.train_sentences, "train")
        self.eval_examples = lang.sentences(config.eval_sentences, "validation")
        self.probe_sentences = self.eval_examples

    def tokenizer_texts(self) -> list[str]:
        return [s.text for s in self.train_examples]

    def batch_fn(self, tokenizer: WordPieceTokenizer):
        cfg = self.config

        def batch(step: int, micro: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
            index = (step - 1) * cfg.grad_accum_steps + micro  # the micro-batch's place in the stream, from 0
            return mlm_batch(self.train_examples, tokenizer, cfg.batch_size, index, cfg.seed, rank, world_size,
                             cfg.max_length, cfg.mlm_probability, cfg.whole_word)
        return batch


class TextCorpus:
    """Real text (--text files or a built-in corpus), never held whole: packed into blocks (or one example per
    line), shuffled by a seeded buffer; held out: --eval-text, or whole passages chosen by a hash
    (minitx.data.text, docs/data.md)."""

    def __init__(self, config: PretrainConfig):
        self.config = config
        self.eval_examples: list = []  # filled by batch_fn: packing needs the tokenizer
        self.probe_sentences = []  # plain text marks no determined positions
        if next(self._train_lines(), None) is None:
            raise ValueError(f"text: expected at least one non-empty training line in {self._name()}, found none")

    def _name(self) -> str:
        return str(self.config.text) if self.config.text else f"the built-in corpus {self.config.corpus!r}"

    def _all_lines(self) -> Iterator[str]:
        cfg = self.config
        return iter_text_files(cfg.text) if cfg.text else iter_corpus_lines(cfg.corpus)

    def _train_lines(self) -> Iterator[str]:
        return self._all_lines() if self.config.eval_text else split_lines(self._all_lines(), "train")

    def _eval_lines(self) -> Iterator[str]:
        cfg = self.config
        return iter_text_files(cfg.eval_text) if cfg.eval_text else split_lines(self._all_lines(), "validation")

    def tokenizer_texts(self) -> Iterator[str]:
        return itertools.islice(self._train_lines(), self.config.tokenizer_lines)

    def rank_stream(self, rank: int, world_size: int, start: int,
                    tokenizer: WordPieceTokenizer | None = None) -> Iterator[list]:
        """Rank r's micro-batches from number `start` on: examples r, r + W, ... of the shuffled stream, epoch
        after epoch, each epoch shuffled with its own seed; skipping to `start` replays the stream from the top
        (cheap: words already seen are cached)."""
        cfg = self.config
        if cfg.packing and tokenizer is None:
            raise ValueError("tokenizer: required to pack text into blocks (packing=True), got None")
        stream = epochs(lambda: examples_stream(self._train_lines(), tokenizer, cfg.max_length, cfg.packing),
                        cfg.seed, cfg.shuffle_buffer)
        mine = itertools.islice(stream, rank, None, world_size)
        skipped = itertools.islice(mine, start * cfg.batch_size, None)
        while True:
            yield list(itertools.islice(skipped, cfg.batch_size))

    def batch_fn(self, tokenizer: WordPieceTokenizer):
        cfg, state = self.config, {"next": None, "stream": None}
        held_out = examples_stream(self._eval_lines(), tokenizer, cfg.max_length, cfg.packing)
        buffer = max(cfg.shuffle_buffer, 10 * cfg.eval_sentences)  # a shuffled sample, not the first blocks
        self.eval_examples = list(itertools.islice(shuffled(held_out, buffer, seed_for(cfg.seed, 0xE7A1)),
                                                   cfg.eval_sentences))
        self.unigram = unigram_log_probs(self.tokenizer_texts(), tokenizer)
        if cfg.eval_sentences and not self.eval_examples:
            warnings.warn(f"eval_text: no held-out {'blocks' if cfg.packing else 'lines'} in {self._name()}; "
                          f"evaluation will report nothing")

        def batch(step: int, micro: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
            index = (step - 1) * cfg.grad_accum_steps + micro
            if state["next"] != index:  # a resume or a jump: reopen the files at the right place
                state["stream"] = self.rank_stream(rank, world_size, index, tokenizer)
            state["next"] = index + 1
            examples = next(state["stream"])
            # One chunk, one epoch of mlm_batch: every example once; masks are a function of (seed, index, rank).
            return mlm_batch(examples, tokenizer, len(examples), index, seed_for(cfg.seed, rank), 0, 1,
                             cfg.max_length, cfg.mlm_probability, cfg.whole_word)
        return batch


def build_corpus(config: PretrainConfig) -> SyntheticCorpus | TextCorpus:
    """The corpus a config names: real text (--text, or --corpus shakespeare) or the synthetic language."""
    return TextCorpus(config) if config.real_text else SyntheticCorpus(config)
