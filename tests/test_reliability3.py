"""Hostile inputs, round three (issue 19): each test names the row of the issue it covers (row N) or the
newcomer item. Tiny models, a few steps; the CLI tests run one subprocess each with a hard timeout."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import minitx
from minitx.attention.front_door import attention
from minitx.attention.multi_head import MultiHeadAttention
from minitx.peft.lora import LoRALinear, apply_lora, load_lora_state_dict, lora_state_dict
from minitx.tokenizers.bpe import ByteBPETokenizer
from minitx.tokenizers.wordpiece import WordPieceTokenizer
from minitx.training.config import TrainConfig
from minitx.training.loop import train

ROOT = Path(minitx.__file__).resolve().parent.parent  # the checkout whose minitx these tests import


def run_main(*argv: str) -> subprocess.CompletedProcess:
    """`minitx ...` in this process (no interpreter start-up to pay), as a CompletedProcess."""
    from minitx.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def assert_one_error_line(result: subprocess.CompletedProcess, *words: str) -> str:
    """A user error: exit 2, no traceback, one `minitx: error:` line naming `words`."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("minitx: error:")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# --------------------------------------------------------------------------------- row 1: +inf in a float mask
@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_row1_float_mask_with_plus_inf_or_nan_is_refused(backend, bad):
    q = k = v = torch.randn(1, 2, 3, 4)
    mask = torch.zeros(3, 3)
    mask[1, 2] = bad
    with pytest.raises(ValueError, match="attn_mask: expected float values below \\+inf"):
        attention(q, k, v, backend=backend, attn_mask=mask)
    mask[1, 2] = -math.inf  # -inf blocks: allowed, and the output stays finite
    assert torch.isfinite(attention(q, k, v, backend=backend, attn_mask=mask)).all()


# ------------------------------------------------------------------------- row 2: MHA given ids or another dtype
@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.float64])
def test_row2_mha_refuses_a_dtype_its_weights_do_not_have(dtype):
    mha = MultiHeadAttention(8, 2)
    x = torch.ones(1, 3, 8).to(dtype)
    with pytest.raises(TypeError, match=f"x: expected .*got (dtype )?{dtype}"):
        mha(x)


def test_row2_mha_under_autocast_still_takes_fp32_input():
    mha = MultiHeadAttention(8, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mha(torch.randn(1, 3, 8))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------- rows 3 and 8: LoRA state of floats, ints
def _lora_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    apply_lora(model, ["0"], r=2, alpha=4)
    return model


@pytest.mark.parametrize("bad", [0.5, torch.ones(2, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.bool)])
def test_row3_row8_load_lora_state_dict_refuses_non_tensors_and_integer_tensors(bad):
    model = _lora_model()
    state = lora_state_dict(model)
    before = {k: v.clone() for k, v in state.items()}
    state["0.lora_A"] = bad
    with pytest.raises(TypeError, match="state: key '0.lora_A'"):
        load_lora_state_dict(model, state)
    assert all(torch.equal(v, before[k]) for k, v in lora_state_dict(model).items())  # nothing loaded


# ------------------------------------------------------------------------------- row 4: lr that overflows AdamW
@pytest.mark.parametrize("kwargs", [dict(lr=1e38), dict(lr=1e29, betas=(0.999999, 0.999)),
                                    dict(lr=1e25, weight_decay=1e10), dict(eps=1e38)])
def test_row4_train_config_refuses_step_sizes_float32_cannot_hold(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)) if "eps" in kwargs else "lr:"):
        TrainConfig(**kwargs)
    TrainConfig(lr=1e20)  # huge but representable: the loop's non-finite guard handles what it does


# -------------------------------------------------------------------------------- row 5: what loss_fn returns
def _run(loss_fn, model=None):
    model = model if model is not None else nn.Linear(3, 1)
    return train(model, lambda step, micro, rank, world: torch.randn(4, 3), loss_fn,
                 TrainConfig(max_steps=2, out_dir="", progress=False))


