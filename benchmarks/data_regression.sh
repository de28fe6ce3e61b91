#!/bin/bash
# No regression from issue 22: the Fashion recipe (IDX files, in memory) for 300 steps with an older commit and
# with this checkout, one after the other, then whether their EMA weights are equal. 13 min on 2 CPU cores.
#   git worktree add --detach /tmp/latentfm_old 01a954c && bash benchmarks/data_regression.sh /tmp/latentfm_old
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
old=${1:?give the path of a worktree of the older commit}
python=$repo/.venv/bin/python
cd /tmp  # python -P and this directory: PYTHONPATH alone decides which latentfm runs
for who in old new; do
  out=/tmp/latentfm_regress_$who
  rm -rf "$out"
  if [ $who = old ]; then export PYTHONPATH=$old root=$old; else unset PYTHONPATH; root=$repo; fi
  start=$(date +%s.%N)
  # each commit its own recipe file: the same recipe, in the key names that commit reads
  "$python" -P -m latentfm.cli train --config "$root/configs/fashion_mnist.yaml" train.steps=300 \
    train.sample_every=0 train.checkpoint_every=0 train.log_every=50 train.out_dir="$out" > /dev/null 2>&1
  echo "$who $(echo "$(date +%s.%N) - $start" | bc) s"
done
unset PYTHONPATH
"$python" - <<'PY'
import torch
from safetensors.torch import load_file
a = load_file("/tmp/latentfm_regress_old/checkpoints/step_00000300/ema.safetensors")
b = load_file("/tmp/latentfm_regress_new/checkpoints/step_00000300/ema.safetensors")
print("equal EMA weights:", all(torch.equal(a[k], b[k]) for k in a))
PY
