#!/bin/bash
# BigGAN on your own small image folder (a few hundred to a few thousand images, one subfolder
# per class), with the small-data defenses against D overfitting:
#   DATA=data/my_images bash scripts/launch_small_data.sh [more train.py flags]
# (64x64 here: e.g. --resolution 128 --G_attn 64 --D_attn 64 at the end for 128x128.)
# - DiffAugment translation,cutout on every image D sees (add color below ~1k images);
#   --DiffAugment_p auto adapts the strength instead (ADA's controller, --ada_target 0.6).
# - LeCam 0.3 from iteration 1000; random horizontal flips of the reals (--mirror_augment).
# - EMA of G sampled with standing stats; the best checkpoints by KID, which is unbiased at
#   small sample counts (FID needs ~10k samples to stop drifting); testing needs the moments
#   and the real features of DATA: python calculate_inception_moments.py --dataset "$DATA"
#   --resolution 64 (the error message at startup says so too).
# Multi-GPU: for DDP: replace `python` with `torchrun --nproc_per_node=N` and divide
# --batch_size by N (under DDP it is per GPU).
# Measured here only at demo scale (CPU, ~1,250 iterations; see the README's small-data
# section): at that length DiffAugment slows learning, and its gains show in long runs.
set -e
cd "$(dirname "$0")/.."
DATA=${DATA:-data/my_images}
python train.py --dataset "$DATA" --resolution 64 \
  --DiffAugment translation,cutout --LC 0.3 --LC_start 1000 --mirror_augment \
  --shuffle --use_multiepoch_sampler --batch_size 32 --num_D_steps 2 \
  --G_ch 32 --D_ch 32 --G_shared --shared_dim 128 --hier --dim_z 120 --G_attn 0 --D_attn 0 \
  --G_lr 2e-4 --D_lr 2e-4 --G_init N02 --D_init N02 \
  --ema --use_ema --ema_start 1000 --ema_decay 0.999 --G_eval_mode \
  --num_epochs 1000 --save_every 2000 --num_save_copies 2 \
  --test_every 2000 --which_best KID --num_best_copies 2 --num_inception_images 5000 \
  --seed 0 "$@"
