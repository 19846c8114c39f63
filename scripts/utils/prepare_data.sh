#!/bin/bash
# Packs ImageNet 128x128 (data/ImageNet) into data/ILSVRC128.hdf5, then writes its FID moments.
# Multi-GPU: no DDP here (DDP is for training); add --parallel for DataParallel moments.
# Flags you append go to both steps: use ones both accept (e.g. --data_root DIR).
set -e
cd "$(dirname "$0")/../.."
python make_hdf5.py --dataset I128 --batch_size 256 --data_root data "$@"
python calculate_inception_moments.py --dataset I128_hdf5 --data_root data "$@"
