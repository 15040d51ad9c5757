"""`minitx train-lm --arch llama` and `minitx generate` on its run: a tiny Llama (GQA) learns the text, its run
directory loads back as a Llama with the same weights, and generation streams the same greedy text cached and
uncached; `--arch gpt` (the default) still loads as a GPT."""

import json

import pytest
import torch

from minitx.cli import main as cli_main
from minitx.models.gpt import GPT
from minitx.models.llama import Llama
from minitx.recipes.lm.generate import generate_main, load_lm
from minitx.recipes.lm.recipe import LMConfig, model_config, run_lm

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40


def tiny_config(tmp_path, **kw):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    base = dict(corpus="text", text=[str(path)], d_model=16, n_layers=1, n_heads=2, block_size=16,
                batch_size=8, max_steps=60, warmup_steps=5, lr=3e-3, eval_every=0, eval_batches=2,
                log_every=10, sample_tokens=0, threads=1, progress=False, out_dir=str(tmp_path / "run"))
    return LMConfig(**{**base, **kw})


def test_train_lm_arch_llama_learns_loads_and_generates(tmp_path, capsys):
    result = run_lm(tiny_config(tmp_path, arch="llama", n_kv_heads=1, n_heads=4))
    assert isinstance(result.model, Llama) and result.model.config.kv_heads == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    uniform = float(torch.log(torch.tensor(float(result.tokenizer.vocab_size))))
    assert summary["val_loss_full_split"] < 0.8 * uniform  # far below chance on this repetitive text
    model, _ = load_lm(tmp_path / "run")
    assert isinstance(model, Llama)
    for (name, a), b in zip(result.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    capsys.readouterr()
    greedy = [generate_main([str(tmp_path / "run"), "To be", "--max-new-tokens", "10", "--temperature", "0",
                             *extra]) or capsys.readouterr().out for extra in ([], ["--no-cache"])]
    assert greedy[0] == greedy[1] and greedy[0].startswith("To be") and len(greedy[0]) == len("To be") + 11


def test_arch_gpt_is_the_default_and_bad_arch_is_one_line(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert config.arch == "gpt" and isinstance(GPT(model_config(config, 11)), GPT)
    llama = model_config(tiny_config(tmp_path, arch="llama", n_kv_heads=1), 11)
    assert type(llama).__name__ == "LlamaConfig" and llama.kv_heads == 1 and llama.max_position == 16
    with pytest.raises(SystemExit) as err:
        cli_main(["train-lm", "--arch", "mamba", "--out-dir", str(tmp_path / "x")])
    assert err.value.code == 2 and "--arch" in capsys.readouterr().err
