"""A BERT-style encoder built from minitx's Blocks: its config, embeddings, the encoder stack, and task heads.

Equations are in docs/math/bert.md: embeddings (bert.1), the encoder stack (bert.2), the MLM head with tied
weights (bert.3, and mlm.* in docs/math/mlm.md), the pooler (bert.4) and the classification head (bert.5).
Module names follow docs/architecture.md, so `minitx.interop.bert` maps Hugging Face BERT weights one to one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as torch_F  # torch's; `F` is minitx.functional elsewhere in the library
from torch import nn

from minitx.attention.backends import available_backends
from minitx.config import FlatConfig, option
from minitx.functional import IGNORE_INDEX, cross_entropy, gelu
from minitx.models.inputs import check_ids, check_model_config, key_padding_mask
from minitx.nn.block import Block, set_blocks_backend, standard_block
from minitx.nn.dropout import drop
from minitx.nn.linear import store_input_major
from minitx.nn.norms import LayerNorm
from minitx.positional.absolute import LearnedPositionalEmbedding


@dataclass
class BertConfig(FlatConfig):
    """A flat model config; every field maps one to one onto a CLI flag."""

    vocab_size: int = 1000
    d_model: int = option(128, "model width C")
    n_layers: int = option(2, "encoder blocks")
    n_heads: int = option(4, "attention heads H (d_model divisible by it)")
    d_ff: int = option(512, "feed-forward width")
    max_position: int = option(128, "longest sequence (learned positions)")
    type_vocab_size: int = option(2, "segment ids (sentence A/B)")
    dropout: float = option(0.1, "dropout on embeddings and residual branches")
    attention_dropout: float = option(0.1, "dropout on attention weights")
    layer_norm_eps: float = option(1e-12, "LayerNorm epsilon (BERT: 1e-12)")
    norm_first: bool = option(False, "pre-LN blocks instead of BERT's post-LN")
    attention_backend: str = option("sdpa", "attention backend: sdpa (PyTorch's, the fastest here), math (the readable "
                                    "one), flash or any registered one",
                                    choices=available_backends)
    pad_token_id: int = 0
    initializer_range: float = 0.02
    sparse_prediction: bool = option(
        False, "with labels, run the MLM head only at labelled positions (mlm.7): the output's sparse_logits (K, V) "
        "then stand in for logits (None); off, logits are (B, N, V) as in Hugging Face. Pretraining turns it on")
    sparse_last_block: bool = option(
        True, "with labels and sparse_prediction, the last block computes its outputs only at labelled positions "
        "(mlm.8); all positions stay keys and values")

    def __post_init__(self) -> None:
        check_model_config(self, ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_position",
                                  "type_vocab_size"))
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < math.inf:
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        for name in ("norm_first", "sparse_prediction", "sparse_last_block"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        pad = self.pad_token_id
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size:
            raise ValueError(f"pad_token_id: expected an int in [0, vocab_size={self.vocab_size}), got {pad!r}")


def check_inputs(config: BertConfig, input_ids, token_type_ids=None) -> None:
    """Refuse model inputs that would fail deep inside torch (an embedding lookup out of range) or be misread:
    TypeError/ValueError naming the argument. Cheap: one min/max per tensor."""
    check_ids("input_ids", input_ids, None, 0, config.vocab_size)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected shape (B, N), got {tuple(input_ids.shape)}")
    if token_type_ids is not None:
        check_ids("token_type_ids", token_type_ids, input_ids.shape, 0, config.type_vocab_size)


def check_labels(config: BertConfig, input_ids, labels, next_sentence_label) -> None:
    """MLM labels: the shape of input_ids, ids in [0, V) or IGNORE_INDEX; next-sentence labels 0/1, one per row."""
    if labels is None and next_sentence_label is None:
        return
    check_inputs(config, input_ids)
    if labels is not None:
        check_ids("labels", labels, input_ids.shape, 0, config.vocab_size, allowed=(IGNORE_INDEX,))
    if next_sentence_label is not None:
        check_ids("next_sentence_label", next_sentence_label, input_ids.shape[:1], 0, 2)


class BertEmbeddings(nn.Module):
    """(bert.1): LayerNorm(token + position + segment embeddings), then dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.position = LearnedPositionalEmbedding(config.max_position, config.d_model)
        self.segment = nn.Embedding(config.type_vocab_size, config.d_model)
        self.norm = LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.max_position = config.max_position

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if input_ids.shape[1] > self.max_position:
            raise ValueError(f"input_ids: sequence length {input_ids.shape[1]} exceeds "
                             f"max_position={self.max_position}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.token(input_ids) + self.segment(token_type_ids)  # (B, N, C)
        x = self.position(x)  # adds E[:N]
        return drop(self.dropout, self.norm(x))


def bert_block(config: BertConfig) -> Block:
    """One encoder layer (bert.2): bidirectional self-attention and BERT's GELU feed-forward, post-LN
    (block.1)-(block.2) or pre-LN (block.3)-(block.4) by `config.norm_first`."""
    return standard_block(config.d_model, config.n_heads, config.d_ff, dropout=config.dropout,
                          attention_dropout=config.attention_dropout, norm_first=config.norm_first,
                          layer_norm_eps=config.layer_norm_eps, backend=config.attention_backend)


class BertModel(nn.Module):
    """Embeddings, then `n_layers` encoder blocks (bert.2). Returns the hidden states (B, N, C)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.blocks = nn.ModuleList(bert_block(config) for _ in range(config.n_layers))
        # Pre-LN stacks end with a norm of their own: the residual stream is never normalized otherwise.
        self.final_norm = LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm_first else None

    def set_attention_backend(self, backend: str) -> None:
        """Switch every block's attention backend (math, sdpa, flash) without touching the weights."""
        set_blocks_backend(self.blocks, backend)
        self.config.attention_backend = backend

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, last_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Hidden states (B, N, C); with `last_rows` (B, R) the last block's only at those positions, (B, R, C)
        (mlm.8)."""
        check_inputs(self.config, input_ids, token_type_ids)
        padding = key_padding_mask(attention_mask, input_ids.shape)  # (B, M) bool, True = real token
        x = self.embeddings(input_ids, token_type_ids)
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, padding, rows=last_rows if last else None)
        return x if self.final_norm is None else self.final_norm(x)


class MLMHead(nn.Module):
    """(bert.3) = (mlm.5): dense -> GELU -> LayerNorm -> decoder tied to the token embedding, plus its own bias."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        """hidden (..., C) -> logits (..., V): (B, N, C), or (K, C) at the labelled positions only (mlm.7).
        `decoder_weight` is the token embedding matrix (V, C) itself, passed in rather than stored, so the
        tie is by construction and the state dict holds the matrix once."""
        h = self.norm(gelu(self.dense(hidden)))
        return torch_F.linear(h, decoder_weight, self.bias)  # (..., C) @ (C, V) -> (..., V)


class MaskedLMOutput(NamedTuple):
    """`logits` is (B, N, V), with or without labels, as in Hugging Face. Only when labels were given and
    `config.sparse_prediction` is on (an explicit choice: pretraining makes it) does the head run at the K
    labelled positions alone (mlm.7): `sparse_logits` (K, V) holds those rows (row-major order,
    `prediction_mask` True there) and `logits` is None, so no code reads a (K, V) tensor as (B, N, V)."""

    logits: Optional[torch.Tensor]
    loss: Optional[torch.Tensor]
    hidden: torch.Tensor     # (B, N, C), or (K, C) at the labelled positions when the last block ran there (mlm.8)
    next_sentence_logits: Optional[torch.Tensor] = None
    prediction_mask: Optional[torch.Tensor] = None   # (B, N) bool: the rows of `sparse_logits`; None if full
    sparse_logits: Optional[torch.Tensor] = None     # (K, V) with sparse_prediction and labels; else None

    def labelled_logits(self, labels: torch.Tensor) -> torch.Tensor:
        """(K, V): the logits at the positions whose label is not -100, from a sparse or a full `logits`."""
        return labelled_logits(self, labels)


def labelled_logits(output, labels: torch.Tensor) -> torch.Tensor:
    """(K, V) logits at the positions whose label is not -100: `output.sparse_logits` when the head ran there
    alone (mlm.7), else the full (B, N, V) `logits` at those rows; any object with `.logits` will do."""
    if getattr(output, "sparse_logits", None) is not None:
        return output.sparse_logits
    return output.logits[labels != IGNORE_INDEX]  # (B, N, V) -> (K, V)


def _init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std^2) weights (std = initializer_range, 0.02 in BERT), zero biases; LayerNorm
    keeps its unit gain and zero shift; the padding row stays zero."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, LearnedPositionalEmbedding):
        nn.init.normal_(module.weight, std=std)


class Pooler(nn.Module):
    """(bert.4): tanh(W h_[CLS] + b), BERT's sentence vector."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, N, C) -> (B, C)


class BertForMaskedLM(nn.Module):
    """The encoder with the MLM head; `loss` is (mlm.1): cross-entropy over positions whose label != -100.

    With `next_sentence=True` it also carries BERT's next-sentence head (pooler + 2-way classifier); its loss
    is added when `next_sentence_label` is given.
    """

    def __init__(self, config: BertConfig, next_sentence: bool = False) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm_head = MLMHead(config)
        self.pooler = Pooler(config.d_model) if next_sentence else None
        self.next_sentence_head = nn.Linear(config.d_model, 2) if next_sentence else None
        self.apply(lambda m: _init_bert_weights(m, config.initializer_range))
        store_input_major(self)  # once initialised: the same weights, laid out as minitx.nn.linear says

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                next_sentence_label: Optional[torch.Tensor] = None) -> MaskedLMOutput:
        check_labels(self.config, input_ids, labels, next_sentence_label)
        rows = self._labelled_rows(input_ids, labels)
        if rows is not None:  # (mlm.8): the last block only where the head reads
            order, valid = rows
            hidden = self.bert(input_ids, attention_mask, token_type_ids, last_rows=order)[valid]  # (B, R, C) -> (K, C)
        else:
            hidden = self.bert(input_ids, attention_mask, token_type_ids)  # (B, N, C)
        logits, loss, prediction_mask = self._mlm_logits_and_loss(hidden, input_ids, labels)
        sparse_logits = None
        if prediction_mask is not None:  # (K, V) rows under their own name: `logits` never changes shape
            logits, sparse_logits = None, logits
        nsp_logits = None
        if self.next_sentence_head is not None:
            nsp_logits = self.next_sentence_head(self.pooler(hidden))  # (B, 2)
            if next_sentence_label is not None:
                nsp_loss = torch_F.cross_entropy(nsp_logits.float(), next_sentence_label)
                loss = nsp_loss if loss is None else loss + nsp_loss
        elif next_sentence_label is not None:
            raise ValueError("next_sentence_label: this model has no next-sentence head (next_sentence=False)")
        return MaskedLMOutput(logits, loss, hidden, nsp_logits, prediction_mask, sparse_logits)

    def _labelled_rows(self, input_ids, labels):
        """For (mlm.8): (order (B, R), valid (B, R)) -- each sequence's labelled positions first, in order, padded
        to R = the most any sequence has with unlabelled ones (valid False) -- or None where it does not apply:
        no labels, the option off, a next-sentence head (it reads [CLS]), or no labelled position at all."""
        if labels is None or not (self.config.sparse_prediction and self.config.sparse_last_block) \
                or self.next_sentence_head is not None or labels.shape != input_ids.shape:
            return None
        selected = labels != IGNORE_INDEX                                    # (B, N)
        counts = selected.sum(dim=1)                                         # (B,)
        r = int(counts.max()) if counts.numel() else 0
        if r == 0:
            return None
        order = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :r]   # (B, N) -> (B, R)
        valid = torch.arange(r, device=labels.device) < counts[:, None]     # (B, R)
        return order, valid

    def _mlm_logits_and_loss(self, hidden, input_ids, labels):
        """(mlm.1) over the labelled positions. With `sparse_prediction` the head (mlm.5) runs only at those K
        positions (mlm.7): the same loss and gradients as the full head, since the others carry no loss."""
        decoder_weight = self.bert.embeddings.token.weight
        if labels is None:
            return self.mlm_head(hidden, decoder_weight), None, None
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels: expected shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
        if self.config.sparse_prediction:
            selected = labels != IGNORE_INDEX                          # (B, N)
            if hidden.dim() == 3:                                      # not already (K, C) from (mlm.8)
                hidden = hidden[selected]                              # (B, N, C) -> (K, C)
            logits = self.mlm_head(hidden, decoder_weight)             # (K, C) -> (K, V)
            return logits, cross_entropy(logits, labels[selected]), selected  # (mlm.1) by (ce.1)-(ce.3)
        logits = self.mlm_head(hidden, decoder_weight)
        # one prediction per position; -100 positions carry no loss and are never read (ce.3)
        loss = cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        return logits, loss, None


