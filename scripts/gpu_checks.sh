#!/bin/bash
# GPU checks of the bf16 and compile work, as one prepared run on one GPU (results under $OUT):
#  1. bench.py on BigGAN-128 ch96, batch 256: fp32 and bf16 (+channels_last), then +compile;
#     models are built on the GPU, so each mode's set-up takes seconds, not minutes;
#  2. fp32 vs bf16 loss curves: train.py for 300 iterations on the 64x64 demo data, both runs
#     from the same seed, then the per-iteration losses side by side.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT/env.txt"

timeout 180 bash scripts/bench.sh --bench_modes fp32,bf16,bf16_cl --bench_warmup 2 \
  --bench_iters 6 --bench_json "$OUT/bench.json" 2>&1 | tail -25 | tee "$OUT/bench.txt"

python make_hdf5.py --make_demo /tmp/demo64 --resolution 64 --data_root /tmp \
  --num_workers 8 > "$OUT/make_demo.txt" 2>&1
for amp in none bf16; do
  timeout 60 python train.py --dataset /tmp/demo64_64.hdf5 --base_root /tmp/amp_$amp \
    --experiment_name curve --amp $amp --shuffle --use_multiepoch_sampler --num_workers 4 \
    --batch_size 64 --num_D_steps 2 --G_ch 32 --D_ch 32 --G_shared --shared_dim 64 --hier \
    --dim_z 64 --G_attn 32 --D_attn 32 --G_lr 1e-4 --D_lr 4e-4 --ema --num_epochs 8 \
    --save_every 0 --test_every 0 --log_every 10 --logstyle %.6f > "$OUT/train_$amp.txt" 2>&1
  cp -r /tmp/amp_$amp/logs/curve "$OUT/curve_$amp" 2>/dev/null
done
python - "$OUT" <<'PY' | tee "$OUT/curves.txt"
import sys, numpy as np
out = sys.argv[1]
def load(amp, name):
    rows = [l.split(':') for l in open(f'{out}/curve_{amp}/{name}.log')]
    return {int(i): float(v) for i, v in rows}
for name in ('G_loss', 'D_loss_real', 'D_loss_fake'):
    a, b = load('none', name), load('bf16', name)
    itrs = sorted(set(a) & set(b))
    fa, fb = np.array([a[i] for i in itrs]), np.array([b[i] for i in itrs])
    print(f'{name}: {len(itrs)} points to itr {itrs[-1]}; fp32 mean(last 10) {fa[-10:].mean():.3f}'
          f', bf16 mean(last 10) {fb[-10:].mean():.3f}; finite: {np.isfinite(fb).all()}')
    for i in itrs[::5]:
        print(f'  itr {i:4d}  fp32 {a[i]:+.4f}  bf16 {b[i]:+.4f}')
PY

timeout 120 bash scripts/bench.sh --bench_modes bf16_compile --bench_warmup 3 --bench_iters 6 \
  --bench_json "$OUT/bench_compile.json" 2>&1 | tail -12 | tee "$OUT/bench_compile.txt"
echo done
