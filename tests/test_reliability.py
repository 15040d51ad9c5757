"""Hostile inputs and faults (issue 10), kept as a bounded-time regression suite: each test names the row of
the issue it covers. Tiny models (width 16, one layer), a few steps; the signal tests run one subprocess each
with a hard timeout. Guide: docs/training.md ("Faults and the command line")."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from minitx import cli
from minitx.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from minitx.peft.adapters import apply_adapters
from minitx.peft.lora import LoRALinear, apply_lora, merge_lora
from minitx.recipes.finetune.config import FinetuneConfig
from minitx.recipes.finetune.data import read_labelled_file
from minitx.recipes.finetune.recipe import run_finetuning
from minitx.recipes.pretrain.config import PretrainConfig
from minitx.recipes.pretrain.fill_mask import load_pretrained
from minitx.recipes.pretrain.recipe import run_pretraining
from minitx.training.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from minitx.training.config import TrainConfig
from minitx.training.loop import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, batch_size=8, max_length=40, train_sentences=200,
            eval_sentences=20, max_steps=4, warmup_steps=1, log_every=2, eval_every=0, progress=False, threads=1)
TINY_FLAGS = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--batch-size", "8",
              "--max-length", "40", "--train-sentences", "200", "--eval-sentences", "20", "--warmup-steps", "1",
              "--eval-every", "0", "--log-every", "2"]
# bf16 keeps 8 bits of mantissa: after a few steps the loss of a tiny model agrees with fp32 to well under 1 %.
BF16_LOSS_RTOL = 1e-2


def tiny(tmp_path: Path, **overrides) -> PretrainConfig:
    return PretrainConfig(**{**TINY, "out_dir": str(tmp_path / "run"), **overrides})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "run"
    run_pretraining(PretrainConfig(**{**TINY, "out_dir": str(out), "eval_every": 2}))
    return out


def minitx_cli(*argv: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "minitx", *argv], capture_output=True, text=True, env=environ,
                          timeout=120, **kw)


# ----------------------------------------------------------------------------------------------- row 1: bf16
def test_row1_pretrain_bf16_autocast_tracks_fp32(tmp_path):
    losses = {p: run_pretraining(tiny(tmp_path / p, precision=p)).train.metrics["loss"] for p in ("fp32", "bf16")}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=BF16_LOSS_RTOL)
    assert losses["bf16"] != losses["fp32"]  # autocast really ran in bf16


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "bitfit"])
def test_row1_finetune_bf16_autocast_tracks_fp32_for_every_method(pretrained, tmp_path, method):
    losses = {}
    for precision in ("fp32", "bf16"):
        config = FinetuneConfig(from_checkpoint=str(pretrained), method=method, precision=precision, max_steps=3,
                                warmup_steps=1, eval_every=3, n_train_labels=16, n_validation=8, n_test=8, batch_size=8,
                                lora_r=2, adapter_bottleneck=4, patience=0, progress=False,
                                out_dir=str(tmp_path / precision))
        losses[precision] = run_finetuning(config).train.metrics["loss"]
    assert math.isfinite(losses["bf16"])
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=BF16_LOSS_RTOL)


def test_row1_layer_norm_and_lora_backward_under_cpu_autocast():
    """LayerNorm normalizes in fp32 and casts back; LoRA's hand-written backward returns fp32 gradients."""
    lora = LoRALinear(nn.Linear(8, 6), r=2, alpha=4)
    nn.init.normal_(lora.lora_B)
    x = torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lora(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == lora.lora_A.grad.dtype == torch.float32
    ref = x.detach() @ (lora.base.weight + lora.scaling * lora.lora_B @ lora.lora_A).T + lora.base.bias
    assert torch.allclose(y.float(), ref, atol=5e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_row1_cuda_autocast_pretrain_and_lora_finetune(tmp_path, precision):
    run = run_pretraining(tiny(tmp_path / "pre", precision=precision, device="cuda"))
    assert math.isfinite(run.train.metrics["loss"])
    ft = run_finetuning(FinetuneConfig(from_checkpoint=str(tmp_path / "pre" / "run"), method="lora",
                                       precision=precision, device="cuda", max_steps=3, warmup_steps=1, eval_every=3,
                                       n_train_labels=16, n_validation=8, n_test=8, batch_size=8, patience=0,
                                       progress=False, out_dir=str(tmp_path / "ft")))
    assert math.isfinite(ft.train.metrics["loss"])


# ----------------------------------------------------------------------------------------------- row 2: empty batch
def test_row2_a_batch_with_nothing_to_predict_gives_zero_loss_not_nan(tmp_path):
    # At p = 0.02 and batch size 1 most batches select nothing; before the fix the run stopped with "loss is nan".
    result = run_pretraining(tiny(tmp_path, mlm_probability=0.02, batch_size=1, max_steps=12, log_every=1))
    losses = [r["loss"] for r in result.train.history if r["split"] == "train"]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses) and 0.0 in losses


# ----------------------------------------------------------------------------------------------- row 3: divergence
class Line(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 4)


def _line_loss(model, x):
    return model.fc(x).pow(2).mean(), {}


def test_row3_exploded_weights_are_never_checkpointed(tmp_path):
    config = TrainConfig(lr=1e20, checkpoint_every=1, grad_clip=0, max_steps=3, out_dir=str(tmp_path),
                         progress=False)
    with pytest.raises(NonFiniteLossError, match="refusing to write the checkpoint|no checkpoint was written"):
        train(Line(), lambda *a: torch.randn(8, 4) * 1e3, _line_loss, config)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("field, value", [("lr", math.inf), ("weight_decay", math.inf), ("eps", math.inf),
                                          ("lr", math.nan), ("min_lr_ratio", math.nan), ("grad_clip", math.inf)])
def test_row3_configs_refuse_non_finite_numbers(field, value):
    with pytest.raises(ValueError, match=f"^{field}: expected a finite number"):
        TrainConfig(**{field: value})


def test_row3_save_checkpoint_refuses_non_finite_state(tmp_path):
    model = Line()
    save_checkpoint(tmp_path / "checkpoint.pt", model=model, step=1)
    with torch.no_grad():
        model.fc.weight[0, 0] = math.nan
    with pytest.raises(CheckpointError, match="fc.weight is not finite"):
        save_checkpoint(tmp_path / "checkpoint.pt", model=model, step=2)
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1  # the good one is untouched


# ----------------------------------------------------------------------------------------------- row 4: resume
def test_row4_resuming_a_finished_run_keeps_its_results_and_can_extend_it(tmp_path):
    first = run_pretraining(tiny(tmp_path, eval_every=2))
    again = run_pretraining(tiny(tmp_path, eval_every=2, resume=True))
    assert again.summary["eval"] == first.summary["eval"] and again.summary["eval"]
    assert again.summary["determined"] == first.summary["determined"] is not None
    longer = run_pretraining(tiny(tmp_path, eval_every=2, resume=True, max_steps=6))
    assert longer.summary["steps"] == 6
    steps = [r["step"] for r in longer.train.history if r["split"] == "train"]
    assert steps == [2, 4, 6]
    with pytest.raises(CheckpointError, match="past max_steps=2"):
        run_pretraining(tiny(tmp_path, resume=True, max_steps=2))


def test_row4_cli_refuses_an_existing_run_directory_without_resume_or_overwrite(tmp_path):
    out = str(tmp_path / "run")
    assert cli.main(["pretrain", *TINY_FLAGS, "--max-steps", "2", "--no-progress", "--out-dir", out]) == 0
    (tmp_path / "run" / "lora_adapter.safetensors").write_text("stale")
    assert cli.main(["pretrain", *TINY_FLAGS, "--max-steps", "2", "--d-model", "32", "--out-dir", out]) == 2
    assert cli.main(["pretrain", *TINY_FLAGS, "--max-steps", "2", "--d-model", "32", "--no-progress",
                     "--out-dir", out, "--overwrite"]) == 0
    assert not (tmp_path / "run" / "lora_adapter.safetensors").exists()  # the old run's files went
    assert json.loads((tmp_path / "run" / "model_config.json").read_text())["d_model"] == 32


# ----------------------------------------------------------------------------------------------- row 5: model inputs
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(input_ids=torch.full((2, 6), 50)), ValueError, r"input_ids: expected ids in \[0, 50\), got 50"),
    (dict(input_ids=torch.full((2, 6), -1)), ValueError, "input_ids: expected ids in"),
    (dict(input_ids=torch.full((2, 6), -100)), ValueError, "input_ids: expected ids in"),
    (dict(input_ids=torch.ones(2, 6)), TypeError, "input_ids: expected an integer tensor"),
    (dict(input_ids=torch.ones(2, 6, dtype=torch.bool)), TypeError, "input_ids: expected an integer tensor"),
    (dict(input_ids=[[1, 2, 3]]), TypeError, "input_ids: expected a torch.Tensor"),
    (dict(input_ids=torch.ones(2, 6, dtype=torch.long), token_type_ids=torch.full((2, 6), 2)), ValueError,
     "token_type_ids: expected ids in"),
    (dict(input_ids=torch.ones(2, 6, dtype=torch.long), token_type_ids=torch.full((2, 6), -1)), ValueError,
     "token_type_ids"),
    (dict(input_ids=torch.ones(2, 6, dtype=torch.long), labels=torch.full((2, 6), 50)), ValueError,
     r"labels: expected ids in \[0, 50\) or -100"),
    (dict(input_ids=torch.ones(2, 6, dtype=torch.long), labels=torch.full((2, 6), -5)), ValueError, "labels"),
])
def test_row5_bad_model_inputs_name_the_argument(kwargs, error, message):
    model = BertForMaskedLM(BertConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1))
    with pytest.raises(error, match=message):
        model(**kwargs)


