#!/bin/sh
# nanoGPT's CPU shakespeare_char configuration (../shared/data/README.md), run by minitx's train-lm.
# Timed as nanoGPT was: wall time and peak RSS of the whole process, evaluations included.
# Usage: sh benchmarks/lm/nanogpt_config.sh OUT_DIR [SEED]
exec python3 -m minitx train-lm --corpus shakespeare --tokenizer char \
  --n-layers 4 --n-heads 4 --d-model 128 --block-size 64 --batch-size 12 --dropout 0.0 \
  --max-steps 2000 --lr 1e-3 --min-lr-ratio 0.1 --warmup-steps 100 --schedule cosine \
  --betas 0.9 0.99 --weight-decay 0.1 --grad-clip 1.0 \
  --eval-every 250 --eval-batches 20 --log-every 25 --attention-backend sdpa --threads 2 \
  --sample-tokens 500 --no-progress --seed "${2:-0}" --out-dir "${1:-runs/lm_nanogpt}"
