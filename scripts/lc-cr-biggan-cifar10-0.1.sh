#!/bin/bash
# LeCam (weight 0.3) with consistency regularisation (weight 10).
# CIFAR-10 with 10% of its training images (--num_samples 5000, chosen by --seed and kept by
# --resume), BigGAN at 32x32 as in launch_cifar_ema.sh, with the small-data flags of the
# forks of the 2019 code: mit-han-lab/data-efficient-gans (DiffAugment-biggan-cifar) and
# google/lecam-gan (biggan_cifar). Flag names are theirs; this script was rewritten here
# from them (no network access to diff it against the originals).
# Length: 5000 epochs of 5,000 images = 125,000 iterations of 200 images, as at full data.
set -e
cd "$(dirname "$0")/.."
python train.py \
  --experiment_name lc-cr-biggan-cifar10-0.1 --LC 0.3 --CR 10 --CR_augment flip,translation \
  --mirror_augment --use_multiepoch_sampler --which_best FID --num_inception_images 10000 \
  --shuffle --batch_size 50 --parallel --num_G_accumulations 1 --num_D_accumulations 1 \
  --num_epochs 5000 --num_D_steps 4 --G_lr 2e-4 --D_lr 2e-4 --dataset C10 \
  --num_samples 5000 --G_ortho 0.0 --G_attn 0 --D_attn 0 --G_init N02 --D_init N02 \
  --ema --use_ema --ema_start 1000 --test_every 4000 --save_every 2000 --seed 0 \
  "$@"
