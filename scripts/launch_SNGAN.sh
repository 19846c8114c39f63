#!/bin/bash
# SN-GAN baseline, ImageNet 128x128, batch 64, 5 D steps; 2019: no hardware stated.
# Multi-GPU: for DDP: replace `python` with `torchrun --nproc_per_node=N` and divide
# --batch_size by N (under DDP it is per GPU).
# Length: 100 epochs = 400,300 iterations of 320 images, as in 2019.
set -e
cd "$(dirname "$0")/.."
python train.py \
  --dataset I128_hdf5 --parallel --shuffle --num_workers 8 --batch_size 64 \
  --num_G_accumulations 1 --num_D_accumulations 1 --num_D_steps 5 --G_lr 2e-4 --D_lr 2e-4 \
  --D_B2 0.900 --G_B2 0.900 --G_attn 0 --D_attn 0 --G_nl relu --D_nl relu --SN_eps 1e-8 \
  --BN_eps 1e-5 --adam_eps 1e-8 --G_ortho 0.0 --D_thin --G_init xavier --D_init xavier \
  --G_eval_mode --test_every 2000 --save_every 1000 --num_best_copies 5 --num_save_copies 2 \
  --seed 0 --name_suffix SNGAN \
  "$@"
