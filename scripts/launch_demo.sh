#!/bin/bash
# The demo: builds the built-in 10-class shapes dataset (32x32), packs it with make_hdf5.py,
# trains a small class-conditional BigGAN (a few minutes on a 2-core CPU; the GPU is used
# when there is one) and writes sample sheets and interpolations. Extra flags go to train.py.
# Outputs: data/demo/ (PNG folder), data/demo_32.hdf5, weights/demo/, samples/demo/, logs/demo/.
set -e
cd "$(dirname "$0")/.."
# A demo still training (started in another shell) is left alone: stop here, changing nothing.
python run_lock.py weights/demo
python make_hdf5.py --make_demo data/demo --resolution 32 --num_workers 2
# train.py never starts a new run over an existing one: the demo starts over explicitly
# (unless --resume is among the extra flags, which continues it).
case " $* " in
  *" --resume "*) ;;
  *) if [ -d weights/demo ]; then
       echo "Starting the demo over: removing the previous demo run (weights/demo, logs/demo*, samples/demo)"
       rm -rf weights/demo logs/demo logs/demo_log.jsonl samples/demo
     fi ;;
esac
# Tuned for shapes within the time (benchmarks/demo_score.py measures it): learning rates 5x
# the 2019 CIFAR ones and 2 D steps per G step learn shapes in ~1,250 iterations where 2e-4
# and 1 D step learn colours only; standing BN statistics (--accumulate_stats) for the
# samples, as the 2019 README advises for sampling, instead of the EMA copy's running stats.
python train.py --dataset data/demo_32.hdf5 --experiment_name demo \
  --shuffle --use_multiepoch_sampler --num_workers 1 --batch_size 32 --num_D_steps 2 \
  --G_ch 8 --D_ch 8 --G_shared --shared_dim 32 --hier --dim_z 32 --G_attn 0 --D_attn 0 \
  --G_lr 1e-3 --D_lr 1e-3 --ema --use_ema --ema_start 200 --ema_decay 0.999 --G_eval_mode \
  --accumulate_stats --num_epochs 16 --save_every 625 --test_every 0 --log_every 25 "$@"
python sample.py --experiment_name demo --sample_sheets --sample_interps --sample_random
python logs/plot_logs.py --logs_root logs --experiment_name demo
echo "Demo done: samples/demo/ (sheets, interpolations, random grid), logs/demo/plots/ (losses)"
