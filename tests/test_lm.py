"""The causal-LM recipe: nanoGPT's 90/10 split, windows with targets one later (dec.4), a tiny run that
learns, writes its run directory, resumes exactly, and streams text through `minitx generate`."""

import hashlib
import json

import pytest
import torch

from minitx.cli import main as cli_main
from minitx.recipes.lm.generate import generate_main, load_lm
from minitx.recipes.lm.recipe import LMConfig, SHAKESPEARE_SHA256, lm_batch, run_lm, shakespeare_text, split_ids
from minitx.tokenizers.char import CharTokenizer
from minitx.training.checkpoint import read_checkpoint

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40


def tiny_config(tmp_path, **kw):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    base = dict(corpus="text", text=[str(path)], d_model=16, n_layers=1, n_heads=2, block_size=16,
                batch_size=8, max_steps=60, warmup_steps=5, lr=3e-3, eval_every=30, eval_batches=2,
                log_every=10, sample_tokens=20, threads=1, progress=False, out_dir=str(tmp_path / "run"))
    return LMConfig(**{**base, **kw})


def test_shakespeare_is_the_text_nanogpt_trains_on():
    text = shakespeare_text()
    assert hashlib.sha256(text.encode()).hexdigest() == SHAKESPEARE_SHA256
    assert len(text) == 1_115_394 and CharTokenizer.train(text).vocab_size == 65
    train, val = split_ids(torch.arange(len(text)))
    assert len(train) == 1_003_854 and int(val[0]) == 1_003_854  # nanoGPT: first int(0.9 n) train


def test_windows_have_targets_one_token_later_and_depend_only_on_the_seed():
    data = torch.arange(100)
    a = lm_batch(data, 4, 8, seed=3)
    assert a["input_ids"].shape == (4, 8)
    assert torch.equal(a["targets"], a["input_ids"] + 1)  # (dec.4): the next token
    assert torch.equal(lm_batch(data, 4, 8, seed=3)["input_ids"], a["input_ids"])
    assert not torch.equal(lm_batch(data, 4, 8, seed=4)["input_ids"], a["input_ids"])
    with pytest.raises(ValueError, match="data"):
        lm_batch(torch.arange(8), 2, 8, seed=0)


def test_char_tokenizer_round_trip_and_errors(tmp_path):
    tok = CharTokenizer.train(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT and tok.chars == sorted(set(TEXT))
    tok.save(tmp_path / "t.json")
    assert CharTokenizer.load(tmp_path / "t.json").chars == tok.chars
    with pytest.raises(ValueError, match="'Z'"):
        tok.encode("Z")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([999])
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="path"):
        CharTokenizer.load(tmp_path / "bad.json")


def test_a_tiny_run_learns_and_writes_its_directory(tmp_path):
    result = run_lm(tiny_config(tmp_path))
    out = tmp_path / "run"
    for name in ("checkpoint.pt", "tokenizer.json", "metrics.jsonl", "loss_curve.png", "sample.txt",
                 "summary.json", "model_config.json"):
        assert (out / name).is_file(), name
    evals = [r for r in result.train.history if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [30, 60]
    uniform = torch.log(torch.tensor(float(result.tokenizer.vocab_size)))
    assert evals[-1]["loss"] < 0.8 * uniform  # far below chance (log V) on this repetitive text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["val_loss_full_split"] < uniform
    model, tok = load_lm(out)
    assert isinstance(tok, CharTokenizer) and model.config.d_model == 16


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """A run killed after step 30 and resumed ends exactly where the uninterrupted run does."""
    import minitx.recipes.lm.recipe as lm
    full = run_lm(tiny_config(tmp_path, out_dir=str(tmp_path / "a"), sample_tokens=0))
    calls, real_loss = [], lm.causal_lm_loss

    def dies_at_step_31(model, batch):
        calls.append(torch.is_grad_enabled())  # training steps only: the checkpoint's own check runs under no_grad
        if sum(calls) > 30:
            raise KeyboardInterrupt
        return real_loss(model, batch)

    config = tiny_config(tmp_path, out_dir=str(tmp_path / "b"), sample_tokens=0, checkpoint_every=30)
    monkeypatch.setattr(lm, "causal_lm_loss", dies_at_step_31)
    with pytest.raises(KeyboardInterrupt):
        run_lm(config)
    monkeypatch.setattr(lm, "causal_lm_loss", real_loss)
    assert read_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 30  # a real resume, not a fresh start
    resumed = run_lm(LMConfig(**{**config.__dict__, "resume": True}))
    assert resumed.train.metrics["loss"] == full.train.metrics["loss"]
    assert resumed.train.eval_metrics["loss"] == full.train.eval_metrics["loss"]


def test_bpe_tokenizer_run(tmp_path):
    result = run_lm(tiny_config(tmp_path, tokenizer="bpe", vocab_size=300, max_steps=10, eval_every=0,
                                sample_tokens=5))
    model, tok = load_lm(tmp_path / "run")
    assert type(tok).__name__ == "ByteBPETokenizer" and tok.vocab_size == result.tokenizer.vocab_size
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_generate_cli_streams_each_token(tmp_path, capsys, monkeypatch):
    run_lm(tiny_config(tmp_path, sample_tokens=0))
    capsys.readouterr()
    flushes = []
    import sys
    real_flush = sys.stdout.flush
    monkeypatch.setattr(sys.stdout, "flush", lambda: (flushes.append(1), real_flush())[1])
    assert cli_main(["generate", str(tmp_path / "run"), "To be", "--max-new-tokens", "12", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("To be") and len(out) == len("To be") + 12 + 1
    assert len(flushes) >= 12  # one flush per token: streamed, not printed at the end
    greedy = [generate_main([str(tmp_path / "run"), "To be", "--max-new-tokens", "8", "--temperature", "0",
                             *extra]) or capsys.readouterr().out for extra in ([], ["--no-cache"])]
    assert greedy[0] == greedy[1]


def test_generate_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        generate_main([str(tmp_path / "nothing"), "x"])
    assert err.value.code == 2 and "run: expected" in capsys.readouterr().err


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="text"):
        LMConfig(corpus="text")
    with pytest.raises(ValueError, match="val_fraction"):
        LMConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        LMConfig(tokenizer="bpe", vocab_size=200)


@pytest.mark.slow
def test_train_lm_under_torchrun_with_two_ranks(tmp_path):
    """DDP through minitx.training.loop: two gloo ranks draw different windows (their seeds include the rank), rank 0
    alone writes the run, and the replicas end identical (the checkpoint is rank 0's)."""
    import os
    import subprocess
    import sys
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    args = ["--corpus", "text", "--text", str(path), "--d-model", "16", "--n-layers", "1", "--n-heads", "2",
            "--block-size", "16", "--batch-size", "4", "--max-steps", "6", "--warmup-steps", "1",
            "--eval-batches", "1", "--sample-tokens", "0", "--threads", "1", "--device", "cpu", "--no-progress",
            "--out-dir", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "minitx", "train-lm", *args], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    from minitx.seeding import seed_for
    assert not torch.equal(lm_batch(torch.arange(1000), 4, 16, seed_for(0, 1, 0, 0))["input_ids"],
                           lm_batch(torch.arange(1000), 4, 16, seed_for(0, 1, 0, 1))["input_ids"])
    model, _ = load_lm(tmp_path / "run")
    assert model.config.d_model == 16
