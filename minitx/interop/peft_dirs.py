"""PEFT adapter directories (adapter_config.json + adapter_model.safetensors) read and written without `peft`.

minitx's LoRA (lora.1: y = x W^T + b + s x A^T B^T, s = alpha / r, or alpha / sqrt(r) with rsLoRA) is PEFT's
LoRA with the same A (r, in) and B (out, r) shapes, so an adapter moves over by renaming: minitx's
"bert.blocks.0.attention.q_proj.lora_A" is PEFT's "base_model.model.bert.encoder.layer.0.attention.self.query
.lora_A.weight" (the Hugging Face BERT name, minitx.interop). Trainable modules kept whole (a classifier head,
the pooler) are PEFT's `modules_to_save`. target_modules are written as full module names, so PEFT's suffix
matching cannot pick up a module minitx did not wrap ("output.dense" would also match "attention.output.dense").
Options minitx's LoRA cannot represent (DoRA, fan_in_fan_out, per-module ranks, trained biases, ...) are refused
by name when reading.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minitx.interop.bert import add_identity_pooler, hf_to_minitx_names
from minitx.interop.hf_dirs import is_hf_checkpoint_dir, load_weight_file
from minitx.models.bert import BertForMaskedLM, BertForSequenceClassification
from minitx.peft.lora import LoRALinear, apply_lora

PREFIX = "base_model.model."
# adapter_config.json options and the only value minitx's LoRA can take (None / {} / [] mean "unused").
_UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
                "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "layer_replication": None,
                "target_parameters": None, "trainable_token_indices": None, "use_qalora": False,
                "alora_invocation_tokens": None, "megatron_config": None}

# Only how A and B were initialised, which the saved weights make irrelevant.
_INIT_ONLY = {"loftq_config", "eva_config", "corda_config", "lora_ga_config"}


def hf_parameter_names(model: nn.Module) -> dict[str, str]:
    """minitx parameter name -> Hugging Face name, for a BertForMaskedLM or a BertForSequenceClassification."""
    n_layers = model.config.n_layers
    names = {ours: hf for hf, ours in hf_to_minitx_names(n_layers).items()}
    if isinstance(model, BertForSequenceClassification):
        names = {o: h for o, h in names.items() if h.startswith("bert.")}
        names.update({f"pooler.dense.{k}": f"bert.pooler.dense.{k}" for k in ("weight", "bias")})
        names.update({f"classifier.{k}": f"classifier.{k}" for k in ("weight", "bias")})
    elif not isinstance(model, BertForMaskedLM):
        raise TypeError(f"model: expected a minitx BertForMaskedLM or BertForSequenceClassification, "
                        f"got {type(model).__name__}")
    return names


def _module_names(model: nn.Module) -> dict[str, str]:
    """minitx module name -> HF module name (a parameter's name without its last part)."""
    return {o.rsplit(".", 1)[0]: h.rsplit(".", 1)[0] for o, h in hf_parameter_names(model).items()}


def _plain_name(name: str) -> str:
    """A parameter name as it is without LoRA wrappers: "x.q_proj.base.weight" -> "x.q_proj.weight"."""
    return name.replace(".base.", ".")


def _lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    found = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not found:
        raise ValueError("model: has no LoRA modules (apply_lora first)")
    merged = [n for n, m in found.items() if m.merged]
    if merged:
        raise ValueError(f"model: LoRA modules already merged (lora.6), their A and B are folded in: {merged[:3]}")
    settings = {(m.r, m.alpha, m.dropout, m.use_rslora) for m in found.values()}
    if len(settings) > 1:
        raise ValueError(f"model: LoRA modules with different (r, alpha, dropout, use_rslora) {sorted(settings)}; "
                         f"a PEFT adapter directory written here holds one setting")
    return found


def peft_adapter_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(adapter_model.safetensors tensors, adapter_config.json fields) of a minitx model with unmerged LoRA."""
    loras, modules = _lora_modules(model), _module_names(model)
    params = hf_parameter_names(model)
    state, saved = {}, set()
    for name, lora in loras.items():
        if name not in modules:
            raise ValueError(f"model: LoRA on {name!r}, which has no Hugging Face BERT name")
        state[f"{PREFIX}{modules[name]}.lora_A.weight"] = lora.lora_A.detach().clone()
        state[f"{PREFIX}{modules[name]}.lora_B.weight"] = lora.lora_B.detach().clone()
    for name, p in model.named_parameters():
        if not p.requires_grad or name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
            continue
        hf = params.get(_plain_name(name))
        if hf is None or ".lora" in name:
            raise ValueError(f"model: trainable parameter {name!r} has no Hugging Face BERT name")
        state[PREFIX + hf] = p.detach().clone()
        saved.add(hf.rsplit(".", 1)[0])
    any_lora = next(iter(loras.values()))
    fields = {"peft_type": "LORA", "r": any_lora.r, "lora_alpha": any_lora.alpha, "lora_dropout": any_lora.dropout,
              "use_rslora": any_lora.use_rslora, "target_modules": sorted(modules[n] for n in loras),
              "modules_to_save": sorted(saved) or None, "bias": "none", "fan_in_fan_out": False,
              "use_dora": False, "init_lora_weights": True, "inference_mode": True,
              "task_type": "SEQ_CLS" if isinstance(model, BertForSequenceClassification) else None}
    return state, fields


def save_peft_adapter(model: nn.Module, path: str | Path, base_model_name_or_path: str | None = None
                      ) -> dict[str, Path]:
    """Write `path`/adapter_config.json + adapter_model.safetensors, which `peft.PeftModel.from_pretrained(
    hf_model, path)` loads onto the Hugging Face model with minitx's base weights (`to_hf_bert`, export)."""
    from safetensors.torch import save_file
    state, fields = peft_adapter_state(model)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"adapter_config": out / "adapter_config.json", "adapter_model": out / "adapter_model.safetensors"}
    fields["base_model_name_or_path"] = base_model_name_or_path
    paths["adapter_config"].write_text(json.dumps(fields, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(paths["adapter_model"]),
              metadata={"format": "pt"})
    return paths


def read_peft_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config, weights) of a PEFT LoRA directory; options minitx cannot represent are refused by name."""
    path = Path(path)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise ValueError(f"path: expected a PEFT adapter directory with adapter_config.json, got {str(path)!r}")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"path: {str(cfg_file)!r} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"adapter_config.peft_type: minitx reads LoRA adapters ('LORA'), got {got!r}")
    for name, supported in _UNSUPPORTED.items():
        value = config.get(name, supported)
        if value != supported and not (supported in (None, {}) and not value):
            raise ValueError(f"adapter_config.{name}: minitx's LoRA supports only {supported!r}, got {value!r}")
    for name, value in config.items():  # variants newer PEFT versions add: use_* switches and *_config blocks
        variant = (name.startswith("use_") and name != "use_rslora") or (
            name.endswith("_config") and name not in _INIT_ONLY)
        if variant and value:
            raise ValueError(f"adapter_config.{name}: a LoRA variant minitx's LoRA does not implement, got {value!r}")
    _check_lora_numbers(config)
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (path / name).is_file():
            return config, load_weight_file(path / name)  # never unpickles code; a damaged file is named
    raise ValueError(f"path: {str(path)!r} has no adapter_model.safetensors (or adapter_model.bin)")


def _check_lora_numbers(config: dict[str, Any]) -> None:
    """r, lora_alpha, lora_dropout and use_rslora as PEFT writes them (JSON numbers and booleans): a string
    "false" would otherwise read as True."""
    r, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"adapter_config.r: expected an int >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
        raise ValueError(f"adapter_config.lora_alpha: expected a number > 0, got {alpha!r}")
    dropout = config.get("lora_dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0 <= dropout < 1):
        raise ValueError(f"adapter_config.lora_dropout: expected a number in [0, 1) or null, got {dropout!r}")
    rslora = config.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise ValueError(f"adapter_config.use_rslora: expected true or false, got {rslora!r}")


def _split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """({HF module: {"lora_A": A, "lora_B": B}}, {HF parameter: tensor} of modules_to_save)."""
    loras: dict[str, dict[str, torch.Tensor]] = {}
    whole = {}
    for key, value in state.items():
        if not key.startswith(PREFIX):
            raise ValueError(f"adapter_model: key {key!r} does not start with {PREFIX!r}")
        key = key[len(PREFIX):]
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.default)?\.weight", key)
        if match:
            loras.setdefault(match.group(1), {})[match.group(2)] = value
        else:
            whole[key] = value
    return loras, whole


@torch.no_grad()
def load_peft_adapter(model: nn.Module, path: str | Path) -> list[str]:
    """Wrap the modules a PEFT LoRA directory adapts in LoRALinear, load its A, B and modules_to_save, in place.

    `model` is a minitx BertForMaskedLM or BertForSequenceClassification holding the base weights the adapter
    was trained on (e.g. `from_hf_bert`, `load_hf_pretrained`); returns the minitx module names wrapped."""
    config, state = read_peft_adapter(path)
    loras, whole = _split_state(state)
    to_ours = {h: o for o, h in _module_names(model).items()}
    params = {h: o for o, h in hf_parameter_names(model).items()}
    unknown = sorted(set(loras) - set(to_ours)) + sorted(set(whole) - set(params))
    if unknown:
        raise ValueError(f"adapter_model: names with no place in this minitx model: {unknown[:5]}")
    broken = [m for m, ab in loras.items() if set(ab) != {"lora_A", "lora_B"}]
    if not loras or broken:
        raise ValueError(f"adapter_model: expected lora_A and lora_B for each adapted module, "
                         f"got {broken[:3] or 'none'}")
    r = config["r"]
    own = dict(model.named_parameters())
    # Every tensor is checked before anything is wrapped, so a refused adapter leaves the model as it was.
    for module, ab in loras.items():
        base = model.get_submodule(to_ours[module])
        if not isinstance(base, nn.Linear):
            raise ValueError(f"adapter_model: {module} is not a Linear layer in this model (already adapted?)")
        _check_tensor(ab["lora_A"], (r, base.in_features), f"{module}.lora_A")
        _check_tensor(ab["lora_B"], (base.out_features, r), f"{module}.lora_B")
    for key, value in whole.items():
        _check_tensor(value, tuple(own[params[key]].shape), key)
    targets = ["re:" + re.escape(to_ours[m]) for m in sorted(loras)]
    kept = sorted({params[k].rsplit(".", 1)[0] for k in whole})
    names = apply_lora(model, targets, r, float(config["lora_alpha"]), float(config.get("lora_dropout") or 0.0),
                       config.get("use_rslora", False), trainable_modules=["re:" + re.escape(k) for k in kept])
    for module, ab in loras.items():
        lora = model.get_submodule(to_ours[module])
        for kind in ("lora_A", "lora_B"):
            getattr(lora, kind).copy_(ab[kind])
    own = dict(model.named_parameters())
    for key, value in whole.items():
        own[params[key]].copy_(value)
    return names


def _check_tensor(value: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if not value.is_floating_point():
        raise ValueError(f"adapter_model: {name} has dtype {value.dtype}; expected floating-point weights")
    if tuple(value.shape) != shape:
        raise ValueError(f"adapter_model: {name} has shape {tuple(value.shape)}, the model expects "
                         f"{shape} (another base model or rank?)")


def export_lora_run(run_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """A `minitx finetune --method lora` run's adapter (lora_adapter.safetensors) as a PEFT adapter directory."""
    from safetensors.torch import load_file
    from minitx.training.checkpoint import read_checkpoint
    from minitx.models.bert import BertConfig
    from minitx.peft.lora import load_lora_state_dict
    run_dir = Path(run_dir)
    adapter, ckpt = run_dir / "lora_adapter.safetensors", run_dir / "checkpoint.pt"
    if not (adapter.is_file() and ckpt.is_file()):
        raise ValueError(f"run: expected a LoRA fine-tuning run (checkpoint.pt and lora_adapter.safetensors), "
                         f"got {str(run_dir)!r}")
    payload = read_checkpoint(ckpt)
    extra, run = payload.get("extra_state") or {}, payload.get("config") or {}
    info = extra["classifier"]
    use_pooler = info["use_pooler"]
    model = BertForSequenceClassification(BertConfig.from_dict(extra["model_config"]), info["num_labels"], use_pooler)
    apply_lora(model, run["lora_targets"], run["lora_r"], run["lora_alpha"], run["lora_dropout"],
               trainable_modules=("classifier", "pooler") if use_pooler else ("classifier",))
    load_lora_state_dict(model, load_file(str(adapter)))
    if not use_pooler:  # Hugging Face always pools (bert.4): an identity pooler joins modules_to_save (bert.6)
        add_identity_pooler(model)
    base = run.get("from_checkpoint")
    base = str(Path(base).resolve()) if base and is_hf_checkpoint_dir(base) else None
    return save_peft_adapter(model, out_dir, base)