def test_row5_labels_of_minus_100_pass_and_classifier_labels_are_checked():
    model = BertForMaskedLM(BertConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1))
    labels = torch.full((2, 6), -100)
    labels[0, 1] = 49
    assert math.isfinite(float(model(torch.ones(2, 6, dtype=torch.long), labels=labels).loss.detach()))
    clf = BertForSequenceClassification(BertConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1), 3)
    with pytest.raises(ValueError, match=r"labels: expected ids in \[0, 3\)"):
        clf(torch.ones(2, 6, dtype=torch.long), labels=torch.tensor([0, 3]))


# ----------------------------------------------------------------------------------------------- row 6: CLI errors
@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--lr", "-1"], "minitx: error: lr: got -1.0, which is out of range"),
    (["pretrain", "--init-std", "nan"], "minitx: error: init_std: expected a finite number"),
    (["pretrain", "--device", "banana"], "minitx: error: device:"),
    (["finetune", "--from", "no/such/run"], "minitx: error: from_checkpoint:"),
    (["classify", "no/such/run", "a text"], "minitx: error: path:"),
])
def test_row6_user_errors_print_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_row6_debug_flag_and_env_show_the_traceback(capsys, monkeypatch):
    assert cli.main(["pretrain", "--lr", "-1", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MINITX_DEBUG", "1")
    assert cli.main(["pretrain", "--lr", "-1"]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_row6_a_signal_saves_the_current_step_and_says_how_to_resume(tmp_path, signum, code):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "minitx", "pretrain", *TINY_FLAGS, "--max-steps", "100000",
                             "--out-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    watchdog = threading.Timer(120, proc.kill)  # the bound on this test, whatever the child does
    watchdog.start()
    try:
        started = any(line.startswith("step 4/") for line in proc.stdout)  # plain lines: training runs
        assert started, "the run never printed step 4"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "--resume" in lines[0]
    step = read_checkpoint(out / "checkpoint.pt")["step"]
    assert step >= 4 and f"step {step}" in lines[0]
    resume = minitx_cli("pretrain", *TINY_FLAGS, "--max-steps", str(step + 2), "--out-dir", str(out),
                        "--resume", "--no-progress")
    assert resume.returncode == 0, resume.stderr
    assert read_checkpoint(out / "checkpoint.pt")["step"] == step + 2


# ----------------------------------------------------------------------------------------------- row 7: not a TTY
def test_row7_piped_output_has_plain_lines_no_bar_and_names_the_run_directory(tmp_path):
    run = minitx_cli("pretrain", *TINY_FLAGS, "--max-steps", "4", "--eval-every", "2",
                     "--out-dir", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stdout + run.stderr  # no tqdm redraws
    lines = run.stdout.splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("step ")] == ["2/4", "2/4", "4/4", "4/4"]
    assert any(re.match(r"step 2/4 eval loss \d", ln) for ln in lines)
    assert any(ln.startswith("run directory") and str(tmp_path / "run") in ln for ln in lines)


# ----------------------------------------------------------------------------------------------- row 8: side files
def test_row8_damaged_side_files_do_not_block_resume_and_stale_temporaries_go(tmp_path):
    run_pretraining(tiny(tmp_path, checkpoint_every=2, max_steps=2))
    out = tmp_path / "run"
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "tr')  # a record cut short by a kill
    (out / "tokenizer.json").write_text((out / "tokenizer.json").read_text()[:40])
    stale = out / ".checkpoint.pt.tmp.999999999"
    stale.write_bytes(b"\0" * 1000)
    with pytest.warns(UserWarning, match="dropped 1 damaged line"):
        result = run_pretraining(tiny(tmp_path, resume=True, max_steps=4))
    assert result.summary["steps"] == 4 and not stale.exists()
    assert [r["step"] for r in result.train.history if r["split"] == "train"] == [2, 4]
    json.loads((out / "tokenizer.json").read_text())  # rewritten whole


# ----------------------------------------------------------------------------------------------- row 9: manifests
@pytest.mark.parametrize("manifest, message", [
    ("null", "expected a JSON object, got NoneType"), ("[]", "expected a JSON object, got list"),
    ('{"sha256": "ab", "bytes": "big", "step": 1}', "'bytes': expected int"),
    ("{}", "'sha256': expected str"), pytest.param("[" * 50000, "RecursionError", id="deeply-nested"),
    ("{not json", "unreadable"),
])
def test_row9_bad_manifests_are_checkpoint_errors(pretrained, tmp_path, manifest, message):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    (run / "checkpoint.json").write_text(manifest)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_pretrained(run)


def test_row9_payloads_missing_keys_and_bad_model_config_are_checkpoint_errors(tmp_path):
    model = Line()
    save_checkpoint(tmp_path / "checkpoint.pt", model=model, step=1, extra_state={"model_config": [1, 2],
                                                                                  "tokenizer": {}})
    with pytest.raises(CheckpointError, match=r"extra_state\['model_config'\]|'model_config': expected dict"):
        load_pretrained(tmp_path)
    save_checkpoint(tmp_path / "checkpoint.pt", model=model, step=1)
    (tmp_path / "model_config.json").write_text("{broken")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model config .*model_config.json: missing or unreadable"):
        load_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------- row 10: LoRA
def _lora_model():
    model = BertForSequenceClassification(BertConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=2), 2)
    apply_lora(model, ["v_proj"], r=2, alpha=4)
    return model


def test_row10_merge_lora_is_atomic():
    model = _lora_model()
    for block in model.bert.blocks:
        nn.init.normal_(block.attention.v_proj.lora_B)
    with torch.no_grad():
        model.bert.blocks[1].attention.v_proj.lora_B[0, 0] = math.nan
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"bert.blocks.1.attention.v_proj"):
        merge_lora(model)
    assert all(isinstance(b.attention.v_proj, LoRALinear) and not b.attention.v_proj.merged
               for b in model.bert.blocks)
    assert all(torch.equal(v, before[k]) or torch.isnan(v).any() for k, v in model.state_dict().items())


@pytest.mark.parametrize("targets, message", [([], "target_modules: expected at least one pattern"),
                                              ("re:(", r"target_modules: pattern 're:\(' is not a valid regex")])
def test_row10_apply_lora_refuses_no_targets_and_bad_regexes(targets, message):
    model = BertForSequenceClassification(BertConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1), 2)
    with pytest.raises(ValueError, match=message):
        apply_lora(model, targets, r=2, alpha=4)
    with pytest.raises(ValueError, match=message):
        apply_adapters(model, targets, bottleneck=2)
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen


