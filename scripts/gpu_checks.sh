#!/bin/bash
# Issue 16's GPU figures in one prepared run on one GPU, within BUDGET seconds (default 460:
# under the 8 minutes a device session allows per try). Results under $OUT (8 files at most):
#   summary.txt, summary.json  every figure below in one table (benchmarks/gpu_report.py)
#   bench.json           training step, BigGAN-128 ch96, batch 256 (scripts/bench.sh): fp32,
#                        bf16, bf16+channels_last (img/s, ms/iter, peak memory, TFLOP/s, MFU),
#                        and the HDF5 loader's img/s (8 workers, a synthetic file)
#   sample.json          sampling img/s (G in eval, batches of 256, fp32/bf16/bf16_cl) and the
#                        time of a 50k-sample IS/FID test with Inception on the same GPU
#   profile.json         where a bf16_cl step's time goes: kernel time by category, how busy
#                        the GPU is, kernel launches and host syncs per iteration
#   bench_compile.json   bf16 + channels_last + torch.compile
#   bench_compile_ro.json  the same with CUDA graphs (--compile_mode reduce-overhead)
#   log.txt              everything printed
# The most important figures run first; each step gets what is left of the budget, and one
# that fails or runs out of time is reported as missing. No Inception weights can be fetched
# on the device machine: the IS/FID test runs with random weights (its time is real, its
# values are not, and the output says so).
# GPU_CHECKS_SMOKE=1 runs the same steps on a tiny model and 20 samples (on the CPU when
# there is no GPU, compile steps skipped): the script's own test, minutes before a GPU lease.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-460}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1

G_FLAGS=(--resolution 128 --G_ch 96 --dim_z 120 --shared_dim 128 --hier --G_shared --G_attn 64
         --G_nl inplace_relu --SN_eps 1e-6 --BN_eps 1e-5 --n_classes 1000 --G_batch_size 256)
STEP_EXTRA=()
SAMPLES=50000
if [ "${GPU_CHECKS_SMOKE:-0}" = 1 ]; then
  TINY=(--resolution 32 --G_ch 4 --D_ch 4 --dim_z 16 --shared_dim 8 --G_attn 16 --D_attn 16
        --n_classes 10)
  G_FLAGS=("${TINY[@]}" --hier --G_shared --G_batch_size 8)
  STEP_EXTRA=("${TINY[@]}" --batch_size 8 --num_workers 1 --bench_warmup 1 --bench_iters 2
              --bench_loader_batches 4)
  SAMPLES=20
fi

left() { echo $((BUDGET - SECONDS)); }
# step NAME SECONDS CMD...: run CMD with at most SECONDS (or what is left) before it is stopped
step() {
  local name=$1 want=$2; shift 2
  local t; t=$(left); [ "$want" -lt "$t" ] && t=$want
  if [ "$t" -lt 15 ]; then echo "== $name: skipped, $(left) s of the budget left"; return; fi
  echo "== $name (at most $t s; $(left) s of the budget left)"
  timeout --kill-after=5 "$t" "$@" || echo "== $name: exit $? (124: out of time)"
}

{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader \
    2>/dev/null || echo 'no nvidia-smi'
  python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
} > "$OUT/env.txt"
cat "$OUT/env.txt"

step 'training step: fp32, bf16, bf16_cl, and the HDF5 loader' 170 \
  bash scripts/bench.sh --bench_modes fp32,bf16,bf16_cl --bench_warmup 3 --bench_iters 10 \
  --bench_loader synthetic "${STEP_EXTRA[@]}" --bench_json "$OUT/bench.json"
step "sampling and a $SAMPLES-sample IS/FID test" 130 \
  python benchmarks/bench_sample.py "${G_FLAGS[@]}" --bench_modes fp32,bf16,bf16_cl \
  --bench_batches 10 --bench_warmup 2 --num_inception_images "$SAMPLES" \
  --bench_json "$OUT/sample.json"
step 'profile of a bf16_cl step' 60 \
  env SCRIPT=benchmarks/profile_step.py bash scripts/bench.sh --profile_mode bf16_cl \
  --profile_iters 3 --profile_warmup 2 "${STEP_EXTRA[@]}" --profile_json "$OUT/profile.json"
if [ "${GPU_CHECKS_SMOKE:-0}" = 1 ] && ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo '== compile steps: skipped in a CPU smoke run'
else
  step 'training step: bf16_cl + torch.compile' 150 \
    bash scripts/bench.sh --bench_modes bf16_cl_compile --bench_warmup 4 --bench_iters 10 \
    --bench_loader off "${STEP_EXTRA[@]}" --bench_json "$OUT/bench_compile.json"
  step 'training step: bf16_cl + compile with CUDA graphs' 150 \
    bash scripts/bench.sh --bench_modes bf16_cl_compile_ro --bench_warmup 4 --bench_iters 10 \
    --bench_loader off "${STEP_EXTRA[@]}" --bench_json "$OUT/bench_compile_ro.json"
fi

python benchmarks/gpu_report.py "$OUT"
rm -f "$OUT/env.txt"  # in summary.txt/json: keeps $OUT within the 8 files that come back
echo "done in $SECONDS s"
