"""`minitx export RUN DIR`: a minitx run directory as a Hugging Face checkpoint directory (minitx.interop.hf_dirs).

A pretraining run becomes a `BertForMaskedLM`, a fine-tuning run a `BertForSequenceClassification` (LoRA runs
are stored merged, lora.6, so they export as plain weights); `--peft` writes a LoRA run's adapter alone as a
PEFT adapter directory instead (minitx.interop.peft_dirs). transformers is never imported.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from minitx.training.checkpoint import read_checkpoint


def _run_kind(run_dir: Path) -> str:
    ckpt = run_dir / "checkpoint.pt" if run_dir.is_dir() else run_dir
    if not ckpt.is_file():
        raise ValueError(f"run: expected a minitx run directory holding checkpoint.pt, got {str(run_dir)!r}")
    extra = read_checkpoint(ckpt).get("extra_state") or {}
    return "finetune" if "classifier" in extra else "pretrain"


def export_run(run_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write `out_dir` (config.json, model.safetensors, vocab.txt, tokenizer_config.json, ...) from a run."""
    from minitx.interop.hf_dirs import save_hf_pretrained
    run_dir = Path(run_dir)
    if _run_kind(run_dir) == "finetune":
        from minitx.recipes.finetune.inference import load_finetuned
        model, tokenizer, info = load_finetuned(run_dir)
        return save_hf_pretrained(model, tokenizer, out_dir, info.get("label_names"))
    from minitx.recipes.pretrain.fill_mask import load_pretrained
    model, tokenizer = load_pretrained(run_dir)
    return save_hf_pretrained(model, tokenizer, out_dir)


def export_main(argv: Sequence[str], prog: str = "minitx export") -> int:
    """`minitx export RUN DIR [--peft]`."""
    parser = argparse.ArgumentParser(prog=prog, description="write a run as a Hugging Face checkpoint directory "
                                                            "(transformers' from_pretrained loads it)")
    parser.add_argument("run", help="a `minitx pretrain` or `minitx finetune` run directory")
    parser.add_argument("out_dir", help="the directory to write (created if needed)")
    parser.add_argument("--peft", action="store_true", help="a LoRA fine-tuning run: write its adapter alone as a "
                        "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
    args = parser.parse_args(list(argv))
    if args.peft:
        from minitx.interop.peft_dirs import export_lora_run
        paths = export_lora_run(args.run, args.out_dir)
    else:
        paths = export_run(args.run, args.out_dir)
    print(f"wrote {args.out_dir}: " + ", ".join(sorted(p.name for p in paths.values())))
    return 0
