#!/usr/bin/env bash
# GPU checks of the foundation (run on a CUDA machine from the repository root; writes logs to ${OUT:-out/gpu}).
#   1. trainer vs bare-loop throughput, DiT-S/2 on 32x32x4, bf16 autocast, batch 256 and 32
#   2. the digits recipe end to end on CUDA with bf16 autocast (train, sample, class accuracy)
#   3. torchrun + NCCL (1 process) and torch.compile, a few steps each
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch; print(torch.__version__, torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())
PY
for batch in 256 32; do
  python3 benchmarks/train_throughput.py --device cuda --batch $batch --blocks 7 --steps 20 2>&1 | grep -v "it/s" | tee -a "$OUT/throughput.txt"
done
python3 -m latentfm.cli demo --out "$OUT/demo" 2>&1 | grep -v "it/s" | tee "$OUT/demo.txt"
python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m latentfm.cli train --config configs/digits.yaml \
  train.steps=50 train.out_dir="$OUT/nccl" train.sample_every=0 2>&1 | grep -v "it/s" | tail -3 | tee "$OUT/nccl.txt"
python3 -m latentfm.cli train --config configs/digits.yaml train.steps=50 train.compile=true \
  train.out_dir="$OUT/compile" train.sample_every=0 2>&1 | grep -v "it/s" | tail -3 | tee "$OUT/compile.txt"
