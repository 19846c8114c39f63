#!/bin/bash
# Sample the run of launch_cifar_ema.sh (its flags give the run's name). Name the outputs, e.g.
#   bash scripts/sample_cifar_ema.sh --sample_npz --sample_sheets --sample_inception_metrics
set -e
cd "$(dirname "$0")/.."
python sample.py \
  --shuffle --batch_size 50 --G_batch_size 256 --parallel --num_G_accumulations 1 \
  --num_D_accumulations 1 --num_epochs 500 --num_D_steps 4 --G_lr 2e-4 --D_lr 2e-4 \
  --dataset C10 --G_ortho 0.0 --G_attn 0 --D_attn 0 --G_init N02 --D_init N02 --ema --use_ema \
  --ema_start 1000 --test_every 5000 --save_every 2000 --num_best_copies 5 --num_save_copies 2 \
  --seed 0 \
  "$@"
