"""Hugging Face GPT-2 <-> minitx GPT: the same weights under two layouts.

`transformers` is never a runtime dependency: `from_hf_gpt2` reads any `GPT2LMHeadModel` object it is given,
and `to_hf_gpt2` imports `transformers` inside the function only, to build one.

GPT-2 stores its projections as `Conv1D` with weight (in, out), the transpose of `nn.Linear`, and fuses the
query, key and value projections into one `c_attn` of width 3C; the map below splits and transposes.
GPT-2's own activation is "gelu_new" (the tanh GELU, dec.5): it maps to `activation="gelu_tanh"`, and HF's
"gelu" (exact erf) to minitx's default "gelu".
"""

from __future__ import annotations

from typing import Any

import torch

from minitx.models.gpt import GPT, GPTConfig

__all__ = ["from_hf_gpt2", "to_hf_gpt2", "config_from_hf_gpt2"]

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_LAYER = {  # HF name inside transformer.h.{i} -> minitx name inside blocks.{i} (c_attn is split, see below)
    "ln_1": "attention_norm", "attn.c_proj": "attention.out_proj", "ln_2": "ffn_norm",
    "mlp.c_fc": "feed_forward.fc_in", "mlp.c_proj": "feed_forward.fc_out",
}
_CONV1D = ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some transformers versions keep


def config_from_hf_gpt2(hf_config: Any, attention_backend: str = "sdpa") -> GPTConfig:
    """A GPTConfig with the sizes, eps and dropout of a `transformers.GPT2Config`; refuses what minitx lacks."""
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(f"hf_config.activation_function: expected one of {sorted(_ACTIVATIONS)}, got {act!r}")
    for name, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                     ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
        if getattr(hf_config, name, ok) != ok:
            raise ValueError(f"hf_config.{name}: minitx GPT needs {ok}, got {getattr(hf_config, name)!r}")
    return GPTConfig(vocab_size=hf_config.vocab_size, max_position=hf_config.n_positions,
                     d_model=hf_config.n_embd, n_layers=hf_config.n_layer, n_heads=hf_config.n_head,
                     d_ff=hf_config.n_inner or 0, dropout=hf_config.resid_pdrop,
                     attention_dropout=hf_config.attn_pdrop, layer_norm_eps=hf_config.layer_norm_epsilon,
                     activation=_ACTIVATIONS[act], attention_backend=attention_backend,
                     initializer_range=hf_config.initializer_range)


def _hf_to_minitx(hf_state: dict[str, torch.Tensor], n_layers: int, d_model: int) -> dict[str, torch.Tensor]:
    """Every HF tensor -> its minitx name and layout; a leftover HF tensor raises ValueError."""
    state = dict(hf_state)
    out = {"token.weight": state.pop("transformer.wte.weight"), "position.weight": state.pop("transformer.wpe.weight"),
           "final_norm.weight": state.pop("transformer.ln_f.weight"),
           "final_norm.bias": state.pop("transformer.ln_f.bias")}
    state.pop("lm_head.weight", None)  # tied to wte in both models
    for i in range(n_layers):
        hf, ours = f"transformer.h.{i}.", f"blocks.{i}."
        w, b = state.pop(hf + "attn.c_attn.weight"), state.pop(hf + "attn.c_attn.bias")  # (C, 3C), (3C,)
        for j, role in enumerate(("q_proj", "k_proj", "v_proj")):
            out[ours + f"attention.{role}.weight"] = w[:, j * d_model:(j + 1) * d_model].t()  # Conv1D -> Linear
            out[ours + f"attention.{role}.bias"] = b[j * d_model:(j + 1) * d_model]
        for hf_name, name in _LAYER.items():
            weight = state.pop(hf + hf_name + ".weight")
            out[ours + name + ".weight"] = weight.t() if hf_name in _CONV1D else weight
            out[ours + name + ".bias"] = state.pop(hf + hf_name + ".bias")
    leftover = [k for k in state if not k.endswith(_BUFFERS)]
    if leftover:
        raise ValueError(f"hf_model: tensors with no minitx home: {leftover[:5]}")
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def from_hf_gpt2(hf_model: Any, attention_backend: str = "sdpa") -> GPT:
    """A minitx GPT with the weights of a `transformers.GPT2LMHeadModel` (any size), in eval mode."""
    if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
        raise TypeError(f"hf_model: expected a transformers GPT2LMHeadModel, got {type(hf_model).__name__}")
    config = config_from_hf_gpt2(hf_model.config, attention_backend)
    model = GPT(config)
    state = _hf_to_minitx(hf_model.state_dict(), config.n_layers, config.d_model)
    model.load_state_dict(state, strict=True)
    return model.eval()


def to_hf_gpt2(model: GPT) -> Any:
    """A `transformers.GPT2LMHeadModel` (eval mode) with `model`'s weights; imports transformers lazily."""
    if not isinstance(model, GPT):
        raise TypeError(f"model: expected a minitx GPT, got {type(model).__name__}")
    try:
        import transformers
    except ImportError as err:  # an interop helper: transformers is a dev extra, never a runtime dependency
        raise ImportError("to_hf_gpt2 needs `transformers` (pip install 'minitx[dev]')") from err
    c = model.config
    if not c.bias:
        raise ValueError("model: GPT-2 has biases everywhere; a GPTConfig(bias=False) model has none to give")
    if c.n_kv_heads not in (0, c.n_heads):
        raise ValueError(f"model: GPT-2 has as many key/value heads as query heads; this model has "
                         f"n_kv_heads={c.n_kv_heads} for n_heads={c.n_heads} (grouped-query attention)")
    act = {"gelu": "gelu", "gelu_tanh": "gelu_new"}[c.activation]
    hf_config = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.max_position, n_embd=c.d_model, n_layer=c.n_layers,
        n_head=c.n_heads, n_inner=c.ff_width, activation_function=act, resid_pdrop=c.dropout,
        embd_pdrop=c.dropout, attn_pdrop=c.attention_dropout, layer_norm_epsilon=c.layer_norm_eps,
        initializer_range=c.initializer_range, bos_token_id=None, eos_token_id=None, tie_word_embeddings=True)
    hf = transformers.GPT2LMHeadModel(hf_config)
    ours = model.state_dict()
    state = {"transformer.wte.weight": ours["token.weight"], "transformer.wpe.weight": ours["position.weight"],
             "transformer.ln_f.weight": ours["final_norm.weight"], "transformer.ln_f.bias": ours["final_norm.bias"],
             "lm_head.weight": ours["token.weight"]}
    for i in range(c.n_layers):
        hf_p, p = f"transformer.h.{i}.", f"blocks.{i}."
        roles = ("q_proj", "k_proj", "v_proj")
        state[hf_p + "attn.c_attn.weight"] = torch.cat([ours[p + f"attention.{r}.weight"].t() for r in roles], 1)
        state[hf_p + "attn.c_attn.bias"] = torch.cat([ours[p + f"attention.{r}.bias"] for r in roles])
        for hf_name, name in _LAYER.items():
            weight = ours[p + name + ".weight"]
            state[hf_p + hf_name + ".weight"] = weight.t() if hf_name in _CONV1D else weight
            state[hf_p + hf_name + ".bias"] = ours[p + name + ".bias"]
    missing, unexpected = hf.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()},
                                             strict=False)
    missing = [k for k in missing if not k.endswith(_BUFFERS)]
    if missing or unexpected:
        raise ValueError(f"model: HF GPT-2 tensors left unset {missing[:5]} or unknown {unexpected[:5]}")
    hf.tie_weights()
    return hf.eval()
