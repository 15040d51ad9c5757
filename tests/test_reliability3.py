"""Hostile inputs, round three (issue 19): each test names the row of the issue it covers (row N) or the
newcomer item. Tiny models, a few steps; the CLI tests run one subprocess each with a hard timeout."""

from __future__ import annotations

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


def minitx_cli(*argv: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "minitx", *argv], capture_output=True, text=True, env=environ,
                          timeout=timeout, cwd=cwd)


def one_error_line(result: subprocess.CompletedProcess, *words: str) -> str:
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
