#!/bin/bash
# Fine-tune the published BigGAN-deep 128 generator (DeepMind's, as the Hugging Face package
# pytorch-pretrained-biggan holds it) on an image folder (one subfolder per class), with a
# fresh BigGAN-deep D. Convert it once first (see TFHub/README.md):
#   python TFHub/converter.py --hf /path/to/biggan-deep-128 --truncation 1.0 \
#       --weights_root weights --name BigGAN_deep_128_hf --check
# then:  DATA=data/my_images bash scripts/finetune_BigGAN_deep.sh [more train.py flags]
# (SOURCE=weights/... for another converted run; flags given here override the ones below.)
# Recipe: G's flags are the converted run's (train.py refuses others); G learns at 1e-5, a
# fifth of the paper's 5e-5, so the pretrained features survive the first noisy gradients;
# D alone trains for its first 1,000 iterations (--D_warmup) so it judges the pretrained G's
# samples before G follows it; the EMA starts after the warm-up. The class embedding is
# re-initialised when the folder's class count is not ImageNet's 1,000.
# --truncation_style scaled: sample.py --truncation t draws z as the converted run does.
set -e
cd "$(dirname "$0")/.."
DATA=${DATA:-data/my_images}
SOURCE=${SOURCE:-weights/BigGAN_deep_128_hf}
python train.py --dataset "$DATA" --resolution 128 --load_weights "$SOURCE" \
  --model BigGANdeep --G_ch 128 --G_depth 2 --dim_z 128 --shared_dim 128 --hier --G_shared \
  --G_attn 64 --BN_eps 1e-4 --SN_eps 1e-4 --G_output_BN_eps 1e-4 --G_output_conv_ch 128 \
  --D_ch 128 --D_depth 2 --D_attn 64 --D_init ortho \
  --G_lr 1e-5 --D_lr 2e-4 --G_B1 0.0 --D_B1 0.0 --G_B2 0.999 --D_B2 0.999 --adam_eps 1e-6 \
  --num_D_steps 2 --D_warmup 1000 --batch_size 32 --num_G_accumulations 1 \
  --num_D_accumulations 1 --amp bf16 \
  --ema --use_ema --ema_start 1000 --ema_decay 0.999 --G_eval_mode --truncation_style scaled \
  --num_epochs 100 --save_every 1000 --num_save_copies 2 --test_every 0 \
  --shuffle --num_workers 8 --seed 0 "$@"
