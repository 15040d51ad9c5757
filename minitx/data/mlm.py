"""Data for masked-language-model pretraining: masking, deterministic batches, probe sets, text streams.

The corpora themselves live in `minitx.data.synthetic` (the built-in language) and `minitx.data.text_files` (user
files). The masking rule and its equations are in docs/math/mlm.md; the data design in docs/data.md.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from minitx.data.synthetic import Sentence, kind_id
from minitx.functional import IGNORE_INDEX
from minitx.seeding import seed_for
from minitx.tokenizers.wordpiece import Encoding, SPECIAL_TOKENS, WordPieceTokenizer

__all__ = ["mask_tokens", "mlm_batch", "probe_batches", "stream_mlm_batches", "encode_example"]


def _word_groups(word_ids: torch.Tensor) -> torch.Tensor:
    """Number the words of each row 0, 1, 2, ... so that a pair's two segments never share a number.

    A new word starts wherever word_ids changes; positions with word id -1 (specials, padding) get -1.
    """
    starts = torch.ones_like(word_ids, dtype=torch.bool)
    starts[:, 1:] = word_ids[:, 1:] != word_ids[:, :-1]
    starts &= word_ids >= 0
    groups = torch.cumsum(starts.long(), dim=1) - 1  # (B, N): index of the word each token belongs to
    return torch.where(word_ids >= 0, groups, torch.full_like(groups, -1))


def _as_word_id_tensor(word_ids, shape: torch.Size) -> torch.Tensor:
    if isinstance(word_ids, torch.Tensor):
        out = word_ids.long()
    else:  # list of lists with None for specials
        out = torch.tensor([[-1 if w is None else w for w in row] for row in word_ids], dtype=torch.long)
    if out.shape != shape:
        raise ValueError(f"word_ids: expected shape {tuple(shape)} like input_ids, got {tuple(out.shape)}")
    return out


def mask_tokens(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, vocab_size: int, mask_token_id: int,
                mlm_probability: float = 0.15, generator: torch.Generator | None = None, word_ids=None,
                whole_word: bool = False, num_special_tokens: int = len(SPECIAL_TOKENS),
                pad_token_id: int | None = 0,
                special_ids: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption (mlm.2)-(mlm.3): select, then 80% [MASK] / 10% random / 10% unchanged.

    Each token that is not special (special_tokens_mask == 0) and not padding is selected independently with
    probability `mlm_probability` (mlm.2); with `whole_word`, each *word* is selected with that probability and
    all its pieces follow it. A selected token becomes [MASK] with probability 0.8, a token drawn uniformly from
    the non-special ids [num_special_tokens, vocab_size) with probability 0.1, and stays itself otherwise (mlm.3).
    `special_ids`, if given, names the special ids wherever they are (a Hugging Face vocabulary puts [PAD] at 0
    and [UNK], [CLS], [SEP], [MASK] at 100-103); random replacements are then drawn from all the other ids.
    Returns new tensors (inputs, labels); labels = the original id where selected, -100 elsewhere.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids: expected an integer tensor, got {type(input_ids).__name__}"
                        f"{'' if not isinstance(input_ids, torch.Tensor) else ' of ' + str(input_ids.dtype)}")
    if special_tokens_mask.shape != input_ids.shape:
        raise ValueError(f"special_tokens_mask: expected shape {tuple(input_ids.shape)}, "
                         f"got {tuple(special_tokens_mask.shape)}")
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability: expected a value in [0, 1], got {mlm_probability}")
    if not num_special_tokens < vocab_size:
        raise ValueError(f"vocab_size: expected > num_special_tokens ({num_special_tokens}), got {vocab_size}")
    candidates = ~special_tokens_mask.bool()
    if pad_token_id is not None:
        candidates &= input_ids != pad_token_id
    if whole_word:
        if word_ids is None:
            raise ValueError("word_ids: required when whole_word=True, got None")
        ids2d = input_ids.reshape(-1, input_ids.shape[-1])  # (..., N) -> (B', N)
        # (..., N) -> (B', N): word numbers per row, -1 on specials and padding
        groups = _word_groups(_as_word_id_tensor(word_ids, input_ids.shape).reshape(ids2d.shape))
        word_selected = torch.rand(ids2d.shape, generator=generator) < mlm_probability  # one draw per word slot
        selected = torch.gather(word_selected, 1, groups.clamp(min=0)) & (groups >= 0)
        selected = selected.reshape(input_ids.shape) & candidates  # (B', N) -> (..., N)
    else:
        selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & candidates
    action = torch.rand(input_ids.shape, generator=generator)
    if special_ids is None:
        random_ids = torch.randint(num_special_tokens, vocab_size, input_ids.shape, generator=generator,
                                   dtype=input_ids.dtype)
    else:
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[torch.as_tensor(list(special_ids), dtype=torch.long)] = False
        pool = allowed.nonzero().flatten().to(input_ids.dtype)  # the non-special ids, ascending
        random_ids = pool[torch.randint(len(pool), input_ids.shape, generator=generator)]
    inputs = input_ids.clone()
    inputs[selected & (action < 0.8)] = mask_token_id
    replace = selected & (action >= 0.8) & (action < 0.9)
    inputs[replace] = random_ids[replace]
    return inputs, _labels_at(selected, input_ids)


def _labels_at(selected: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The original ids where `selected`, IGNORE_INDEX elsewhere: only selected positions carry loss (mlm.1)."""
    return torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def encode_example(example: Sentence | str | Encoding, tokenizer: WordPieceTokenizer,
                   max_length: int | None = None) -> tuple[Encoding, list[int]]:
    """Encode a Sentence (by its words, so word_ids index Sentence.words) or a plain string; also return the
    determined-kind code of every token (0 = not determined, specials 0). An Encoding (a packed block of real
    text, minitx.data.text) is already encoded and is taken as it is."""
    if isinstance(example, Encoding):
        if max_length is not None and len(example) > max_length:
            raise ValueError(f"example: a packed block of {len(example)} tokens exceeds max_length={max_length}")
        return example, [0] * len(example)
    if isinstance(example, Sentence):
        enc = tokenizer.encode(example.words, max_length=max_length)
        kinds = [0 if w is None or w not in example.determined else kind_id(example.determined[w])
                 for w in enc.word_ids]
        return enc, kinds
    if isinstance(example, str):
        enc = tokenizer.encode(example, max_length=max_length)
        return enc, [0] * len(enc)
    raise TypeError(f"example: expected a Sentence or str, got {type(example).__name__}")


