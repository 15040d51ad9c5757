"""Held-out evaluation of an MLM: loss, perplexity (mlm.6) and masked accuracy, and the determined-position probe.

On the built-in synthetic language each *determined* word (one its context fixes: subject-verb agreement, a
closing bracket, the end of a fixed phrase) is masked alone and scored per kind against the chance baseline of
a model that ignores the cue. `minitx.recipes.pretrain` runs `evaluate` as the training loop's eval_fn.
Math: docs/math/mlm.md. Batches and probes: minitx.data.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import torch

from minitx.data.mlm import mlm_batch, probe_batches
from minitx.data.synthetic import KINDS, chance_baselines
from minitx.functional import IGNORE_INDEX
from minitx.models.bert import BertForMaskedLM
from minitx.seeding import seed_for
from minitx.tokenizers.wordpiece import WordPieceTokenizer

if TYPE_CHECKING:  # only for annotations: pretrain imports this module
    from minitx.recipes.pretrain.config import PretrainConfig

__all__ = ["evaluate", "probe_accuracy", "unigram_log_probs"]


def _eval_batches(corpus, tokenizer: WordPieceTokenizer, config: PretrainConfig) -> Iterator[dict]:
    """The held-out MLM batches: every example once, masked by a fixed seed, so every eval sees the same."""
    examples: Sequence = corpus.eval_examples
    for start in range(0, len(examples), config.batch_size):
        chunk = examples[start:start + config.batch_size]
        yield mlm_batch(chunk, tokenizer, len(chunk), 0, seed_for(config.seed, start, 0xE7A1), 0, 1,
                        config.max_length, config.mlm_probability, config.whole_word)


def evaluate(model: BertForMaskedLM, corpus, tokenizer: WordPieceTokenizer,
             config: PretrainConfig) -> dict[str, float]:
    """Held-out loss, perplexity (mlm.6: exp of the mean over *all* predicted tokens) and masked accuracy;
    on the synthetic language also the probe accuracy per kind of determined position, with chance."""
    device = next(model.parameters()).device
    nll = correct = count = 0.0
    unigram = getattr(corpus, "unigram", None)  # (V,) log-probs of the training tokens, on real text
    base_nll = base_correct = 0.0
    at_mask = {"count": 0.0, "model": 0.0, "unigram": 0.0}  # only the selected tokens shown as [MASK] (80%)
    for batch in _eval_batches(corpus, tokenizer, config):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
        selected = batch["labels"] != IGNORE_INDEX
        nll += float(torch.nn.functional.cross_entropy(logits[selected].float(), batch["labels"][selected],
                                                       reduction="sum"))
        correct += float((logits[selected].argmax(-1) == batch["labels"][selected]).sum())
        count += float(selected.sum())
        if unigram is not None:
            targets = batch["labels"][selected].cpu()
            base_nll -= float(unigram[targets].sum())
            base_correct += float((targets == unigram.argmax()).sum())
            shown = (batch["input_ids"][selected] == tokenizer.mask_id).cpu()  # the others are visible tokens
            at_mask["count"] += float(shown.sum())
            at_mask["model"] += float((logits[selected].argmax(-1).cpu() == targets)[shown].sum())
            at_mask["unigram"] += float((targets == unigram.argmax())[shown].sum())
    metrics = {}
    if count:
        metrics = {"loss": nll / count, "perplexity": math.exp(nll / count), "masked_accuracy": correct / count}
        if unigram is not None:  # the trivial baseline: every mask filled from the training token frequencies
            metrics.update(unigram_loss=base_nll / count, unigram_accuracy=base_correct / count)
            if at_mask["count"]:  # a model can be right on the 10% kept tokens by copying: these it cannot see
                metrics.update(accuracy_at_mask=at_mask["model"] / at_mask["count"],
                               unigram_accuracy_at_mask=at_mask["unigram"] / at_mask["count"])
    if corpus.probe_sentences:
        metrics.update(probe_accuracy(model, corpus.probe_sentences, tokenizer, config.max_length))
    return metrics


def unigram_log_probs(lines: Iterable[str], tokenizer: WordPieceTokenizer) -> torch.Tensor:
    """(V,) log-frequencies of the non-special tokens of `lines` (add-one smoothed; specials -inf): the model
    that ignores the context. Its loss on the masked tokens is the baseline a real MLM must beat."""
    counts = torch.ones(tokenizer.vocab_size, dtype=torch.float64)
    for line in lines:
        ids = tokenizer.encode(line).ids[1:-1]
        counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=tokenizer.vocab_size)
    counts[tokenizer.special_ids] = 0.0
    return (counts / counts.sum()).log().float()


@torch.no_grad()
def probe_accuracy(model: BertForMaskedLM, sentences, tokenizer: WordPieceTokenizer,
                   max_length: int = 128) -> dict[str, float]:
    """Mask each determined word alone (data.probe_batches); a probe is right when every piece of the word is.

    Returns probe_accuracy_<kind>, chance_<kind> and probes_<kind> per kind, and the overall probe_accuracy
    and chance (chance averaged with the same weights as the probes, so the two are comparable)."""
    device = next(model.parameters()).device
    hits: dict[int, list[float]] = {}
    for batch in probe_batches(sentences, tokenizer, max_length=max_length):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
        probed = batch["labels"] != IGNORE_INDEX
        right = ((logits.argmax(-1) == batch["labels"]) | ~probed).all(dim=1)  # (B,): all pieces right
        kinds = batch["determined_kind"].max(dim=1).values  # (B,): one probed word per row
        for k, r in zip(kinds.tolist(), right.tolist()):
            hits.setdefault(k, []).append(float(r))
    chance, out, total = chance_baselines(), {}, 0
    for code, values in sorted(hits.items()):
        kind = KINDS[code - 1]
        out[f"probe_accuracy_{kind}"] = sum(values) / len(values)
        out[f"chance_{kind}"] = chance[kind]
        out[f"probes_{kind}"] = float(len(values))
        total += len(values)
    if total:
        out["probe_accuracy"] = sum(sum(v) for v in hits.values()) / total
        out["chance"] = sum(chance[KINDS[c - 1]] * len(v) for c, v in hits.items()) / total
    return out
