"""Hugging Face Llama <-> minitx Llama: the same weights under two names, and HF checkpoint directories both ways.

`transformers` is never a runtime dependency: `from_hf_llama` reads any `LlamaForCausalLM` object it is given,
`load_hf_llama` reads a directory (config.json + safetensors, as `save_pretrained` writes it) with
`minitx.interop.hf_dirs`, and `to_hf_llama` imports `transformers` inside the function only. Nothing needs
transposing: HF Llama stores plain `nn.Linear` weights with the same split-halves RoPE pairing (`rotate_half`)
as `minitx.positional.rope`. Options minitx does not represent (rope scaling, attention or MLP biases, another
activation, a head dim other than C / H, a sliding window, ...) are refused by name, never silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from minitx.interop.hf_dirs import read_hf_config, read_hf_state
from minitx.models.llama import Llama, LlamaConfig

__all__ = ["from_hf_llama", "to_hf_llama", "config_from_hf_llama", "hf_llama_config_dict", "load_hf_llama",
           "save_hf_llama"]

_LAYER = {  # HF name inside model.layers.{i} -> minitx name inside blocks.{i}
    "self_attn.q_proj": "attention.q_proj", "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj", "self_attn.o_proj": "attention.out_proj",
    "mlp.gate_proj": "feed_forward.gate_proj", "mlp.up_proj": "feed_forward.up_proj",
    "mlp.down_proj": "feed_forward.down_proj",
    "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}
_REFUSED = {  # HF config field -> the value minitx's Llama needs (absent counts as that value)
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "rope_scaling": None, "sliding_window": None,
    "use_sliding_window": False, "pretraining_tp": 1, "qk_norm": False,
}


def _rope_theta(values: dict[str, Any]) -> float:
    """rope_theta from transformers 5's `rope_parameters` or the older top-level field; scaling refused."""
    params = values.get("rope_parameters")
    if isinstance(params, dict):
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"hf_config.rope_parameters.rope_type: minitx's RoPE is the default (unscaled) one, "
                             f"got {rope_type!r}")
        extra = sorted(set(params) - {"rope_type", "type", "rope_theta"})
        if extra:
            raise ValueError(f"hf_config.rope_parameters: minitx has no {extra}")
        return float(params.get("rope_theta", values.get("rope_theta", 10000.0)))
    return float(values.get("rope_theta", 10000.0))


def config_from_hf_llama(hf_config: Any, attention_backend: str = "sdpa") -> LlamaConfig:
    """A LlamaConfig from a `transformers.LlamaConfig` or its config.json dict; refuses what minitx lacks by name."""
    values = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    model_type = values.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"hf_config.model_type: expected 'llama', got {model_type!r}")
    for name, needed in _REFUSED.items():
        got = values.get(name, needed)
        if name == "rope_scaling" and isinstance(got, dict) and got.get("rope_type", got.get("type")) == "default":
            got = None  # an explicit default scaling is no scaling
        if got != needed:
            raise ValueError(f"hf_config.{name}: minitx's Llama needs {needed!r}, got {got!r}")
    hidden, heads = values["hidden_size"], values["num_attention_heads"]
    head_dim = values.get("head_dim") or hidden // heads
    if head_dim * heads != hidden:
        raise ValueError(f"hf_config.head_dim: minitx's Llama uses hidden_size / num_attention_heads = "
                         f"{hidden // heads}, got {head_dim}")
    kv = values.get("num_key_value_heads") or heads
    return LlamaConfig(vocab_size=values["vocab_size"], max_position=values["max_position_embeddings"],
                       d_model=hidden, n_layers=values["num_hidden_layers"], n_heads=heads,
                       n_kv_heads=0 if kv == heads else kv, d_ff=values["intermediate_size"],
                       rms_norm_eps=float(values.get("rms_norm_eps", 1e-6)), rope_theta=_rope_theta(values),
                       tie_embeddings=bool(values.get("tie_word_embeddings", False)),
                       attention_dropout=float(values.get("attention_dropout", 0.0)),
                       attention_backend=attention_backend,
                       initializer_range=float(values.get("initializer_range", 0.02)))


def hf_llama_config_dict(config: LlamaConfig) -> dict[str, Any]:
    """config.json fields of the `LlamaForCausalLM` equal to a minitx Llama (Llama's parts only)."""
    for name, needed in (("norm", "rms"), ("feed_forward", "swiglu"), ("position", "rope"), ("sliding_window", 0),
                         ("dropout", 0.0)):
        if getattr(config, name) != needed:
            raise ValueError(f"model.config.{name}: Hugging Face's Llama has {needed!r}, this model "
                             f"{getattr(config, name)!r}")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
            "hidden_size": config.d_model, "intermediate_size": config.ff_width,
            "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
            "num_key_value_heads": config.kv_heads, "head_dim": config.d_model // config.n_heads,
            "hidden_act": "silu", "max_position_embeddings": config.max_position,
            "initializer_range": config.initializer_range, "rms_norm_eps": config.rms_norm_eps,
            "tie_word_embeddings": config.tie_embeddings, "rope_theta": config.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta}, "rope_scaling": None,
            "attention_bias": False, "attention_dropout": config.attention_dropout, "mlp_bias": False,
            "pretraining_tp": 1, "use_cache": True, "bos_token_id": None, "eos_token_id": None,
            "pad_token_id": None, "dtype": "float32"}


