"""Time one recipe at a given torch thread count: the measurement behind the `--threads 1` default of every
command (docs/training.md, "Threads"). Usage, one timed run at a time:

    flock /tmp/minitx-timing.lock python3 benchmarks/thread_policy.py bitfit 2     # or lora, full, adapter, pretrain

It pretrains a 2-step run of the default model (for `--from`), then times 150 fine-tuning steps (validation every
25, 200 test examples) or 30 pretraining steps, and prints the seconds. Unset OMP_NUM_THREADS first.
"""

import contextlib
import io
import sys
import tempfile
import time

import torch

from minitx.recipes.finetune.config import FinetuneConfig
from minitx.recipes.finetune.recipe import run_finetuning
from minitx.recipes.pretrain.config import PretrainConfig
from minitx.recipes.pretrain.recipe import run_pretraining


def main(what: str, threads: int) -> None:
    d = tempfile.mkdtemp()
    with contextlib.redirect_stdout(io.StringIO()):
        run_pretraining(PretrainConfig(out_dir=f"{d}/pre", max_steps=2, eval_every=0, eval_sentences=10,
                                       progress=False))
        began = time.perf_counter()
        if what == "pretrain":
            run_pretraining(PretrainConfig(out_dir=f"{d}/p2", max_steps=30, eval_every=0, eval_sentences=10,
                                           progress=False, threads=threads))
        else:
            run_finetuning(FinetuneConfig(from_checkpoint=f"{d}/pre", method=what, max_steps=150, eval_every=25,
                                          n_test=200, progress=False, out_dir=f"{d}/ft", threads=threads,
                                          patience=0))
    print(f"{what} threads {threads} (torch {torch.get_num_threads()}): {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
