"""Fine-tuning a pretrained encoder for sequence classification: the recipe behind `minitx finetune`,
`minitx classify` and `minitx demo`. Guide: docs/finetuning.md.

    config.py     FinetuneConfig (flat; CLI flags map onto its fields)
    data.py       the built-in sentiment task, CSV / JSONL files checked row by row, batches
    recipe.py     run_finetuning: starting point, PEFT method, training with early stopping, the run directory
    inference.py  load_finetuned, predict, classify_main
    demo.py       run_demo / demo_main: pretrain, fill in blanks, LoRA fine-tune, in one command
"""