# ----------------------------------------------------------------------------------------------- row 12: configs
@pytest.mark.parametrize("make, error, message", [
    (lambda: PretrainConfig(init_std=-1.0, out_dir=""), ValueError, "initializer_range|init_std"),
    (lambda: PretrainConfig(init_std=math.nan, out_dir=""), ValueError, "init_std: expected a finite number"),
    (lambda: TrainConfig(seed=2**70), ValueError, r"seed: expected an int in \[0, 2\*\*63\)"),
    (lambda: TrainConfig(seed=1.5), TypeError, "seed: expected an int"),
    (lambda: TrainConfig(max_steps=True), TypeError, "max_steps: expected an int"),
    (lambda: TrainConfig(device="banana"), ValueError, "device: expected"),
    (lambda: TrainConfig(device="cuda:99"), ValueError, "device:"),
    (lambda: BertConfig(norm_first="no"), TypeError, "norm_first: expected a bool"),
    (lambda: BertConfig(vocab_size=10, pad_token_id=10), ValueError, "pad_token_id"),
    (lambda: BertConfig(layer_norm_eps=math.inf), ValueError, "layer_norm_eps"),
    (lambda: FinetuneConfig(num_labels=2.5, out_dir=""), TypeError, "num_labels"),
    (lambda: BertForSequenceClassification(BertConfig(), 2.5), ValueError, "num_labels: expected an int"),
])
def test_row12_unchecked_config_values_are_refused_by_name(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_row12_cpu_build_refuses_cuda_device():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device: 'cuda' needs CUDA"):
        TrainConfig(device="cuda")


# ----------------------------------------------------------------------------------------------- row 13: data files
def test_row13_binary_and_deeply_nested_finetune_files_name_the_argument(tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"text,label\n\xff\xfe\x00\x81,1\n")
    with pytest.raises(ValueError, match="train_file: expected UTF-8 text"):
        read_labelled_file(tmp_path / "bin.csv", 2, "train_file")
    (tmp_path / "deep.jsonl").write_text("[" * 100000 + "\n")
    with pytest.raises(ValueError, match="train_file .* nested too deeply"):
        read_labelled_file(tmp_path / "deep.jsonl", 2, "train_file")


# ----------------------------------------------------------------------------------------------- row 14: defaults
def test_row14_one_thread_policy_and_warmup_longer_than_the_run_is_warned():
    assert FinetuneConfig(out_dir="").threads == PretrainConfig(out_dir="").threads == 1
    with pytest.warns(UserWarning, match="warmup_steps=60 > max_steps=50"):
        PretrainConfig(max_steps=50, out_dir="")
