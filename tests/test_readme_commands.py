"""The README followed as a newcomer follows it (issue 19): the quickstart, then every `minitx` command of the
README's code blocks, in order, in one fresh directory, each at a small size (a few steps, a tiny model).
A command that needs a run directory an earlier one never wrote fails here, as it would for a reader."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from minitx.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"

# What each command gets added so it runs in seconds; the README's own flags come first and are kept.
SMALL = {
    "demo": ["--fast", "--no-progress"],
    "pretrain": ["--max-steps", "2", "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32",
                 "--batch-size", "8", "--max-length", "40", "--train-sentences", "200", "--eval-sentences", "20",
                 "--warmup-steps", "1", "--eval-every", "0", "--no-progress"],
    "finetune": ["--max-steps", "2", "--eval-every", "2", "--warmup-steps", "1", "--n-train-labels", "16",
                 "--n-validation", "8", "--n-test", "8", "--batch-size", "8", "--no-progress"],
    "train-lm": ["--max-steps", "2", "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--block-size", "16",
                 "--batch-size", "4", "--eval-batches", "1", "--sample-tokens", "0", "--warmup-steps", "1",
                 "--eval-every", "0", "--no-progress"],
    "generate": ["--max-new-tokens", "5"],
    "train-seq2seq": ["--max-steps", "2", "--n-train", "64", "--n-eval", "4", "--d-model", "16", "--n-heads", "2",
                      "--d-ff", "32", "--n-encoder-layers", "1", "--n-decoder-layers", "1", "--warmup-steps", "1",
                      "--batch-size", "8", "--eval-beams", "2"],
    "bench attention": ["--seq-lens", "16", "--head-dims", "8", "--masks", "full", "--dtypes", "fp32", "--impls",
                        "minitx:math", "--repeats", "1", "--warmup", "0", "--quiet", "--out", "bench.json"],
}
# Not run here, each with its reason: installing and the test suite are the quickstart's own steps (this
# suite is the second one), and the two-process DDP run is tests/test_ddp.py's.
NOT_HERE = ("pip ", "python3 -m pytest", "torchrun ")


def readme_commands(text: str) -> list[str]:
    """Every command line of the README's fenced code blocks, in order ("$ " prompts and "# ..." comments
    removed; "a && b" split)."""
    commands = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if not line or line.startswith("#"):
                continue
            line = re.sub(r"\s+#\s.*$", "", line)
            commands += [part.strip() for part in line.split("&&")]
    return [c for c in commands if c.startswith(("minitx ", "pip ", "python3 ", "torchrun "))]


def concrete(command: str) -> list[str]:
    """The argv of a README command at a small size: optional `[...]` parts dropped, the first of `a|b|c`."""
    command = re.sub(r"\[[^\]\"]*\.\.\.[^\]\"]*\]", "", command)  # "[--max-steps ... ]", "[...]"
    argv = [arg.split("|")[0] if "|" in arg and " " not in arg else arg for arg in shlex.split(command)][1:]
    key = " ".join(argv[:2]) if argv[0] == "bench" else argv[0]
    return argv + SMALL.get(key, [])


def test_the_readme_lists_the_commands_a_newcomer_runs():
    commands = readme_commands(README.read_text())
    assert commands[0].startswith("pip install") and "minitx demo" in commands[:2]  # the quickstart comes first
    names = {shlex.split(c)[1] for c in commands if c.startswith("minitx ")}
    assert {"demo", "pretrain", "fill-mask", "finetune", "classify", "export", "train-lm", "generate",
            "bench"} <= names


def test_every_readme_command_runs_in_order_after_the_quickstart(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # `minitx check my_adapters.py`: the reader's own functions; here the plain-PyTorch ones the kit's tests use
    (tmp_path / "my_adapters.py").write_text((README.parent / "tests" / "conformance" / "plain_torch.py").read_text())
    ran = []
    for command in readme_commands(README.read_text()):
        if command.startswith(NOT_HERE):
            continue
        argv = concrete(command)
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"README command failed after the quickstart: {command}\n  ran as {argv}\n{err[-1500:]}"
        ran.append(argv[0])
    assert ran[0] == "demo" and len(ran) >= 10
    assert (tmp_path / "runs" / "demo" / "finetune" / "checkpoint.pt").is_file()


def test_the_quickstart_gives_the_cpu_wheel_index_and_its_size():
    """A plain `pip install torch==2.13.0` is a multi-GB CUDA build on Linux: the README says how PyTorch's own
    install page gets the CPU build, and how large it is (issue 19)."""
    quickstart = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in quickstart
    assert re.search(r"\d+ MB download", quickstart) and "where that is the CPU build" not in quickstart
