"""The causal-LM recipe's memory savings (issue #13, point 5: peak RSS against nanoGPT's 446 MB): the token
stream stored compact, and the loss curve drawn by a child process so matplotlib never loads in the trainer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minitx.models.gpt import GPT, GPTConfig
from minitx.recipes.lm.recipe import compact_ids, lm_batch, split_loss

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("vocab, dtype", [(65, torch.uint8), (256, torch.uint8), (512, torch.int16),
                                          (50257, torch.int32)])
def test_compact_ids_pick_the_smallest_dtype_and_keep_every_id(vocab, dtype):
    ids = torch.randint(vocab, (1000,), generator=torch.Generator().manual_seed(0))
    ids[0] = vocab - 1  # the largest id must survive the narrowing
    packed = compact_ids(ids.tolist(), vocab)
    assert packed.dtype == dtype
    assert torch.equal(packed.long(), ids)


def test_batches_and_split_loss_are_the_same_on_a_compact_stream():
    data = torch.randint(65, (5000,), generator=torch.Generator().manual_seed(1))
    packed = compact_ids(data, 65)
    a, b = lm_batch(data, 8, 16, seed=3), lm_batch(packed, 8, 16, seed=3)
    assert b["input_ids"].dtype == torch.long and b["targets"].dtype == torch.long
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["targets"], b["targets"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, max_position=16, d_model=16, n_layers=1, n_heads=2)).eval()
    assert split_loss(model, packed, 16) == pytest.approx(split_loss(model, data, 16), abs=1e-6)


def test_loss_curve_is_drawn_without_matplotlib_in_the_training_process(tmp_path):
    history = [{"step": s, "split": "train", "loss": 4.0 / s} for s in range(1, 6)] + \
              [{"step": 5, "split": "eval", "loss": 1.0}]
    code = ("import json, sys; from pathlib import Path; from minitx.recipes.lm.recipe import plot_in_child; "
            "plot_in_child(json.loads(sys.argv[1]), Path(sys.argv[2])); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')))")
    path = tmp_path / "loss_curve.png"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(history), str(path)], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # the parent never imported matplotlib
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_a_failing_plot_is_reported(tmp_path):
    from minitx.recipes.lm.recipe import plot_in_child
    with pytest.raises(RuntimeError, match="plotting process failed"):
        plot_in_child([{"loss": 1.0}], tmp_path / "x.png")  # no "step": the child raises KeyError