@pytest.mark.parametrize("loss_fn, words", [
    (lambda m, b: (1.0, {}), "got float"),
    (lambda m, b: (m(b).sum(1), {}), "scalar"),
    (lambda m, b: (torch.tensor(1.0), {}), "requires grad"),
    (lambda m, b: m(b).mean(), "(loss, metrics)"),
])
def test_row5_train_names_a_bad_loss_fn_result(loss_fn, words):
    with pytest.raises((TypeError, ValueError), match="loss_fn") as info:
        _run(loss_fn)
    assert words in str(info.value)


# ------------------------------------------------------------------------------ row 6: training a merged LoRA
def test_row6_training_a_merged_lora_linear_says_unmerge():
    layer = LoRALinear(nn.Linear(4, 3), r=2, alpha=2)
    layer.merge()
    with pytest.raises(RuntimeError, match="merged.*unmerge"):
        layer(torch.randn(2, 4)).sum().backward()
    layer.eval()
    assert layer(torch.randn(2, 4)).shape == (2, 3)  # inference on the merged layer is what merging is for
    layer.train()
    layer.unmerge()
    layer(torch.randn(2, 4)).sum().backward()
    assert layer.lora_A.grad is not None


# ------------------------------------------------------------------------ row 7: WordPiece trained on nothing
@pytest.mark.parametrize("texts, words", [(None, "NoneType"), (3, "int"), (["ok", 5], "int")])
def test_row7_wordpiece_train_names_texts(texts, words):
    with pytest.raises(TypeError, match=f"texts: expected .*{words}"):
        WordPieceTokenizer.train(texts, vocab_size=50)


# --------------------------------------------------------------------------- row 12: BPE state of other types
def test_row12_bpe_from_state_refuses_non_string_tokens_and_merges():
    state = ByteBPETokenizer.train(["low lower lowest"], 260).state()
    assert ByteBPETokenizer.from_state(state).state() == state  # the honest round trip
    with pytest.raises(TypeError, match="tokens: expected each token as a str, got int"):
        ByteBPETokenizer.from_state({**state, "tokens": [1] + state["tokens"][1:]})
    with pytest.raises(TypeError, match="merges: expected each merge as a str 'a b', got list"):
        ByteBPETokenizer.from_state({**state, "merges": [[1, 2, 3]]})


# ----------------------------------------------------------------- rows 8, 16-19: Hugging Face directories
from minitx.interop.hf_dirs import load_hf_encoder, load_hf_pretrained, read_hf_state, save_hf_pretrained  # noqa: E402
from minitx.models.bert import BertConfig, BertForMaskedLM  # noqa: E402
from minitx.training.checkpoint import CheckpointError, check_state_dict  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    """A BERT directory as `save_pretrained` writes it (written by minitx's export: no transformers needed)."""
    torch.manual_seed(0)
    tokenizer = WordPieceTokenizer(SPECIALS + ["the", "dog", "is", "happy", "."])
    model = BertForMaskedLM(BertConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_position=16))
    save_hf_pretrained(model, tokenizer, tmp_path / "hf")
    return tmp_path / "hf"


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


def _edit_tensors(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file
    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))


@pytest.mark.parametrize("changes, words", [
    (dict(intermediate_size=32), "intermediate_size"), (dict(vocab_size=11), "vocab_size 11"),
    (dict(max_position_embeddings=17), "max_position_embeddings 17"),
    (dict(vocab_size=10**9), "vocab_size 1000000000"), (dict(hidden_size=2**20, num_attention_heads=2), "1048576"),
    (dict(num_hidden_layers=10**6), "1000000 layers"), (dict(intermediate_size=10**9), "1000000000"),
])
def test_row16_row17_config_json_disagreeing_with_its_tensors_is_refused_before_building(hf_dir, changes, words):
    _edit_config(hf_dir, **changes)
    for load in (load_hf_pretrained, load_hf_encoder):
        with pytest.raises(ValueError, match="hf_model|path: ") as info:
            load(hf_dir)
        assert words in str(info.value)


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.update({"bert.embeddings.word_embeddings.weight": s["bert.embeddings.word_embeddings.weight"].T}),
     "word_embeddings"),
    (lambda s: s.update({"bert.embeddings.LayerNorm.weight": torch.ones(7)}), "LayerNorm"),
    (lambda s: s.update({"bert.embeddings.LayerNorm.weight": torch.ones(8, dtype=torch.int64)}), "torch.int64"),
    (lambda s: s.update({"cls.predictions.bias": torch.ones(10, dtype=torch.bool)}), "torch.bool"),
])
def test_row16_row8_tensors_transposed_cut_or_integer_are_refused_by_name(hf_dir, edit, words):
    _edit_tensors(hf_dir, edit)
    with pytest.raises(ValueError, match="hf_model|path: ") as info:
        load_hf_pretrained(hf_dir)
    assert words in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "huge_header"])
