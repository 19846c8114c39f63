#!/bin/bash
# Throughput of the BigGAN-128 ch96 training iteration on one GPU (bench.py, synthetic data):
# the launch_BigGAN_bs256x8.sh model and optimizer flags, but --num_G_accumulations 1
# --num_D_accumulations 1, so one iteration is one batch of 256 real images (one D step,
# one G step); the 8-accumulation run costs 8x the time per iteration at the same images/s.
# Prints images/s, ms/iter, peak GPU memory and TFLOP/s for fp32, bf16, bf16+channels_last
# and bf16+compile. Extra flags pass through, e.g. --bench_json bench_I128.json.
# The loader figure (bench.py --bench_loader) times --dataset's HDF5 file if it exists, or with
# --bench_loader synthetic a temporary one, with the default --num_workers 8 unless given.
# DataParallel, sampling and saving flags are left out: nothing here reads them.
# SCRIPT=benchmarks/profile_step.py runs the profiler on the same step instead.
set -e
cd "$(dirname "$0")/.."
python "${SCRIPT:-bench.py}" \
  --resolution 128 --n_classes 1000 --batch_size 256 \
  --num_G_accumulations 1 --num_D_accumulations 1 --num_D_steps 1 --G_lr 1e-4 --D_lr 4e-4 \
  --D_B2 0.999 --G_B2 0.999 --G_attn 64 --D_attn 64 --G_nl inplace_relu --D_nl inplace_relu \
  --SN_eps 1e-6 --BN_eps 1e-5 --adam_eps 1e-6 --G_ortho 0.0 --G_shared --G_init ortho \
  --D_init ortho --hier --dim_z 120 --shared_dim 128 --G_ch 96 --D_ch 96 --ema \
  --ema_start 20000 --seed 0 \
  --bench_modes fp32,bf16,bf16_cl,bf16_compile --bench_warmup 5 --bench_iters 20 \
  "$@"