def _collate(pairs: Sequence[tuple[Encoding, list[int]]], tokenizer: WordPieceTokenizer) -> dict:
    batch = tokenizer.collate([enc for enc, _ in pairs])
    kinds = torch.zeros_like(batch["input_ids"])
    for i, (_, k) in enumerate(pairs):
        kinds[i, :len(k)] = torch.tensor(k, dtype=torch.long)
    batch["determined_kind"] = kinds
    return batch


def _shard_indices(n_examples: int, batch_size: int, step: int, seed: int, rank: int,
                   world_size: int) -> list[int]:
    """Indices of (seed, step, rank)'s batch: rank r owns examples r, r + W, r + 2W, ...; each epoch over the
    shard is a fresh permutation seeded by (seed, epoch), so position k of the stream is a pure function."""
    shard = list(range(rank, n_examples, world_size))
    if not shard:
        raise ValueError(f"examples: rank {rank} of {world_size} has no examples (only {n_examples} in all)")
    out, cache = [], {}
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(k, len(shard))
        if epoch not in cache:
            g = torch.Generator().manual_seed(seed_for(seed, epoch, 0xDA7A))
            cache[epoch] = torch.randperm(len(shard), generator=g).tolist()
        out.append(shard[cache[epoch][offset]])
    return out


def _check_rank(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")


def _mask_batch(batch: dict, tokenizer: WordPieceTokenizer, seed: int, step: int, rank: int,
                mlm_probability: float, whole_word: bool = False) -> dict[str, torch.Tensor]:
    """Corrupt a collated batch in place with the generator of (seed, step, rank): batches are pure functions."""
    g = torch.Generator().manual_seed(seed_for(seed, step, rank))
    batch["input_ids"], batch["labels"] = mask_tokens(
        batch["input_ids"], batch["special_tokens_mask"], tokenizer.vocab_size, tokenizer.mask_id,
        mlm_probability, generator=g, word_ids=batch["word_ids"], whole_word=whole_word,
        pad_token_id=tokenizer.pad_id, **_special_arguments(tokenizer))
    return batch


def _special_arguments(tokenizer: WordPieceTokenizer) -> dict:
    """A trained vocabulary has its specials at 0..4 (the original draw, unchanged); any other names them."""
    n = len(SPECIAL_TOKENS)
    return {"num_special_tokens": n} if tokenizer.special_ids == list(range(n)) else {
        "special_ids": tokenizer.special_ids}


def mlm_batch(examples: Sequence[Sentence | str | Encoding], tokenizer: WordPieceTokenizer, batch_size: int, step: int,
              seed: int, rank: int = 0, world_size: int = 1, max_length: int = 128, mlm_probability: float = 0.15,
              whole_word: bool = False) -> dict[str, torch.Tensor]:
    """The MLM batch of (seed, step, rank): a pure function of them, so a resumed run is exact and ranks read
    disjoint shards. Keys (all (B, N)): input_ids (masked), attention_mask, token_type_ids, labels (-100 where
    not predicted), determined_kind (0 = not determined, else kind_id), special_tokens_mask, word_ids."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected a non-negative int, got {step!r}")
    _check_rank(rank, world_size)
    idx = _shard_indices(len(examples), batch_size, step, seed, rank, world_size)
    batch = _collate([encode_example(examples[i], tokenizer, max_length) for i in idx], tokenizer)
    return _mask_batch(batch, tokenizer, seed, step, rank, mlm_probability, whole_word)


def probe_batches(sentences: Iterable[Sentence], tokenizer: WordPieceTokenizer, batch_size: int = 64,
                  max_length: int = 128) -> Iterator[dict[str, torch.Tensor]]:
    """Clean probes of the determined positions: one copy of a sentence per determined word, with exactly that
    word's tokens replaced by [MASK]. labels hold the original ids there (-100 elsewhere); determined_kind marks
    the probed tokens only. No randomness, so every run probes the same set."""
    probes: list[tuple[Encoding, list[int]]] = []
    for sentence in sentences:
        enc, _ = encode_example(sentence, tokenizer, max_length)
        for word, kind in sorted(sentence.determined.items()):
            positions = [i for i, w in enumerate(enc.word_ids) if w == word]
            if not positions:  # truncated away
                continue
            kinds = [kind_id(kind) if i in positions else 0 for i in range(len(enc))]
            probes.append((enc, kinds))
            if len(probes) == batch_size:
                yield _probe_collate(probes, tokenizer)
                probes = []
    if probes:
        yield _probe_collate(probes, tokenizer)


def _probe_collate(probes, tokenizer: WordPieceTokenizer) -> dict[str, torch.Tensor]:
    batch = _collate(probes, tokenizer)
    probed = batch["determined_kind"] > 0
    batch["labels"] = _labels_at(probed, batch["input_ids"])
    batch["input_ids"] = batch["input_ids"].masked_fill(probed, tokenizer.mask_id)
    return batch


def stream_mlm_batches(lines: Iterable[str], tokenizer: WordPieceTokenizer, batch_size: int, seed: int,
                       rank: int = 0, world_size: int = 1, max_length: int = 128, start_step: int = 0,
                       mlm_probability: float = 0.15) -> Iterator[dict[str, torch.Tensor]]:
    """MLM batches from a (possibly huge, lazily read) stream of lines, e.g. iter_text_files(paths).

    Line i goes to rank i % world_size; a rank's batch `step` holds its lines [step*B, (step+1)*B) and is
    masked with the generator of (seed, step, rank), so batches equal mlm_batch's determinism without ever
    holding the corpus: resuming at `start_step` skips the lines already consumed (the order is the file's).
    A last batch shorter than `batch_size` is dropped, so every rank's batches all hold B rows.
    """
    _check_rank(rank, world_size)
    step, pending = 0, []
    for i, line in enumerate(lines):
        if i % world_size != rank:
            continue
        if step >= start_step:
            pending.append(encode_example(line, tokenizer, max_length))
        else:
            pending.append(None)  # skipped cheaply: not tokenized
        if len(pending) == batch_size:
            if step >= start_step:
                yield _mask_batch(_collate(pending, tokenizer), tokenizer, seed, step, rank, mlm_probability)
            step, pending = step + 1, []
