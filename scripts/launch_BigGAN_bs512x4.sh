#!/bin/bash
# BigGAN, ImageNet 128x128, batch 512 x 4 accum; 2019: no hardware stated (4-8 GPUs).
# Multi-GPU: for DDP: replace `python` with `torchrun --nproc_per_node=N` and divide
# --batch_size by N (under DDP it is per GPU).
# Length: 240 epochs = 150,136 iterations of 2,048 images, the 2019 README's 150k (the
# 2019 loop re-entered its multi-epoch loader and never stopped on its own).
set -e
cd "$(dirname "$0")/.."
python train.py \
  --dataset I128_hdf5 --parallel --shuffle --num_workers 8 --batch_size 512 --load_in_mem \
  --num_G_accumulations 4 --num_D_accumulations 4 --num_D_steps 1 --G_lr 1e-4 --D_lr 4e-4 \
  --D_B2 0.999 --G_B2 0.999 --G_attn 64 --D_attn 64 --G_nl inplace_relu --D_nl inplace_relu \
  --SN_eps 1e-6 --BN_eps 1e-5 --adam_eps 1e-6 --G_ortho 0.0 --G_shared --G_init ortho \
  --D_init ortho --hier --dim_z 120 --shared_dim 128 --G_eval_mode --G_ch 96 --D_ch 96 --ema \
  --use_ema --ema_start 20000 --test_every 2000 --save_every 1000 --num_best_copies 5 \
  --num_save_copies 2 --seed 0 --use_multiepoch_sampler --num_epochs 240 \
  "$@"
