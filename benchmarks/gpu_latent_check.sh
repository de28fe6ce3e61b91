#!/usr/bin/env bash
# GPU checks of the latent side (issue 3), run on a CUDA machine from the repository root; logs to ${OUT:-out/gpu}.
# DATA holds Fashion-MNIST IDX files in DATA/fmnist and the TAEF2 weights in DATA/taef2.
#   1. train-autoencoder on CUDA (bf16 autocast), 300 steps at batch 256, then test PSNR; the torchrun launcher
#      with 1 process, 20 steps (WORLD_SIZE=1: no process group; multi-rank NCCL needs a multi-GPU machine)
#   2. encode Fashion-MNIST into a latent cache on CUDA; the cache-vs-on-the-fly benchmark on CUDA
#   3. latent flow training from the cache on CUDA, 300 steps, and sampling
#   4. TAEF2 on CUDA: round-trip PSNR of 64 Fashion-MNIST test images at 64x64, encode+decode images/s at 256x256
set -uo pipefail
OUT=${OUT:-out/gpu}; DATA=${DATA:-runs/device_data}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
FM="data.path=$DATA/fmnist"
quiet() { grep -v "it/s\]$" | grep -v "s/it\]$"; }
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
start=$(date +%s)
python3 -m latentfm.cli train-autoencoder --config configs/fashion_mnist_autoencoder.yaml $FM train.steps=300 \
  train.batch_size=256 train.out_dir="$OUT/ae" train.log_every=100 train.sample_every=0 2>&1 | tr '\r' '\n' | quiet | tail -4 | tee "$OUT/ae.txt"
echo "autoencoder: $(( $(date +%s) - start )) s" | tee -a "$OUT/ae.txt"; tail -1 "$OUT/ae/metrics.jsonl" | tee -a "$OUT/ae.txt"
python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m latentfm.cli train-autoencoder \
  --config configs/fashion_mnist_autoencoder.yaml $FM train.steps=20 train.out_dir="$OUT/ae_nccl" --eval-split none \
  2>&1 | tr '\r' '\n' | quiet | tail -2 | tee "$OUT/ae_nccl.txt"
LAT="$FM autoencoder.checkpoint=$OUT/ae data.latent_cache=$OUT/cache"
start=$(date +%s)
python3 -m latentfm.cli encode --config configs/fashion_mnist_latent.yaml --out "$OUT/cache" --device cuda $LAT \
  2>&1 | tr '\r' '\n' | quiet | tail -2 | tee "$OUT/encode.txt"
echo "encode: $(( $(date +%s) - start )) s" | tee -a "$OUT/encode.txt"
python3 benchmarks/latent_cache.py --device cuda --blocks 5 --steps 20 $LAT 2>&1 | tr '\r' '\n' | quiet | tee "$OUT/latent_cache.txt"
python3 -m latentfm.cli train --config configs/fashion_mnist_latent.yaml $LAT train.steps=300 train.out_dir="$OUT/fm" \
  train.sample_every=0 2>&1 | tr '\r' '\n' | quiet | tail -2 | tee "$OUT/fm.txt"; tail -1 "$OUT/fm/metrics.jsonl" | tee -a "$OUT/fm.txt"
python3 -m latentfm.cli sample --checkpoint "$OUT/fm" --n 8 --cfg 2 --out "$OUT/fm_samples" 2>&1 | tail -1 | tee -a "$OUT/fm.txt"
python3 - "$DATA" <<'PY' 2>&1 | tee "$OUT/taef2.txt"
import sys, time, torch, torch.nn.functional as F
from latentfm.autoencoders import build_autoencoder
from latentfm.data import load_dataset
from latentfm.metrics.reconstruction import psnr_8bit
data = sys.argv[1]
ae = build_autoencoder({"kind": "taesd", "encoder": f"{data}/taef2/taef2_encoder.pth",
                        "decoder": f"{data}/taef2/taef2_decoder.pth"}).cuda()
x = load_dataset("idx", f"{data}/fmnist", "test").images[:64].float() / 255
x = (F.interpolate(x, size=64, mode="bicubic", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1) * 2 - 1).cuda()
with torch.no_grad():
    print(f"TAEF2 round trip 64x64 on CUDA: {psnr_8bit(x, ae.decode(ae.encode(x))).mean():.2f} dB")
    big = torch.rand(32, 3, 256, 256, device="cuda") * 2 - 1
    for _ in range(3):
        ae.decode(ae.encode(big))
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10):
        ae.decode(ae.encode(big))
    torch.cuda.synchronize()
    print(f"TAEF2 encode+decode 256x256 fp32 batch 32: {320 / (time.perf_counter() - t):.0f} images/s")
PY