class ClassificationOutput(NamedTuple):
    logits: torch.Tensor
    loss: Optional[torch.Tensor]


class BertForSequenceClassification(nn.Module):
    """(bert.5): logits = W Drop(pool(h)) + b, pool the pooler or the raw [CLS] vector (use_pooler=False)."""

    def __init__(self, config: BertConfig, num_labels: int, use_pooler: bool = True) -> None:
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels: expected an int >= 2, got {num_labels!r}")
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.pooler = Pooler(config.d_model) if use_pooler else None
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, num_labels)
        self.apply(lambda m: _init_bert_weights(m, config.initializer_range))
        store_input_major(self)  # once initialised: the same weights, laid out as minitx.nn.linear says

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> ClassificationOutput:
        if labels is not None:
            check_inputs(self.config, input_ids)
            check_ids("labels", labels, input_ids.shape[:1], 0, self.num_labels)
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        pooled = self.pooler(hidden) if self.pooler is not None else hidden[:, 0]  # (B, C)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else torch_F.cross_entropy(logits.float(), labels)
        return ClassificationOutput(logits, loss)

    @classmethod
    def from_pretrained_mlm(cls, mlm: BertForMaskedLM, num_labels: int, use_pooler: bool = True,
                            seed: int = 0) -> "BertForSequenceClassification":
        """A classifier whose encoder holds a copy of `mlm`'s encoder; the new head is seeded."""
        torch.manual_seed(seed)
        model = cls(dataclasses.replace(mlm.config), num_labels, use_pooler)
        model.bert.load_state_dict(mlm.bert.state_dict())
        return model
