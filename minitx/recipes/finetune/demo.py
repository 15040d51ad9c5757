"""`minitx demo`: the README's first command. Pretrain on the built-in language, show the model filling in
blanks, LoRA fine-tune a sentiment classifier from 256 labels, and classify a few sentences."""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from minitx.recipes.finetune.config import FinetuneConfig
from minitx.recipes.finetune.inference import predict
from minitx.recipes.finetune.recipe import run_finetuning
from minitx.recipes.pretrain.config import PretrainConfig
from minitx.recipes.pretrain.fill_mask import fill_mask, format_predictions
from minitx.recipes.pretrain.recipe import run_pretraining
from minitx.training.guards import check_out_dir, run_lock

FILL_MASK_EXAMPLES = [  # agreement, a fixed phrase, a bracket, a pronoun (docs/data.md)
    "these dogs near the old river [MASK] happy .",
    "because [MASK] the rain , every city is calm .",
    "each song near the bridges is calm [ as the kings said [MASK] .",
    "these poets are kind so [MASK] are kind .",
]
# Sentences of the built-in language (a subject with a modifier, as the grammar always has), with their labels:
# the predicated adjective's polarity, flipped by a negator (docs/data.md).
CLASSIFY_EXAMPLES = [("this song near the old tree is wonderful .", 1),
                     ("this song near the old tree is not wonderful .", 0),
                     ("these poets that met the king are cruel but honest .", 0),
                     ("every baker behind the wall is never rude .", 1)]
# --fast: a few seconds of work, for tests and a first look; the real demo uses the recipes' defaults.
FAST_PRETRAIN = dict(max_steps=60, train_sentences=2000, eval_sentences=100, d_model=32, n_heads=2, d_ff=64,
                     vocab_size=300, eval_every=0, batch_size=32)
FAST_FINETUNE = dict(max_steps=30, eval_every=10, n_test=200, n_validation=100)


def run_demo(out_dir: str | Path = "runs/demo", fast: bool = False, seed: int = 0,
             progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Pretrain (out_dir/pretrain) then LoRA fine-tune (out_dir/finetune); return both summaries and timings.

    The run-directory rule of every command: a demo already in `out_dir` is refused unless `overwrite`, before
    anything runs, and one process at a time writes it (guards.run_lock)."""
    out, began = Path(out_dir), time.perf_counter()
    pretrain_config = PretrainConfig(out_dir=str(out / "pretrain"), seed=seed, progress=progress,
                                     overwrite=overwrite, **(FAST_PRETRAIN if fast else {}))
    # built once the pretraining run exists (it checks from_checkpoint), with the same rule for its directory
    finetune_config = functools.partial(FinetuneConfig, from_checkpoint=str(out / "pretrain"), method="lora",
                                        seed=seed, out_dir=str(out / "finetune"), progress=progress,
                                        overwrite=overwrite, **(FAST_FINETUNE if fast else {}))
    with run_lock(out):
        for stage in ("pretrain", "finetune"):
            try:
                check_out_dir(SimpleNamespace(out_dir=str(out / stage), resume=False, overwrite=overwrite))
            except ValueError:
                raise ValueError(f"out_dir: {str(out)!r} already holds a demo run; pass --overwrite to replace "
                                 f"it, or another --out-dir") from None
        return _demo_stages(out, fast, pretrain_config, finetune_config, began)


def _demo_stages(out: Path, fast: bool, pretrain_config: PretrainConfig, finetune_config: Callable[[], FinetuneConfig],
                 began: float) -> dict[str, Any]:
    if fast:
        print("minitx demo --fast: a tiny model and a few steps, to see every stage run; its numbers are not "
              "meaningful (the demo itself: minitx demo)")
    pretrain = run_pretraining(pretrain_config)
    print("\nThe pretrained model fills in blanks (it has never seen a label):")
    for text in FILL_MASK_EXAMPLES:
        print(format_predictions(text, fill_mask(pretrain.model, pretrain.tokenizer, text, top_k=3)))
    print("\nLoRA fine-tuning a sentiment classifier on the built-in task:")
    finetune = run_finetuning(finetune_config())
    probs = predict(finetune.model, finetune.tokenizer, [text for text, _ in CLASSIFY_EXAMPLES])
    print("\nClassifying new sentences:")
    names = ("negative", "positive")
    for (text, label), p in zip(CLASSIFY_EXAMPLES, probs):
        print(f"  {names[int(p.argmax())]:<8} {float(p.max()):6.1%}  {text}  (label: {names[label]})")
    seconds = time.perf_counter() - began
    print(f"\ntest accuracy {finetune.summary['test_accuracy']:.2%} from "
          f"{finetune.summary['examples']['train']} labels, training "
          f"{finetune.summary['trainable_share']:.2%} of the weights; demo took {seconds:.0f} s."
          + (" (--fast: not a meaningful accuracy)" if fast else ""))
    print(try_advice(out / "finetune"))
    return {"pretrain": pretrain.summary, "finetune": finetune.summary, "wall_time_s": seconds}


def try_advice(run_dir: str | Path) -> str:
    """What the demo suggests next: sentences of the built-in language, the only text the classifier was taught.

    A sentence outside its grammar (e.g. "this film is not good .", with no modifier after the subject) is out of
    the labelled distribution and its label means little (docs/finetuning.md)."""
    text = CLASSIFY_EXAMPLES[1][0]
    return (f"Try: minitx classify {run_dir} \"{text}\"\n"
            f"     (the classifier knows the built-in language only: a subject with a modifier, then 'is/are', "
            f"an optional 'not'/'never' and an adjective; other sentences are outside what it was taught)")


def demo_main(argv: Sequence[str], prog: str = "minitx demo") -> int:
    """`minitx demo [--out-dir runs/demo] [--fast] [--seed 0]`."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/demo", help="where the two runs go (default: runs/demo)")
    parser.add_argument("--fast", action="store_true", help="a tiny model and a few steps (seconds, not minutes; "
                        "its numbers are not meaningful)")
    parser.add_argument("--seed", type=int, default=0, help="seed of both runs (default: 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.add_argument("--overwrite", action="store_true", help="replace a demo run already in --out-dir")
    args = parser.parse_args(list(argv))
    run_demo(args.out_dir, fast=args.fast, seed=args.seed, progress=args.progress, overwrite=args.overwrite)
    return 0
