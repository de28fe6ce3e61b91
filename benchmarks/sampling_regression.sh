#!/bin/bash
# No regression from issue 23 (the sampler's one declaration, settings-only sampling, progress per velocity call):
# one Fashion-MNIST model trained by the OLDER commit, sampled by both commits with four samplers; the samples must
# be byte-identical, and `latentfm sample` must take the same time (farm-bench, 8 A/B pairs). About 15 min on 2 cores.
#   git worktree add --detach /tmp/latentfm_prev 4a202f4 && bash benchmarks/sampling_regression.sh /tmp/latentfm_prev
# The model is trained by the older commit because a newer checkpoint's config (train.sample_per_class, the sample
# section's options/compile keys) is not one the older code reads; the newer code reads the older checkpoint.
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
old=${1:?give the path of a worktree of the older commit}
python=$repo/.venv/bin/python
work=/tmp/latentfm_sampling_regression
rm -rf "$work" && mkdir -p "$work"
cd /tmp  # python -P and this directory: PYTHONPATH alone decides which latentfm runs
PYTHONPATH=$old "$python" -P -m latentfm.cli --quiet train --config "$old/configs/fashion_mnist.yaml" train.steps=100 \
  train.sample_every=0 train.checkpoint_every=0 train.log_every=50 train.out_dir="$work/run" > /dev/null 2>&1
samplers=("" "--solver heun --nfe 16" "--solver euler --nfe 4 --cfg 1" "--solver dopri5 --schedule uniform")
for i in "${!samplers[@]}"; do
  for who in old new; do
    if [ $who = old ]; then export PYTHONPATH=$old; else unset PYTHONPATH; fi
    # shellcheck disable=SC2086
    "$python" -P -m latentfm.cli --quiet sample --checkpoint "$work/run" --labels all --n 20 ${samplers[$i]} \
      --out "$work/$who$i" > /dev/null
  done
  unset PYTHONPATH
  "$python" - "$work/old$i" "$work/new$i" "${samplers[$i]:-recipe}" <<'PY'
import json, sys
import numpy as np
old, new, name = sys.argv[1:]
a, b = np.load(f"{old}/samples.npz"), np.load(f"{new}/samples.npz")
nfe = json.load(open(f"{old}/stats.json"))["nfe"], json.load(open(f"{new}/stats.json"))["nfe"]
same = all(np.array_equal(a[k], b[k]) for k in ("images", "labels"))
print(f"{name}: byte-identical samples {same}, NFE old/new {nfe[0]}/{nfe[1]}")
PY
done
command=(-m latentfm.cli --quiet sample --checkpoint "$work/run" --labels all --n 20 --out "$work/timed")
farm-bench -n 8 --timeout 880 --vs "env PYTHONPATH=$old $python -P ${command[*]}" -- "$python" -P "${command[@]}"
