"""Hugging Face BERT <-> minitx: the same weights under two sets of names.

`transformers` is never a runtime dependency: these functions take or build a `BertForMaskedLM` object, and
import `transformers` only inside `to_hf_bert`, which has to construct one. The name map below is the whole
story: each HF tensor has exactly one minitx home, and both directions refuse anything left over.
"""

from __future__ import annotations

from typing import Any

import torch

from minitx.model import BertConfig, BertForMaskedLM

_EMBEDDINGS = {
    "bert.embeddings.word_embeddings.weight": "bert.embeddings.token.weight",
    "bert.embeddings.position_embeddings.weight": "bert.embeddings.position.weight",
    "bert.embeddings.token_type_embeddings.weight": "bert.embeddings.segment.weight",
    "bert.embeddings.LayerNorm.weight": "bert.embeddings.norm.weight",
    "bert.embeddings.LayerNorm.bias": "bert.embeddings.norm.bias",
}
_LAYER = {  # HF name inside encoder.layer.{i} -> minitx name inside bert.blocks.{i}
    "attention.self.query": "attention.q_proj",
    "attention.self.key": "attention.k_proj",
    "attention.self.value": "attention.v_proj",
    "attention.output.dense": "attention.out_proj",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "feed_forward.fc_in",
    "output.dense": "feed_forward.fc_out",
    "output.LayerNorm": "ffn_norm",
}
_HEAD = {
    "cls.predictions.transform.dense.weight": "mlm_head.dense.weight",
    "cls.predictions.transform.dense.bias": "mlm_head.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "mlm_head.norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "mlm_head.norm.bias",
    "cls.predictions.bias": "mlm_head.bias",
}
# Tied to the word embeddings in both libraries, so they carry no weights of their own.
_TIED_HF = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}


def hf_to_minitx_names(n_layers: int) -> dict[str, str]:
    """The complete HF -> minitx state-dict name map for a BertForMaskedLM with `n_layers` layers."""
    names = dict(_EMBEDDINGS)
    for i in range(n_layers):
        for hf, ours in _LAYER.items():
            for kind in ("weight", "bias"):
                names[f"bert.encoder.layer.{i}.{hf}.{kind}"] = f"bert.blocks.{i}.{ours}.{kind}"
    names.update(_HEAD)
    return names


def config_from_hf(hf_config: Any) -> BertConfig:
    """A minitx BertConfig with the same sizes, eps and dropout as a `transformers.BertConfig`."""
    act = getattr(hf_config, "hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"hf_config.hidden_act: minitx BERT uses the exact erf GELU ('gelu'), got {act!r}")
    pos_type = getattr(hf_config, "position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ValueError(f"hf_config.position_embedding_type: only 'absolute' is supported, got {pos_type!r}")
    return BertConfig(
        vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size, n_layers=hf_config.num_hidden_layers,
        n_heads=hf_config.num_attention_heads, d_ff=hf_config.intermediate_size,
        max_position=hf_config.max_position_embeddings, type_vocab_size=hf_config.type_vocab_size,
        dropout=hf_config.hidden_dropout_prob, attention_dropout=hf_config.attention_probs_dropout_prob,
        layer_norm_eps=hf_config.layer_norm_eps, pad_token_id=hf_config.pad_token_id or 0,
        initializer_range=hf_config.initializer_range)


def from_hf_bert(hf_model: Any, attention_backend: str = "math") -> BertForMaskedLM:
    """A minitx BertForMaskedLM holding the weights of a `transformers.BertForMaskedLM` (any size)."""
    config = config_from_hf(hf_model.config)
    config.attention_backend = attention_backend
    model = BertForMaskedLM(config)
    hf_state = {k: v for k, v in hf_model.state_dict().items()
                if k not in _TIED_HF and not k.endswith("position_ids")}
    names = hf_to_minitx_names(config.n_layers)
    missing = sorted(set(names) - set(hf_state))
    unexpected = sorted(set(hf_state) - set(names))
    if missing or unexpected:
        raise ValueError(f"hf_model: not a BertForMaskedLM state dict as expected; "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    ours = {names[k]: v.detach().clone() for k, v in hf_state.items()}
    model.load_state_dict(ours, strict=True)
    return model


def to_hf_bert(model: BertForMaskedLM) -> Any:
    """A `transformers.BertForMaskedLM` with the weights of a minitx BertForMaskedLM (post-LN only)."""
    import transformers  # lazy: only this direction needs the library itself

    config = model.config
    if config.norm_first:
        raise ValueError("model: pre-LN (norm_first=True) has no Hugging Face BERT equivalent")
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, intermediate_size=config.d_ff, hidden_act="gelu",
        max_position_embeddings=config.max_position, type_vocab_size=config.type_vocab_size,
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attention_dropout,
        layer_norm_eps=config.layer_norm_eps, pad_token_id=config.pad_token_id,
        initializer_range=config.initializer_range, tie_word_embeddings=True)
    hf_model = transformers.BertForMaskedLM(hf_config)
    ours_to_hf = {ours: hf for hf, ours in hf_to_minitx_names(config.n_layers).items()}
    state = model.state_dict()
    hf_state = {ours_to_hf[k]: v.detach().clone() for k, v in state.items() if k in ours_to_hf}
    leftover = sorted(set(state) - set(ours_to_hf))
    if leftover:
        raise ValueError(f"model: parameters with no Hugging Face BERT home: {leftover[:5]}")
    hf_state["cls.predictions.decoder.weight"] = hf_state["bert.embeddings.word_embeddings.weight"]
    missing, unexpected = hf_model.load_state_dict(hf_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and k not in _TIED_HF]
    if missing or unexpected:
        raise ValueError(f"model: could not fill the HF model; missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf_model.tie_weights()
    return hf_model
