"""Hugging Face checkpoint directories (what `save_pretrained` writes) read and written without `transformers`.

A BERT directory holds `config.json`, the weights (`model.safetensors`, read with safetensors, or an older
`pytorch_model.bin`, read with `torch.load(weights_only=True)`; sharded `*.index.json` variants too), and the
tokenizer: `vocab.txt` plus `tokenizer_config.json` (`do_lower_case` sets the casing). Reading never executes
code from the directory. Writing produces the files `transformers.BertForMaskedLM.from_pretrained` /
`BertForSequenceClassification.from_pretrained` and `BertTokenizer.from_pretrained` load, with config.json
written by hand. Configs minitx cannot represent are refused naming the option (minitx.interop).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from minitx.interop.bert import (add_identity_pooler, check_state_shapes, config_from_hf, hf_config_dict,
                                 hf_state_from_minitx, hf_to_minitx_names, minitx_state_from_hf)
from minitx.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from minitx.tokenizers.wordpiece import WordPieceTokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
            "mask_token": "[MASK]"}
POOLER = {"bert.pooler.dense.weight": "pooler.dense.weight", "bert.pooler.dense.bias": "pooler.dense.bias"}
CLASSIFIER = ("classifier.weight", "classifier.bias")


def is_hf_checkpoint_dir(path: str | Path) -> bool:
    """A directory with a config.json and no minitx checkpoint.pt."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "checkpoint.pt").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"path: {str(path)!r} is not a readable JSON file ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"path: {str(path)!r}: expected a JSON object, got {type(value).__name__}")
    return value


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """config.json of a Hugging Face checkpoint directory, as a dict."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ValueError(f"path: expected a Hugging Face checkpoint directory with config.json, got {str(path)!r}")
    return _read_json(file)


def load_weight_file(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one weights file (safetensors, or a weights-only pickle: never executes code); a damaged,
    truncated or foreign file is a ValueError naming it."""
    if not file.is_file():
        raise ValueError(f"path: expected a weights file, got {str(file)!r} (no such file)")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:  # the header is checked against the file's length before anything is allocated
            state = load_file(str(file))
        except Exception as err:  # noqa: BLE001 (SafetensorError and friends: a damaged or foreign file)
            raise ValueError(f"path: {str(file)!r} is not a readable safetensors file "
                             f"({type(err).__name__}: {err})") from None
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)  # never unpickles code
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"path: {str(file)!r} is not a weights-only PyTorch state dict "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"path: {str(file)!r}: expected a dict of named tensors, got {type(state).__name__}")
    return state


def read_hf_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint directory (float32, HF names), safetensors preferred, shards followed."""
    path = Path(path)
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            files = [path / name]
            break
        index = path / f"{name}.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"path: {str(index)!r}: expected a 'weight_map' object")
            bad = next(((k, f) for k, f in weight_map.items() if not isinstance(f, str) or not f), None)
            if bad is not None:
                raise ValueError(f"path: {str(index)!r}: weight_map[{bad[0]!r}]: expected a file name (str), "
                                 f"got {bad[1]!r}")
            files = [path / Path(f).name for f in sorted(set(weight_map.values()))]  # no escaping the directory
            break
    else:
        raise ValueError(f"path: {str(path)!r} holds no weights (expected one of {list(WEIGHT_FILES)} "
                         f"or a sharded *.index.json)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_weight_file(file))
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def read_hf_tokenizer(path: str | Path) -> WordPieceTokenizer:
    """The WordPiece tokenizer of a checkpoint directory: vocab.txt (one token per line, id = line number) with
    tokenizer_config.json's casing (do_lower_case, BERT's default True), or else tokenizer.json (what
    transformers 5 writes). Options minitx's pre-tokenizer does not follow are refused by name."""
    path = Path(path)
    settings = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    if (path / "vocab.txt").is_file():
        lowercase = settings.get("do_lower_case", True)
        _check_normalizer(lowercase, settings.get("strip_accents"), settings.get("tokenize_chinese_chars", True),
                          "tokenizer_config")
        return _from_vocab_file(path / "vocab.txt", lowercase)
    if (path / "tokenizer.json").is_file():
        return _from_tokenizer_json(_read_json(path / "tokenizer.json"))
    raise ValueError(f"path: {str(path)!r} has neither vocab.txt nor tokenizer.json (only BERT WordPiece "
                     f"tokenizers are supported)")


