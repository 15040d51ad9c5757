"""Hugging Face BERT <-> minitx: the same weights under two sets of names.

`transformers` is never a runtime dependency: these functions take or build a `BertForMaskedLM` object, and
import `transformers` only inside `to_hf_bert`, which has to construct one. The name map below is the whole
story: each HF tensor has exactly one minitx home, and both directions refuse anything left over.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from minitx.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, Pooler

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


# HF config options minitx's BERT cannot represent: (the only value it can take, what another value would mean).
_UNSUPPORTED = {
    "model_type": ("bert", "another architecture than BERT"),
    "hidden_act": ("gelu", "another activation; minitx BERT uses the exact erf GELU"),
    "position_embedding_type": ("absolute", "relative position embeddings in the attention scores"),
    "is_decoder": (False, "causal (left-to-right) self-attention; minitx BERT attends both ways"),
    "add_cross_attention": (False, "cross-attention layers over an encoder's output"),
    "is_encoder_decoder": (False, "an encoder-decoder model"),
}
# Only where the MLM head is used (an encoder for fine-tuning does not care how the decoder was stored).
_UNSUPPORTED_MLM = {"tie_word_embeddings": (True, "an MLM decoder matrix of its own; minitx ties the decoder "
                                                  "to the word embeddings (bert.3)")}


def _option(hf_config: Any, name: str, default: Any) -> Any:
    """`name` of a `transformers.BertConfig` or of a config.json dict; `default` (HF's) when absent."""
    if isinstance(hf_config, dict):
        return hf_config.get(name, default)
    return getattr(hf_config, name, default)


def check_hf_config(hf_config: Any, mlm_head: bool = True) -> None:
    """Refuse, naming the option, a Hugging Face BERT config whose model minitx would compute differently.

    `hf_config` is a `transformers.BertConfig` or the dict of a config.json. With `mlm_head=False` (only the
    encoder is wanted, as for fine-tuning) an untied MLM decoder is no obstacle.
    """
    options = {**_UNSUPPORTED, **(_UNSUPPORTED_MLM if mlm_head else {})}
    for name, (supported, meaning) in options.items():
        value = _option(hf_config, name, supported)
        if value != supported:
            raise ValueError(f"hf_config.{name}: minitx supports only {supported!r}, got {value!r} "
                             f"({meaning}); this checkpoint cannot be represented exactly")
    pruned = _option(hf_config, "pruned_heads", None)
    if pruned:
        raise ValueError(f"hf_config.pruned_heads: minitx has no pruned attention heads, got {pruned!r}")


def config_from_hf(hf_config: Any, mlm_head: bool = True) -> BertConfig:
    """A minitx BertConfig with the same sizes, eps and dropout as a `transformers.BertConfig` (or a config.json
    dict); options minitx cannot represent are refused by name (`check_hf_config`)."""
    check_hf_config(hf_config, mlm_head)
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if _option(hf_config, k, None) is None]
    if missing:
        raise ValueError(f"hf_config: expected a BERT config with {list(required)}, missing {missing}")

    def get(name: str, default: Any) -> Any:
        return _option(hf_config, name, default)
    pad = get("pad_token_id", 0)
    return BertConfig(
        vocab_size=get("vocab_size", None), d_model=get("hidden_size", None),
        n_layers=get("num_hidden_layers", None), n_heads=get("num_attention_heads", None),
        d_ff=get("intermediate_size", None), max_position=get("max_position_embeddings", 512),
        type_vocab_size=get("type_vocab_size", 2), dropout=get("hidden_dropout_prob", 0.1),
        attention_dropout=get("attention_probs_dropout_prob", 0.1), layer_norm_eps=get("layer_norm_eps", 1e-12),
        pad_token_id=0 if pad is None else pad, initializer_range=get("initializer_range", 0.02))