def test_row18_a_damaged_safetensors_file_is_named(hf_dir, damage):
    file = hf_dir / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "random": os.urandom(4096),
                      "huge_header": (10**15).to_bytes(8, "little") + data[8:]}[damage])
    with pytest.raises(ValueError, match="model.safetensors' is not a readable safetensors file"):
        read_hf_state(hf_dir)


def test_row16_row18_cli_finetune_from_a_broken_directory_is_one_line(hf_dir, tmp_path):
    _edit_config(hf_dir, intermediate_size=32)
    line = assert_one_error_line(run_main("finetune", "--from", str(hf_dir), "--out-dir", str(tmp_path / "run"),
                                          "--max-steps", "1", "--warmup-steps", "0"), "intermediate_size")
    assert "intermediate_size 32" in line and "(16,)" in line  # what config.json claims, beside what the file holds
    (hf_dir / "model.safetensors").write_bytes(b"")
    line = assert_one_error_line(run_main("finetune", "--from", str(hf_dir), "--out-dir", str(tmp_path / "run"),
                                          "--max-steps", "1", "--warmup-steps", "0"), "model.safetensors")
    assert not (tmp_path / "run" / "checkpoint.pt").exists(), "a refused source must not leave a run behind"


def test_row19_a_shard_index_with_int_file_names_names_the_index(hf_dir):
    (hf_dir / "model.safetensors").rename(hf_dir / "model-00001-of-00001.safetensors")
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"bert.embeddings.word_embeddings.weight": 3}}))
    with pytest.raises(ValueError, match="model.safetensors.index.json.*weight_map.*expected a file name"):
        read_hf_state(hf_dir)


@pytest.mark.parametrize("bad", [torch.ones(8, dtype=torch.int64), torch.ones(8, dtype=torch.bool), 0.5])
def test_row8_a_minitx_checkpoint_with_integer_tensors_for_weights_is_refused(bad):
    model = BertForMaskedLM(BertConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_position=16))
    state = model.state_dict()
    state["bert.embeddings.norm.weight"] = bad
    with pytest.raises(CheckpointError, match="bert.embeddings.norm.weight|got float"):
        check_state_dict(model, state, "ckpt")


# --------------------------------------------------------------------------- rows 8, 20-23: PEFT directories
from minitx.interop.peft_dirs import load_peft_adapter, save_peft_adapter  # noqa: E402


@pytest.fixture
def peft_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_position=16))
    apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=4)
    save_peft_adapter(model, tmp_path / "peft")
    return tmp_path / "peft"


def _fresh_base():
    torch.manual_seed(1)
    return BertForMaskedLM(BertConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_position=16))