def _check_normalizer(lowercase: Any, strip_accents: Any, chinese: Any, where: str) -> None:
    if not isinstance(lowercase, bool):
        raise ValueError(f"{where}.do_lower_case: expected true or false, got {lowercase!r}")
    if strip_accents is not None and strip_accents != lowercase:  # minitx strips accents iff it lowercases
        raise ValueError(f"{where}.strip_accents: minitx strips accents exactly when it lowercases "
                         f"(lowercase={lowercase}), got {strip_accents!r}")
    if chinese is not True:
        raise ValueError(f"{where}.tokenize_chinese_chars: minitx always splits CJK characters, got {chinese!r}")


def _from_vocab_file(file: Path, lowercase: bool) -> WordPieceTokenizer:
    if hasattr(WordPieceTokenizer, "from_vocab_file"):  # special ids found by name, in any order
        return WordPieceTokenizer.from_vocab_file(file, lowercase=lowercase)
    text = file.read_text(encoding="utf-8")
    vocab = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    return WordPieceTokenizer([t.rstrip("\r") for t in vocab], lowercase=lowercase)


def _from_tokenizer_json(state: dict[str, Any]) -> WordPieceTokenizer:
    """A `tokenizers` JSON file with BERT's normalizer, pre-tokenizer and a WordPiece model."""
    model, norm = state.get("model") or {}, state.get("normalizer") or {}
    checks = (("model.type", model.get("type"), "WordPiece"), ("normalizer.type", norm.get("type"), "BertNormalizer"),
              ("pre_tokenizer.type", (state.get("pre_tokenizer") or {}).get("type"), "BertPreTokenizer"),
              ("model.continuing_subword_prefix", model.get("continuing_subword_prefix", "##"), "##"),
              ("model.unk_token", model.get("unk_token", "[UNK]"), "[UNK]"))
    for name, got, expected in checks:
        if got != expected:
            raise ValueError(f"tokenizer.json {name}: minitx reads BERT WordPiece tokenizers ({expected!r}), "
                             f"got {got!r}")
    lowercase = norm.get("lowercase", True)
    _check_normalizer(lowercase, norm.get("strip_accents"), norm.get("handle_chinese_chars", True), "tokenizer.json")
    ids = model.get("vocab")
    if not isinstance(ids, dict) or sorted(ids.values()) != list(range(len(ids))):
        raise ValueError("tokenizer.json model.vocab: expected {token: id} with ids 0..n-1")
    vocab = sorted(ids, key=ids.get)
    return WordPieceTokenizer(vocab, lowercase=lowercase,
                              max_input_chars_per_word=model.get("max_input_chars_per_word", 100))


def load_hf_encoder(path: str | Path) -> tuple[BertConfig, dict[str, torch.Tensor], dict[str, torch.Tensor],
                                              WordPieceTokenizer]:
    """(config, minitx encoder state "bert.*", pooler state "pooler.*" (empty if the checkpoint has none),
    tokenizer) of any BERT checkpoint directory (BertModel, BertForMaskedLM, BertForPreTraining, a classifier:
    its head is left out, as a new head is trained)."""
    config = config_from_hf(read_hf_config(path), mlm_head=False)
    ours, extra = minitx_state_from_hf(read_hf_state(path), config.n_layers, mlm_head=False,
                                       allowed_extra=("bert.pooler.", "classifier."))
    pooler = {POOLER[k]: v for k, v in extra.items() if k in POOLER}
    check_state_shapes(config, {**ours, **pooler}, f"path: {str(path)!r}")
    tokenizer = read_hf_tokenizer(path)
    _check_vocab(config, tokenizer, path)
    return config, ours, pooler, tokenizer


def load_hf_pretrained(path: str | Path, attention_backend: str = "sdpa") -> tuple[BertForMaskedLM,
                                                                                   WordPieceTokenizer]:
    """A minitx BertForMaskedLM (eval mode) and tokenizer from a directory holding a BERT MLM head."""
    config = config_from_hf(read_hf_config(path))
    config.attention_backend = attention_backend
    ours, _ = minitx_state_from_hf(read_hf_state(path), config.n_layers, allowed_extra=("bert.pooler.",
                                                                                        "cls.seq_relationship."))
    check_state_shapes(config, ours, f"path: {str(path)!r}")  # before building: config.json's sizes are untrusted
    tokenizer = read_hf_tokenizer(path)
    _check_vocab(config, tokenizer, path)
    model = BertForMaskedLM(config)
    model.load_state_dict(ours, strict=True)
    return model.eval(), tokenizer


def _check_vocab(config: BertConfig, tokenizer: WordPieceTokenizer, path: str | Path) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"path: {str(path)!r}: vocab.txt has {tokenizer.vocab_size} tokens, more than the "
                         f"model's vocab_size {config.vocab_size}")


