"""Fine-tuning a pretrained encoder for sequence classification: the recipe behind `minitx finetune`,
`minitx classify` and `minitx demo`. Guide: docs/finetuning.md.

    config.py     FinetuneConfig (flat; CLI flags map onto its fields)
    data.py       the built-in sentiment task, CSV / JSONL files checked row by row, batches
    recipe.py     run_finetuning: starting point, PEFT method, training with early stopping, the run directory
    inference.py  load_finetuned, predict, classify_main
    demo.py       run_demo / demo_main: pretrain, fill in blanks, LoRA fine-tune, in one command
"""

from minitx.finetune.config import DEFAULT_LR, METHODS, FinetuneConfig
from minitx.finetune.data import LabelledSplit, builtin_splits, read_labelled_file
from minitx.finetune.demo import demo_main, run_demo
from minitx.finetune.inference import classify_main, load_finetuned, predict
from minitx.finetune.recipe import FinetuneResult, evaluate, run_finetuning

__all__ = ["FinetuneConfig", "FinetuneResult", "run_finetuning", "evaluate", "METHODS", "DEFAULT_LR",
           "LabelledSplit", "builtin_splits", "read_labelled_file", "load_finetuned", "predict",
           "classify_main", "run_demo", "demo_main"]