def _edit_adapter_config(path: Path, drop=(), **changes) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    config = {k: v for k, v in {**config, **changes}.items() if k not in drop}
    (path / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("drop, changes, words", [
    (("r",), {}, "adapter_config.r: expected an int >= 1, got None"),
    (("lora_alpha",), {}, "adapter_config.lora_alpha"), ((), dict(r="eight"), "adapter_config.r"),
    ((), dict(r=None), "adapter_config.r"), ((), dict(lora_alpha="4"), "adapter_config.lora_alpha"),
    ((), dict(use_rslora="false"), "adapter_config.use_rslora: expected true or false, got 'false'"),
    ((), dict(lora_dropout=2), "adapter_config.lora_dropout"),
])
def test_row20_row21_adapter_config_values_of_the_wrong_type_are_refused(peft_dir, drop, changes, words):
    _edit_adapter_config(peft_dir, drop, **changes)
    with pytest.raises(ValueError) as info:
        load_peft_adapter(_fresh_base(), peft_dir)
    assert words in str(info.value)


def _same_model(a, b) -> bool:
    return [type(m) for m in a.modules()] == [type(m) for m in b.modules()] and all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("edit, words", [
    ("rank", "shape"),          # config r=4, rank-2 tensors
    ("int", "torch.int64"),     # an integer lora_A
])
def test_row22_row8_a_refused_adapter_leaves_the_model_unwrapped(peft_dir, edit, words):
    from safetensors.torch import load_file, save_file
    if edit == "rank":
        _edit_adapter_config(peft_dir, r=4)
    else:
        state = load_file(str(peft_dir / "adapter_model.safetensors"))
        key = next(k for k in sorted(state) if k.endswith("lora_A.weight"))
        state[key] = state[key].to(torch.int64)
        save_file(state, str(peft_dir / "adapter_model.safetensors"))
    model, untouched = _fresh_base(), _fresh_base()
    with pytest.raises(ValueError, match=words):
        load_peft_adapter(model, peft_dir)
    assert _same_model(model, untouched)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_row18_a_truncated_adapter_safetensors_file_is_named(peft_dir):
    file = peft_dir / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(ValueError, match="adapter_model.safetensors' is not a readable safetensors file"):
        load_peft_adapter(_fresh_base(), peft_dir)


@pytest.mark.parametrize("payload", ["pickle", "list", "garbage"])
def test_row23_adapter_model_bin_that_is_not_a_state_dict_is_named(peft_dir, payload):
    import pickle
    (peft_dir / "adapter_model.safetensors").unlink()
    bin_file = peft_dir / "adapter_model.bin"
    if payload == "pickle":
        class Boom:
            def __reduce__(self):
                return (os.system, ("touch " + str(peft_dir / "pwned"),))
        bin_file.write_bytes(pickle.dumps(Boom(), protocol=2))
    elif payload == "list":
        torch.save([torch.ones(2)], bin_file)
    else:
        bin_file.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="adapter_model.bin"):
        load_peft_adapter(_fresh_base(), peft_dir)
    assert not (peft_dir / "pwned").exists()


# ------------------------------------------------------------------------------ rows 9-11: generate
from minitx.generation.generate import generate  # noqa: E402
from minitx.generation.sampling import sample_next  # noqa: E402
from minitx.models.gpt import GPT, GPTConfig  # noqa: E402


def _gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, max_position=8, d_model=8, n_layers=1, n_heads=2))


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -1.0])
def test_row9_temperature_nan_or_inf_is_refused_by_name(temperature):
    with pytest.raises(ValueError, match="temperature: expected a finite number >= 0"):
        generate(_gpt(), torch.tensor([[1, 2]]), 3, temperature=temperature)


def test_row9_a_tiny_temperature_samples_the_greedy_token():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 2.5]])
    assert torch.equal(sample_next(logits, temperature=1e-300), logits.argmax(-1))
    model, ids = _gpt(), torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(model, ids, 5, temperature=1e-300, seed=0), generate(model, ids, 5, temperature=0))


@pytest.mark.parametrize("ids", [[[1, 11]], [[-1, 2]]])
def test_row10_ids_outside_the_vocabulary_are_refused(ids):
    with pytest.raises(ValueError, match=r"ids: expected token ids in \[0, 11\)"):
        generate(_gpt(), torch.tensor(ids), 2)


def test_row11_a_seed_beyond_64_bits_names_the_seed():
    with pytest.raises(ValueError, match="seed: expected"):
        generate(_gpt(), torch.tensor([[1, 2]]), 2, seed=2**70)


