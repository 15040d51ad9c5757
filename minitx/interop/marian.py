"""Hugging Face MarianMT <-> minitx Transformer: the same encoder-decoder under two sets of names.

`transformers.MarianMTModel` is the Hugging Face model closest to the paper: post-LN blocks, fixed sinusoidal
positions, embeddings scaled by sqrt(C), one embedding shared by source, target and output projection. Its
sinusoids are stored sines first, then cosines (`position_layout="halves"`), and its activation is a config
field ("relu" is the paper's; "gelu", "gelu_new" map to minitx's; "swish" has no minitx counterpart and is
refused by name, as is every option minitx does not represent: layer drop, untied output projection, a
nonzero `final_logits_bias`, different encoder/decoder widths, pre-LN or embedding norms).

`from_hf_marian(hf_model)` / `to_hf_marian(model)` convert objects (transformers imported lazily, only to build
one); `load_hf_marian(path)` / `save_hf_marian(model, path)` read and write a `save_pretrained` directory
(config.json + model.safetensors) without transformers. Marian's SentencePiece tokenizer is not represented:
a directory's tokenizer files are neither read nor written. Generation settings in a config (num_beams,
max_length, bad_words_ids, forced_eos_token_id) are not model weights and are not carried: pass them to
`minitx.generate`; minitx does not force EOS at the length limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from minitx.interop.hf_dirs import read_hf_config, read_hf_state
from minitx.models.transformer import Transformer, TransformerConfig

__all__ = ["from_hf_marian", "to_hf_marian", "config_from_hf_marian", "load_hf_marian", "save_hf_marian"]

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_TO_HF_ACTIVATION = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}
_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
_LAYER = {  # HF name inside {encoder,decoder}.layers.{i} -> minitx name inside {encoder,decoder}.{i}
    "self_attn_layer_norm": "attention_norm", "encoder_attn_layer_norm": "cross_attention_norm",
    "fc1": "feed_forward.fc_in", "fc2": "feed_forward.fc_out", "final_layer_norm": "ffn_norm",
    **{f"self_attn.{p}": f"attention.{p}" for p in _ATTENTION},
    **{f"encoder_attn.{p}": f"cross_attention.{p}" for p in _ATTENTION},
}
# option -> the only value minitx represents (options older Marian config.json files still carry)
_FIXED = {"encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "tie_word_embeddings": True,
          "normalize_before": False, "normalize_embedding": False, "add_final_layer_norm": False,
          "add_bias_logits": False, "static_position_embeddings": True, "is_encoder_decoder": True}


def _get(hf_config: Any, name: str, default: Any = None) -> Any:
    return hf_config.get(name, default) if isinstance(hf_config, dict) else getattr(hf_config, name, default)


def config_from_hf_marian(hf_config: Any, attention_backend: str = "sdpa") -> TransformerConfig:
    """A TransformerConfig from a `transformers.MarianConfig` or its config.json dict; refuses, by name, what
    minitx does not represent."""
    for name, value in _FIXED.items():
        got = _get(hf_config, name, value)
        if got != value:
            raise ValueError(f"hf_config.{name}: minitx represents only {value!r}, got {got!r}")
    act = _get(hf_config, "activation_function", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"hf_config.activation_function: {act!r} is not represented in minitx "
                         f"(expected one of {sorted(_ACTIVATIONS)})")
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if _get(hf_config, enc) != _get(hf_config, dec):
            raise ValueError(f"hf_config.{dec}: minitx uses one value for encoder and decoder, got "
                             f"{enc}={_get(hf_config, enc)!r} and {dec}={_get(hf_config, dec)!r}")
    shared = _get(hf_config, "share_encoder_decoder_embeddings", True)
    vocab = _get(hf_config, "vocab_size")
    decoder_vocab = _get(hf_config, "decoder_vocab_size") or vocab
    eos = _get(hf_config, "eos_token_id")
    if not isinstance(eos, int):
        raise ValueError(f"hf_config.eos_token_id: minitx represents one EOS id, got {eos!r}")
    return TransformerConfig(
        vocab_size=vocab, tgt_vocab_size=0 if shared else decoder_vocab, share_embeddings=bool(shared),
        max_position=_get(hf_config, "max_position_embeddings"), d_model=_get(hf_config, "d_model"),
        n_encoder_layers=_get(hf_config, "encoder_layers"), n_decoder_layers=_get(hf_config, "decoder_layers"),
        n_heads=_get(hf_config, "encoder_attention_heads"), d_ff=_get(hf_config, "encoder_ffn_dim"),
        dropout=float(_get(hf_config, "dropout", 0.1)),
        attention_dropout=float(_get(hf_config, "attention_dropout", 0.0)),
        activation_dropout=float(_get(hf_config, "activation_dropout", 0.0)), activation=_ACTIVATIONS[act],
        norm_first=False, layer_norm_eps=1e-5, scale_embedding=bool(_get(hf_config, "scale_embedding", False)),
        position_layout="halves", attention_backend=attention_backend,
        pad_token_id=_get(hf_config, "pad_token_id"), eos_token_id=eos,
        decoder_start_token_id=_get(hf_config, "decoder_start_token_id"))


def _minitx_state(hf_state: dict[str, torch.Tensor], config: TransformerConfig) -> dict[str, torch.Tensor]:
    """Every HF tensor -> its minitx name; refuses an untied output projection, a nonzero final_logits_bias,
    and any tensor left without a home."""
    state = {k.removeprefix("model."): v for k, v in hf_state.items() if "embed_positions" not in k}
    bias = state.pop("final_logits_bias", None)
    if bias is not None and bool(bias.ne(0).any()):
        raise ValueError("hf_model.final_logits_bias: nonzero values are not represented in minitx (its output "
                         "projection has no bias)")
    shared = state.pop("shared.weight", None)
    encoder_embed = state.pop("encoder.embed_tokens.weight", shared)
    decoder_embed = state.pop("decoder.embed_tokens.weight", shared if config.share_embeddings else None)
    if encoder_embed is None or decoder_embed is None:
        raise ValueError("hf_model: the token embeddings (model.shared / embed_tokens) are missing")
    lm_head = state.pop("lm_head.weight", decoder_embed)
    if not torch.equal(lm_head, decoder_embed):
        raise ValueError("hf_model.lm_head: an output projection untied from the decoder embedding is not "
                         "represented in minitx")
    out = {"token.weight": encoder_embed}
    if config.share_embeddings:
        if not torch.equal(encoder_embed, decoder_embed):
            raise ValueError("hf_model: share_encoder_decoder_embeddings is set but the embeddings differ")
    else:
        out["tgt_token.weight"] = decoder_embed
    for side, n in (("encoder", config.n_encoder_layers), ("decoder", config.n_decoder_layers)):
        for i in range(n):
            for hf_name, name in _LAYER.items():
                if side == "encoder" and "encoder_attn" in hf_name:
                    continue
                for kind in ("weight", "bias"):
                    out[f"{side}.{i}.{name}.{kind}"] = state.pop(f"{side}.layers.{i}.{hf_name}.{kind}")
    if state:
        raise ValueError(f"hf_model: tensors with no minitx home: {sorted(state)[:5]}")
    return {k: v.detach().clone().float().contiguous() for k, v in out.items()}


def _hf_state(model: Transformer) -> dict[str, torch.Tensor]:
    ours = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    c = model.config
    decoder_embed = ours.pop("tgt_token.weight", None)
    encoder_embed = ours.pop("token.weight")
    decoder_embed = encoder_embed if decoder_embed is None else decoder_embed
    state = {"model.encoder.embed_tokens.weight": encoder_embed,
             "model.decoder.embed_tokens.weight": decoder_embed.clone(), "lm_head.weight": decoder_embed.clone(),
             "final_logits_bias": torch.zeros(1, c.target_vocab_size)}
    if c.share_embeddings:
        state["model.shared.weight"] = encoder_embed.clone()
    for side, n in (("encoder", c.n_encoder_layers), ("decoder", c.n_decoder_layers)):
        for i in range(n):
            for hf_name, name in _LAYER.items():
                if side == "encoder" and "encoder_attn" in hf_name:
                    continue
                for kind in ("weight", "bias"):
                    state[f"model.{side}.layers.{i}.{hf_name}.{kind}"] = ours.pop(f"{side}.{i}.{name}.{kind}")
    if ours:
        raise ValueError(f"model: parameters with no Marian home: {sorted(ours)[:5]}")
    return state


def hf_marian_config_dict(model: Transformer) -> dict[str, Any]:
    """config.json fields of the MarianMTModel that holds `model`; refuses what Marian cannot represent."""
    if not isinstance(model, Transformer):
        raise TypeError(f"model: expected a minitx Transformer, got {type(model).__name__}")
    c = model.config
    if c.norm_first:
        raise ValueError("model.config.norm_first: Marian's blocks are post-LN; a pre-LN model has no Marian form")
    if c.position_layout != "halves":
        raise ValueError(f"model.config.position_layout: Marian stores its sinusoids as 'halves', got "
                         f"{c.position_layout!r}")
    if c.layer_norm_eps != 1e-5:
        raise ValueError(f"model.config.layer_norm_eps: Marian's LayerNorm uses 1e-5, got {c.layer_norm_eps!r}")
    return {"architectures": ["MarianMTModel"], "model_type": "marian", "vocab_size": c.vocab_size,
            "decoder_vocab_size": c.target_vocab_size, "share_encoder_decoder_embeddings": c.share_embeddings,
            "max_position_embeddings": c.max_position, "d_model": c.d_model, "encoder_layers": c.n_encoder_layers,
            "decoder_layers": c.n_decoder_layers, "encoder_attention_heads": c.n_heads,
            "decoder_attention_heads": c.n_heads, "encoder_ffn_dim": c.ff_width, "decoder_ffn_dim": c.ff_width,
            "activation_function": _TO_HF_ACTIVATION[c.activation], "dropout": c.dropout,
            "attention_dropout": c.attention_dropout, "activation_dropout": c.activation_dropout,
            "scale_embedding": c.scale_embedding, "pad_token_id": c.pad_token_id, "eos_token_id": c.eos_token_id,
            "decoder_start_token_id": c.decoder_start_token_id, "forced_eos_token_id": None,
            "tie_word_embeddings": True, "is_encoder_decoder": True, "encoder_layerdrop": 0.0,
            "decoder_layerdrop": 0.0}


def from_hf_marian(hf_model: Any, attention_backend: str = "sdpa") -> Transformer:
    """A minitx Transformer with the weights of a `transformers.MarianMTModel`, in eval mode."""
    if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
        raise TypeError(f"hf_model: expected a transformers MarianMTModel, got {type(hf_model).__name__}")
    config = config_from_hf_marian(hf_model.config, attention_backend)
    model = Transformer(config)
    model.load_state_dict(_minitx_state(hf_model.state_dict(), config), strict=True)
    return model.eval()


def to_hf_marian(model: Transformer) -> Any:
    """A `transformers.MarianMTModel` (eval mode) with `model`'s weights; imports transformers lazily."""
    fields = hf_marian_config_dict(model)
    try:
        import transformers
    except ImportError as err:  # an interop helper: transformers is a dev extra, never a runtime dependency
        raise ImportError("to_hf_marian needs `transformers` (pip install 'minitx[dev]')") from err
    fields = {k: v for k, v in fields.items() if k not in ("architectures", "model_type")}
    hf = transformers.MarianMTModel(transformers.MarianConfig(**fields))
    state = _hf_state(model)
    if not model.config.share_embeddings:
        state.pop("model.shared.weight", None)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if "embed_positions" not in k and k != "model.shared.weight"]
    if missing or unexpected:
        raise ValueError(f"model: Marian tensors left unset {missing[:5]} or unknown {unexpected[:5]}")
    return hf.eval()


def load_hf_marian(path: str | Path, attention_backend: str = "sdpa") -> Transformer:
    """A Transformer from a MarianMTModel `save_pretrained` directory (config.json + weights), eval mode."""
    config = config_from_hf_marian(read_hf_config(path), attention_backend)
    model = Transformer(config)
    model.load_state_dict(_minitx_state(read_hf_state(path), config), strict=True)
    return model.eval()


def save_hf_marian(model: Transformer, path: str | Path) -> dict[str, Path]:
    """Write `model` as a MarianMTModel directory: config.json and model.safetensors (no tokenizer files)."""
    from safetensors.torch import save_file
    config = hf_marian_config_dict(model)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"config": out / "config.json", "weights": out / "model.safetensors"}
    paths["config"].write_text(json.dumps({**config, "dtype": "float32"}, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.float().contiguous() for k, v in _hf_state(model).items()}, str(paths["weights"]),
              metadata={"format": "pt"})
    return paths