def normalize_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF state-dict keys as today's BertForMaskedLM names them: a bare `BertModel`'s keys get the "bert."
    prefix, old TF-converted LayerNorm "gamma"/"beta" become "weight"/"bias", position_ids buffers go."""
    bare = not any(k.startswith(("bert.", "cls.")) for k in state)
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        key = ("bert." + key) if bare else key
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    return out


def _check_tied(hf_state: dict[str, torch.Tensor]) -> None:
    """A stored decoder must be the word embeddings (and its bias the head's bias): minitx has no other."""
    pairs = (("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
             ("cls.predictions.decoder.bias", "cls.predictions.bias"))
    for decoder, tied in pairs:
        if decoder in hf_state and tied in hf_state and not torch.equal(hf_state[decoder], hf_state[tied]):
            raise ValueError(f"hf_model: {decoder} differs from {tied}; minitx ties them (bert.3), so an untied "
                             f"MLM decoder cannot be represented")


def minitx_state_from_hf(hf_state: dict[str, torch.Tensor], n_layers: int, mlm_head: bool = True,
                         allowed_extra: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """(minitx BertForMaskedLM state, the HF tensors left over whose names start with `allowed_extra`).

    With `mlm_head=False` only the encoder ("bert.*") is mapped and the MLM head, if any, is left out. Any
    other tensor missing or left over is a ValueError naming it.
    """
    hf_state = normalize_hf_state(hf_state)
    held = {int(m.group(1)) for k in hf_state for m in [re.match(r"bert\.encoder\.layer\.(\d+)\.", k)] if m}
    if len(held) != n_layers:  # checked first: the name map of an untrusted n_layers (10**6) is itself large
        raise ValueError(f"hf_model: the config says {n_layers} layers (num_hidden_layers), the weights hold "
                         f"{len(held)}")
    if mlm_head:
        _check_tied(hf_state)
    names = {k: v for k, v in hf_to_minitx_names(n_layers).items() if mlm_head or k.startswith("bert.")}
    extra = {k: v for k, v in hf_state.items() if k not in names and k.startswith(allowed_extra)}
    ignored = _TIED_HF | (set() if mlm_head else {k for k in hf_state if k.startswith("cls.")})
    left = {k for k in hf_state if k not in names and k not in extra and k not in ignored}
    missing = sorted(set(names) - set(hf_state))
    if missing or left:
        raise ValueError(f"hf_model: not a BertForMaskedLM state dict as expected; missing {missing[:5]}, "
                         f"unexpected {sorted(left)[:5]}")
    not_float = sorted(k for k in set(names) | set(extra) if k in hf_state and not hf_state[k].is_floating_point())
    if not_float:  # loading would cast them into float weights without a word
        raise ValueError(f"hf_model: tensor {not_float[0]} has dtype {hf_state[not_float[0]].dtype}; expected "
                         f"floating-point weights ({len(not_float)} such tensor(s))")
    return {names[k]: v.detach().clone() for k, v in hf_state.items() if k in names}, extra


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every minitx BertForMaskedLM tensor's shape under `config` (plus the pooler's), computed from the sizes
    alone: nothing is allocated, so an untrusted config.json can be checked before a model is built."""
    c, f = config.d_model, config.d_ff
    shapes = {"bert.embeddings.token.weight": (config.vocab_size, c),
              "bert.embeddings.position.weight": (config.max_position, c),
              "bert.embeddings.segment.weight": (config.type_vocab_size, c),
              "bert.embeddings.norm.weight": (c,), "bert.embeddings.norm.bias": (c,),
              "mlm_head.dense.weight": (c, c), "mlm_head.dense.bias": (c,), "mlm_head.norm.weight": (c,),
              "mlm_head.norm.bias": (c,), "mlm_head.bias": (config.vocab_size,),
              "pooler.dense.weight": (c, c), "pooler.dense.bias": (c,)}
    layer = {"attention.q_proj": (c, c), "attention.k_proj": (c, c), "attention.v_proj": (c, c),
             "attention.out_proj": (c, c), "attention_norm": (c,), "feed_forward.fc_in": (f, c),
             "feed_forward.fc_out": (c, f), "ffn_norm": (c,)}
    for i in range(config.n_layers):
        for name, shape in layer.items():
            shapes[f"bert.blocks.{i}.{name}.weight"] = shape
            shapes[f"bert.blocks.{i}.{name}.bias"] = shape[:1]
    return shapes


def check_state_shapes(config: BertConfig, state: dict[str, torch.Tensor], where: Any = "hf_model") -> None:
    """Refuse, naming the tensor and the config field, a state whose tensors disagree with `config` (a
    config.json that does not describe its weights, or transposed / truncated tensors)."""
    expected = expected_shapes(config)
    hf_names = {ours: hf for hf, ours in hf_to_minitx_names(config.n_layers).items()}
    hf_names.update({f"pooler.dense.{k}": f"bert.pooler.dense.{k}" for k in ("weight", "bias")})
    for name, tensor in state.items():
        want = expected.get(name)
        if want is not None and tuple(tensor.shape) != want:
            raise ValueError(f"{where}: tensor {hf_names.get(name, name)} has shape {tuple(tensor.shape)}, but "
                             f"config.json's sizes "
                             f"(vocab_size {config.vocab_size}, hidden_size {config.d_model}, intermediate_size "
                             f"{config.d_ff}, max_position_embeddings {config.max_position}) say {want}")


IDENTITY_POOLER_EPS = 1e-4  # (bert.6): relative error eps^2 h^2 / 3: float32's rounding (6e-8) for |h| < 4.2


@torch.no_grad()
def add_identity_pooler(model: BertForSequenceClassification,
                        eps: float = IDENTITY_POOLER_EPS) -> BertForSequenceClassification:
    """(bert.6): a classifier of the raw [CLS] vector (use_pooler=False) rewritten, in place, as one that reads
    a pooler, for formats whose classifier always has one (Hugging Face's BertForSequenceClassification):
    W_p = eps I, b_p = 0, W_c' = W_c / eps, so W_c' tanh(eps h) = W_c h (1 - eps^2 h^2 / 3 + ...) + b_c.
    The new pooler's parameters require grad when the classifier's do (a PEFT export saves them)."""
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(f"model: expected a BertForSequenceClassification, got {type(model).__name__}")
    if model.pooler is not None:
        raise ValueError("model: already classifies from a pooler (use_pooler=True)")
    weight = model.classifier.weight
    pooler = Pooler(model.config.d_model).to(device=weight.device, dtype=weight.dtype)
    pooler.dense.weight.copy_(torch.eye(model.config.d_model) * eps)
    pooler.dense.bias.zero_()
    pooler.requires_grad_(weight.requires_grad)
    weight.div_(eps)
    model.pooler = pooler
    return model


def from_hf_bert(hf_model: Any, attention_backend: str = "sdpa") -> BertForMaskedLM:
    """A minitx BertForMaskedLM holding the weights of a `transformers.BertForMaskedLM` (any size).

    Configs minitx would compute differently (an untied decoder, causal attention, ...) are refused by name."""
    config = config_from_hf(hf_model.config)
    config.attention_backend = attention_backend
    model = BertForMaskedLM(config)
    ours, _ = minitx_state_from_hf(hf_model.state_dict(), config.n_layers)
    model.load_state_dict(ours, strict=True)
    return model


def hf_state_from_minitx(model: BertForMaskedLM) -> dict[str, torch.Tensor]:
    """The HF `BertForMaskedLM` state dict (tied decoder left out, as `save_pretrained` stores it) of a minitx
    BertForMaskedLM; a parameter with no HF home is a ValueError naming it."""
    if model.config.norm_first:
        raise ValueError("model: pre-LN (norm_first=True) has no Hugging Face BERT equivalent")
    ours_to_hf = {ours: hf for hf, ours in hf_to_minitx_names(model.config.n_layers).items()}
    state = model.state_dict()
    leftover = sorted(set(state) - set(ours_to_hf))
    if leftover:
        raise ValueError(f"model: parameters with no Hugging Face BERT home: {leftover[:5]}")
    return {ours_to_hf[k]: v.detach().clone() for k, v in state.items()}


def hf_config_dict(config: BertConfig) -> dict[str, Any]:
    """The Hugging Face BertConfig fields (config.json's) of a minitx BertConfig; pre-LN is refused."""
    if config.norm_first:
        raise ValueError("model: pre-LN (norm_first=True) has no Hugging Face BERT equivalent")
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, intermediate_size=config.d_ff, hidden_act="gelu",
        max_position_embeddings=config.max_position, type_vocab_size=config.type_vocab_size,
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attention_dropout,
        layer_norm_eps=config.layer_norm_eps, pad_token_id=config.pad_token_id,
        initializer_range=config.initializer_range, position_embedding_type="absolute", is_decoder=False,
        add_cross_attention=False, tie_word_embeddings=True)


def to_hf_bert(model: BertForMaskedLM) -> Any:
    """A `transformers.BertForMaskedLM` with the weights of a minitx BertForMaskedLM (post-LN only)."""
    try:
        import transformers  # lazy: only this direction needs the library itself
    except ImportError as err:  # a dev extra, never a runtime dependency (minitx export writes HF files without it)
        raise ImportError("to_hf_bert needs `transformers` (pip install 'minitx[dev]')") from err

    config = model.config
    if config.norm_first:
        raise ValueError("model: pre-LN (norm_first=True) has no Hugging Face BERT equivalent")
    hf_config = transformers.BertConfig(**hf_config_dict(config))
    hf_model = transformers.BertForMaskedLM(hf_config)
    hf_state = hf_state_from_minitx(model)
    hf_state["cls.predictions.decoder.weight"] = hf_state["bert.embeddings.word_embeddings.weight"]
    missing, unexpected = hf_model.load_state_dict(hf_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and k not in _TIED_HF]
    if missing or unexpected:
        raise ValueError(f"model: could not fill the HF model; missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf_model.tie_weights()
    return hf_model