def _hf_to_minitx(hf_state: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Every HF tensor -> its minitx name; a leftover HF tensor raises ValueError."""
    state = dict(hf_state)
    out = {"token.weight": state.pop("model.embed_tokens.weight"), "final_norm.weight": state.pop("model.norm.weight")}
    head = state.pop("lm_head.weight", None)
    if not config.tie_embeddings:
        if head is None:
            raise ValueError("hf_model: tie_word_embeddings is false but there is no lm_head.weight")
        out["head.weight"] = head
    elif head is not None and not torch.equal(head, out["token.weight"]):
        raise ValueError("hf_model: tie_word_embeddings is true but lm_head.weight differs from embed_tokens")
    for i in range(config.n_layers):
        for hf_name, name in _LAYER.items():
            out[f"blocks.{i}.{name}.weight"] = state.pop(f"model.layers.{i}.{hf_name}.weight")
    leftover = [k for k in state if not k.endswith("rotary_emb.inv_freq")]
    if leftover:
        raise ValueError(f"hf_model: tensors with no minitx home: {leftover[:5]}")
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def hf_state_from_llama(model: Llama) -> dict[str, torch.Tensor]:
    """The HF `LlamaForCausalLM` state dict of a minitx Llama (lm_head left out when tied, as save_pretrained)."""
    hf_llama_config_dict(model.config)
    ours = model.state_dict()
    state = {"model.embed_tokens.weight": ours["token.weight"], "model.norm.weight": ours["final_norm.weight"]}
    if not model.config.tie_embeddings:
        state["lm_head.weight"] = ours["head.weight"]
    for i in range(model.config.n_layers):
        for hf_name, name in _LAYER.items():
            state[f"model.layers.{i}.{hf_name}.weight"] = ours[f"blocks.{i}.{name}.weight"]
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def from_hf_llama(hf_model: Any, attention_backend: str = "sdpa") -> Llama:
    """A minitx Llama with the weights of a `transformers.LlamaForCausalLM`, in eval mode."""
    if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
        raise TypeError(f"hf_model: expected a transformers LlamaForCausalLM, got {type(hf_model).__name__}")
    config = config_from_hf_llama(hf_model.config, attention_backend)
    model = Llama(config)
    model.load_state_dict(_hf_to_minitx(hf_model.state_dict(), config), strict=True)
    return model.eval()


def to_hf_llama(model: Llama) -> Any:
    """A `transformers.LlamaForCausalLM` (eval mode) with `model`'s weights; imports transformers lazily."""
    if not isinstance(model, Llama):
        raise TypeError(f"model: expected a minitx Llama, got {type(model).__name__}")
    try:
        import transformers
    except ImportError as err:  # an interop helper: transformers is a dev extra, never a runtime dependency
        raise ImportError("to_hf_llama needs `transformers` (pip install 'minitx[dev]')") from err
    fields = hf_llama_config_dict(model.config)
    fields.pop("architectures"), fields.pop("model_type"), fields.pop("dtype")
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
    state = hf_state_from_llama(model)
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"model: HF Llama tensors left unset {missing[:5]} or unknown {unexpected[:5]}")
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def load_hf_llama(path: str | Path, attention_backend: str = "sdpa") -> Llama:
    """A minitx Llama (eval mode) from a Hugging Face directory (config.json + model.safetensors or shards);
    never executes code from it."""
    config = config_from_hf_llama(read_hf_config(path), attention_backend)
    model = Llama(config)
    model.load_state_dict(_hf_to_minitx(read_hf_state(path), config), strict=True)
    return model.eval()


def save_hf_llama(model: Llama, path: str | Path) -> dict[str, Path]:
    """Write config.json + model.safetensors as `LlamaForCausalLM.save_pretrained` does (tied head left out), which
    `transformers.LlamaForCausalLM.from_pretrained(path)` loads."""
    from safetensors.torch import save_file
    if not isinstance(model, Llama):
        raise TypeError(f"model: expected a minitx Llama, got {type(model).__name__}")
    fields = hf_llama_config_dict(model.config)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"config": out / "config.json", "weights": out / "model.safetensors"}
    paths["config"].write_text(json.dumps(fields, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.float() for k, v in hf_state_from_llama(model).items()}, str(paths["weights"]),
              metadata={"format": "pt"})
    return paths
