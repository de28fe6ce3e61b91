#!/usr/bin/env bash
# Solver benchmarks (issue 4) on a CUDA machine, from the repository root; outputs in ${OUT:-out/gpu}.
# Needs runs/fashion_mnist_latent (a checkpoint: ema.safetensors + state.json suffice), its autoencoder run
# runs/fashion_mnist_autoencoder, and Fashion-MNIST IDX files in ${DATA:-runs/device_data/fmnist}.
set -uo pipefail
OUT=${OUT:-out/gpu}; DATA=${DATA:-runs/device_data/fmnist}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
python3 -m latentfm.cli bench solvers --checkpoint runs/fashion_mnist_latent --cfg 2 --n 256 \
  --search-nfe "${SEARCH_NFE:-4,8,16}" --out "$OUT/bench" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | grep -v "s/it\]$" | tail -3
python3 benchmarks/solvers_fashion_mnist.py --device cuda --data-path "$DATA" \
  --classifier "$OUT/classifier.safetensors" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | grep -v "s/it\]$" | tail -14
cp benchmarks/results/solvers_fashion_mnist.json "$OUT/"
