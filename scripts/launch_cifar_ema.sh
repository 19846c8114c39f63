#!/bin/bash
# BigGAN + EMA, CIFAR-10 32x32, batch 50, 500 epochs; 2019 numbers: two GPUs.
# Multi-GPU: for DDP: replace `python` with `torchrun --nproc_per_node=N` and divide
# --batch_size by N (under DDP it is per GPU).
# Length: 500 epochs = 125,000 iterations of 200 images, as in 2019.
set -e
cd "$(dirname "$0")/.."
python train.py \
  --shuffle --batch_size 50 --parallel --num_G_accumulations 1 --num_D_accumulations 1 \
  --num_epochs 500 --num_D_steps 4 --G_lr 2e-4 --D_lr 2e-4 --dataset C10 --G_ortho 0.0 \
  --G_attn 0 --D_attn 0 --G_init N02 --D_init N02 --ema --use_ema --ema_start 1000 \
  --test_every 5000 --save_every 2000 --num_best_copies 5 --num_save_copies 2 --seed 0 \
  "$@"