# ------------------------------------------------------------------------------------------------- writing
def save_hf_tokenizer(tokenizer: WordPieceTokenizer, path: str | Path, model_max_length: int) -> list[Path]:
    """vocab.txt, tokenizer_config.json and special_tokens_map.json as `BertTokenizer.from_pretrained` reads them."""
    if tokenizer.max_input_chars_per_word != 100:
        raise ValueError(f"tokenizer.max_input_chars_per_word: BertTokenizer uses 100, got "
                         f"{tokenizer.max_input_chars_per_word}")
    bad = [t for t in tokenizer.vocab if "\n" in t or "\r" in t or t != t.strip()]
    if bad:
        raise ValueError(f"tokenizer: tokens with line breaks or surrounding spaces cannot go in vocab.txt: {bad[:3]}")
    path = Path(path)
    files = [path / "vocab.txt", path / "tokenizer_config.json", path / "special_tokens_map.json"]
    files[0].write_text("".join(t + "\n" for t in tokenizer.vocab), encoding="utf-8")
    settings = {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase, "strip_accents": None,
                "tokenize_chinese_chars": True, "model_max_length": model_max_length,
                "clean_up_tokenization_spaces": False, **SPECIALS}
    files[1].write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    files[2].write_text(json.dumps(SPECIALS, indent=2) + "\n", encoding="utf-8")
    return files


def _classifier_state(model: BertForSequenceClassification) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """HF BertForSequenceClassification tensors and config fields of a minitx classifier (one without the pooler
    gets the identity pooler of (bert.6))."""
    if model.pooler is None:  # HF always pools (bert.4): the raw [CLS] vector goes through an identity pooler
        model = add_identity_pooler(copy.deepcopy(model))  # (bert.6)
    from minitx.peft.adapters import AdapterLinear
    if any(isinstance(m, AdapterLinear) for m in model.modules()):
        raise ValueError("model: bottleneck adapters (method='adapter') have no Hugging Face BERT equivalent")
    hf_config_dict(model.config)  # refuses pre-LN
    ours = model.state_dict()
    to_hf = {o: h for h, o in hf_to_minitx_names(model.config.n_layers).items() if h.startswith("bert.")}
    to_hf.update({o: h for h, o in POOLER.items()}, **{k: k for k in CLASSIFIER})
    leftover = sorted(set(ours) - set(to_hf))
    if leftover:
        raise ValueError(f"model: parameters with no Hugging Face BERT home: {leftover[:5]}")
    state = {to_hf[k]: v.detach().clone() for k, v in ours.items()}
    return state, {"architectures": ["BertForSequenceClassification"],
                   "problem_type": "single_label_classification"}


def save_hf_pretrained(model: BertForMaskedLM | BertForSequenceClassification, tokenizer: WordPieceTokenizer,
                       path: str | Path, label_names: Sequence[str] | None = None) -> dict[str, Path]:
    """Write a Hugging Face checkpoint directory: config.json, model.safetensors, the tokenizer files.

    A BertForMaskedLM becomes a `BertForMaskedLM` (decoder tied, as save_pretrained stores it); a classifier a
    `BertForSequenceClassification` with id2label from `label_names`."""
    from safetensors.torch import save_file
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"tokenizer: {tokenizer.vocab_size} tokens, the model's vocab_size is "
                         f"{model.config.vocab_size}")
    if isinstance(model, BertForSequenceClassification):
        state, fields = _classifier_state(model)
        names = list(label_names) if label_names else [f"LABEL_{i}" for i in range(model.num_labels)]
        if len(names) != model.num_labels:
            raise ValueError(f"label_names: expected {model.num_labels} names, got {len(names)}")
        fields.update(id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})
    elif isinstance(model, BertForMaskedLM):
        if model.pooler is not None:
            raise ValueError("model: a BertForMaskedLM with a next-sentence head is not exported (BertForPreTraining)")
        state, fields = hf_state_from_minitx(model), {"architectures": ["BertForMaskedLM"]}
    else:
        raise TypeError(f"model: expected a minitx BertForMaskedLM or BertForSequenceClassification, "
                        f"got {type(model).__name__}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = {**fields, "model_type": "bert", **hf_config_dict(model.config), "classifier_dropout": None,
              "use_cache": True, "dtype": "float32"}
    paths = {"config": out / "config.json", "weights": out / "model.safetensors"}
    paths["config"].write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(paths["weights"]), metadata={"format": "pt"})
    for file in save_hf_tokenizer(tokenizer, out, model.config.max_position):
        paths[file.stem] = file
    return paths