# ----------------------------------------------------------------- rows 9, 11, 13-15: the train-lm / generate CLI
LM_TINY = ["--max-steps", "2", "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--block-size", "16",
           "--batch-size", "4", "--eval-batches", "1", "--sample-tokens", "0", "--warmup-steps", "1",
           "--log-every", "1", "--eval-every", "0", "--no-progress"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A tiny `minitx train-lm` run (progress on, not a terminal: plain lines) and what it printed."""
    out = tmp_path_factory.mktemp("lm") / "run"
    text = tmp_path_factory.mktemp("lmtext") / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    flags = [f for f in LM_TINY if f != "--no-progress"]
    return out, run_main("train-lm", "--corpus", "text", "--text", str(text), "--out-dir", str(out), *flags)


@pytest.mark.parametrize("flags, words", [(["--temperature", "nan"], "temperature"),
                                          (["--seed", str(2**70)], "seed")])
def test_row9_row11_generate_cli_names_the_flag(lm_run, flags, words, capsys):
    from minitx.cli import main
    with pytest.raises(SystemExit) as exit_info:  # generate's own parser: "minitx generate: error: ..."
        main(["generate", str(lm_run[0]), "the", "--max-new-tokens", "3", *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"error: {words}: expected" in err and "Traceback" not in err, err


def test_row13_an_absurd_bpe_vocabulary_is_refused_up_front():
    from minitx.recipes.lm.recipe import LMConfig
    with pytest.raises(ValueError, match="vocab_size: .*--vocab-size 1,000,000"):
        LMConfig(tokenizer="bpe", vocab_size=1_000_000)
    LMConfig(tokenizer="bpe", vocab_size=50_257)  # GPT-2's size is fine


@pytest.mark.parametrize("case", ["without_corpus", "binary", "dev_null", "directory", "empty"])
def test_row14_row15_train_lm_text_files_are_checked(tmp_path, case):
    from minitx.recipes.lm.recipe import LMConfig, run_lm
    good = tmp_path / "ok.txt"
    good.write_text("some text " * 50)
    path = {"without_corpus": good, "binary": tmp_path / "b.bin", "dev_null": Path(os.devnull),
            "directory": tmp_path, "empty": tmp_path / "empty.txt"}[case]
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty.txt").write_text("")
    words = {"without_corpus": "--corpus text", "binary": "not UTF-8", "dev_null": "device",
             "directory": "a directory", "empty": "hold no text"}[case]
    corpus = "shakespeare" if case == "without_corpus" else "text"
    with pytest.raises(ValueError, match="text: ") as info:
        run_lm(LMConfig(corpus=corpus, text=[str(path)], out_dir="", max_steps=1, warmup_steps=0, progress=False))
    assert words in str(info.value) and str(path) in str(info.value)


def test_row14_cli_text_without_corpus_is_one_line(tmp_path):
    (tmp_path / "ok.txt").write_text("some text " * 50)
    assert_one_error_line(run_main("train-lm", "--text", str(tmp_path / "ok.txt"), "--out-dir", str(tmp_path / "run")),
                   "--corpus text")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------- newcomer: train-lm's thread policy, summary, eval progress
def test_newcomer_train_lm_uses_one_thread_like_every_command():
    from minitx.recipes.finetune.config import FinetuneConfig
    from minitx.recipes.lm.recipe import LMConfig
    from minitx.recipes.pretrain.config import PretrainConfig
    assert LMConfig().threads == PretrainConfig().threads == FinetuneConfig().threads == 1


def test_newcomer_train_lm_ends_with_a_summary_table_and_eval_progress(lm_run):
    run_dir, result = lm_run
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "causal LM summary" in out and "val loss, whole split" in out
    assert not any(line.lstrip().startswith("{") for line in out.splitlines())  # no raw JSON line any more
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['val_loss_full_split']:.4f}" in out
    progress = [line for line in out.splitlines() if line.startswith("whole-split eval:")]
    assert len(progress) >= 2 and progress[-1].split()[2].split("/")[0] == progress[-1].split()[2].split("/")[1]


# -------------------------------------------------------------------------- row 24: one writer per run directory
import time  # noqa: E402
import warnings  # noqa: E402

from minitx.training.guards import LOCK_FILE, run_lock  # noqa: E402

PRETRAIN_TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--batch-size", "8",
                 "--max-length", "40", "--train-sentences", "200", "--eval-sentences", "20", "--warmup-steps", "1",
                 "--eval-every", "0", "--log-every", "1", "--no-progress"]


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_row24_a_second_writer_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "minitx", "pretrain", "--out-dir", str(out), "--max-steps",
                              "100000", *PRETRAIN_TINY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "metrics.jsonl").exists():  # the first run holds the lock and is training
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.2)
        assert (out / LOCK_FILE).read_text().strip() == str(first.pid)
        for extra in (["--overwrite"], ["--resume"]):
            line = assert_one_error_line(run_main("pretrain", "--out-dir", str(out), "--max-steps", "2", *extra,
                                             *PRETRAIN_TINY), "being written by another minitx run", str(first.pid))
            assert "--out-dir" in line
    finally:
        first.terminate()  # SIGTERM: the first run saves its step and stops
        first.wait(timeout=60)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer: no interleaved, duplicated steps
    assert not (out / LOCK_FILE).exists()  # released on the way out, even interrupted


def test_row24_a_dead_owners_lock_is_taken_over_with_a_warning(tmp_path):
    (tmp_path / LOCK_FILE).write_text(f"{_dead_pid()}\n")
    with pytest.warns(UserWarning, match="took over the lock of pid"):
        with run_lock(tmp_path) as lock:
            assert lock.read_text().strip() == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a free directory: no warning
        with run_lock(tmp_path / "new"):
            with pytest.raises(ValueError, match="being written by another minitx run"):
                with run_lock(tmp_path / "new"):  # the same directory twice, even from one process
                    pass


# ----------------------------------------------------------------------- row 25: BertForMaskedLM .logits shape
def test_row25_mlm_logits_keep_their_shape_with_labels_unless_sparse_is_asked_for():
    from minitx.recipes.pretrain.config import PretrainConfig, model_config
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_position=12, dropout=0.0,
                        attention_dropout=0.0)
    model = BertForMaskedLM(config).eval()
    ids = torch.randint(5, 30, (3, 10))
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[2, 7] = 9, 12
    plain, with_labels = model(ids), model(ids, labels=labels)
    assert with_labels.logits.shape == (3, 10, 30) and with_labels.sparse_logits is None
    torch.testing.assert_close(with_labels.logits, plain.logits)
    per_position = (with_labels.logits.argmax(-1) == ids).float()  # code that scores every position still works
    assert per_position.shape == (3, 10)
    model.config.sparse_prediction = True  # the explicit opt-in the recipes make
    sparse = model(ids, labels=labels)
    assert sparse.logits is None and sparse.sparse_logits.shape == (2, 30)
    torch.testing.assert_close(sparse.sparse_logits, plain.logits[labels != -100], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sparse.loss, with_labels.loss, atol=1e-6, rtol=1e-6)
    tokenizer = WordPieceTokenizer(SPECIALS + ["a", "b"])
    assert model_config(PretrainConfig(out_dir=""), tokenizer).sparse_prediction  # pretraining keeps its speed


# -------------------------------------------------------------------------------- newcomer: the demo's rules
def test_newcomer_the_demo_is_exportable_refuses_a_second_run_and_says_fast_is_not_meaningful(tmp_path, capsys):
    from minitx.recipes.finetune.demo import demo_main
    from minitx.cli import main
    out = tmp_path / "demo"
    assert demo_main(["--fast", "--out-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "not meaningful" in printed and "not a meaningful accuracy" in printed
    assert main(["export", "--peft", str(out / "finetune"), str(tmp_path / "peft")]) == 0
    assert main(["export", str(out / "finetune"), str(tmp_path / "hf")]) == 0
    adapter = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and "bert.pooler.dense" in adapter["modules_to_save"]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"]
    before = (out / "pretrain" / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["demo", "--fast", "--out-dir", str(out), "--no-progress"]) == 2  # the run-directory rule
    err = capsys.readouterr().err
    assert "already holds a demo run" in err and "--overwrite" in err
    assert (out / "pretrain" / "checkpoint.pt").read_bytes() == before  # nothing was replaced
