"""The data path's rates: images/s of the loader alone by number of workers, the Fashion recipe trained from a
folder of PNGs against the same run from the in-memory IDX files, and the random-batch read rate of a
memory-mapped latent cache of ImageNet's size. Results go to ``benchmarks/results/data_loader.jsonl``.

    python benchmarks/data_loader.py make-fashion-folder --out /work/bench_data/fashion_png
    python benchmarks/data_loader.py loader-rate --folder /work/bench_data/folder_100000 --batch 128
    python benchmarks/data_loader.py make-imagenet-like --out /work/bench_data/imagenet_like --n 1000
    python benchmarks/data_loader.py loader-rate --folder /work/bench_data/imagenet_like --image-size 256 --batch 32
    python benchmarks/data_loader.py fashion-ab --folder /work/bench_data/fashion_png --steps 300
    python benchmarks/data_loader.py cache-rate --out /work/bench_data/cache_imagenet --count 1281167

(``benchmarks/data_path.py`` makes the synthetic folders and measures memory against dataset size.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from latentfm.data import BatchRequest, LatentCache, load_dataset, read_batches
from latentfm.data.latent_cache import FORMAT, MANIFEST, shard_path

RESULTS = Path(__file__).resolve().parent / "results" / "data_loader.jsonl"


def record(entry: dict) -> None:
    """Print ``entry`` and append it, with the machine and date, to the results file."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    entry = {**entry, "machine": f"{os.cpu_count()} cores, {cpu}", "torch": torch.__version__}
    entry["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(json.dumps(entry))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def make_fashion_folder(args: argparse.Namespace) -> None:
    """Fashion-MNIST's 60,000 training images as grey PNGs in class folders 0..9 (labels keep their ids)."""
    data = load_dataset("idx", split="train")
    for row in range(len(data)):
        path = Path(args.out) / str(int(data.labels[row])) / f"{row:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[row, 0].numpy()).save(path)
    print(f"{len(data)} PNGs in {args.out}")


def make_imagenet_like(args: argparse.Namespace) -> None:
    """JPEGs shaped like ImageNet's training images (500x375, quality 90, textured so that a file is about 100 KB
    like ImageNet's average): what one decode and ADM crop to 256 costs."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for index in range(args.n):
        rng = np.random.default_rng(index)
        y, x = np.mgrid[0:375, 0:500] / 500.0
        base = np.stack([np.sin(x * rng.uniform(2, 20) + c) * np.cos(y * rng.uniform(2, 20)) for c in range(3)], -1)
        noise = rng.normal(0, 0.25, (375, 500, 3))
        pixels = np.clip((base * 0.4 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(out / f"{index:05d}.jpg", quality=90)
    sizes = [p.stat().st_size for p in out.iterdir()]
    print(f"{len(sizes)} JPEGs of 500x375 in {out}, mean {np.mean(sizes) / 1e3:.0f} KB")


def loader_rate(args: argparse.Namespace) -> None:
    """Images/s of ``read_batches`` alone (random batches, flips) for each number of workers."""
    data = load_dataset("folder", args.folder, image_size=args.image_size)
    generator = torch.Generator().manual_seed(0)
    requests = [
        BatchRequest(torch.randint(len(data), (args.batch,), generator=generator), torch.rand(args.batch) < 0.5)
        for _ in range(args.batches)
    ]
    for workers in args.workers:
        batches = read_batches(data, requests, workers)
        next(batches)  # workers started and the first batch read: the steady state is what a run sees
        start = time.perf_counter()
        count = sum(len(batch.images) for batch in batches)
        seconds = time.perf_counter() - start
        rate = round(count / seconds, 1)
        record({"bench": "loader_rate", "folder": args.folder, "images": len(data), "workers": workers,
                "batch": args.batch, "image_size": args.image_size, "images_per_s": rate})  # fmt: skip


def fashion_ab(args: argparse.Namespace) -> None:
    """``configs/fashion_mnist.yaml`` for ``--steps`` steps from the IDX files, then from the PNG folder (default
    workers); wall-clock of each and whether the final weights are equal."""
    runs = Path(args.runs)
    sources = {"idx": [], "folder": ["data.dataset=folder", f"data.path={args.folder}", "data.channels=1"]}
    if args.folder_first:
        sources = {"folder": sources["folder"], "idx": sources["idx"]}
    walls = {}
    for name, source in sources.items():
        out = runs / f"fashion_{name}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        command = [sys.executable, "-m", "latentfm.cli", "train", "--config", "configs/fashion_mnist.yaml", *source]
        command += [f"train.steps={args.steps}", "train.sample_every=0", "train.checkpoint_every=0"]
        command += [f"train.out_dir={out}", "train.log_every=50"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        walls[name] = time.perf_counter() - start
    step = f"step_{args.steps:08d}"
    final = [load_file(runs / f"fashion_{n}" / "checkpoints" / step / "ema.safetensors") for n in sources]
    equal = all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    record({"bench": "fashion_ab", "order": list(sources), "steps": args.steps, "idx_s": round(walls["idx"], 1),
            "folder_s": round(walls["folder"], 1), "ratio": round(walls["folder"] / walls["idx"], 4),
            "equal_ema_weights": equal})  # fmt: skip


def cache_rate(args: argparse.Namespace) -> None:
    """Write a synthetic complete latent cache of ``--count`` fp16 4x32x32 latents (random values), then time
    random batches of ``--batch`` read through ``LatentCache.batch`` (warm: the shards in the page cache)."""
    out, shape, size = Path(args.out), [4, 32, 32], args.shard_size
    shards = -(-args.count // size)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for shard in range(shards):
        if not shard_path(out, shard).is_file():
            rows = min(size, args.count - shard * size)
            np.save(shard_path(out, shard), rng.standard_normal((rows, 1, *shape), dtype=np.float32).astype(np.float16))
    manifest = {"format": FORMAT, "complete": True, "dataset": {"count": args.count}, "shard_size": size,
                "hflip": False, "latent_shape": shape, "image_shape": [3, 256, 256], "num_classes": 0,
                "class_names": [], "dtype": "float16", "moments": {"mean": [0.0] * 4, "var": [1.0] * 4}}  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest))
    cache = LatentCache(out)
    generator = torch.Generator().manual_seed(0)
    for label in ("first pass", "second pass"):
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < args.seconds:
            count += len(cache.batch(torch.randint(args.count, (args.batch,), generator=generator))[0])
        seconds = time.perf_counter() - start
        record({"bench": "cache_rate", "pass": label, "latents": args.count, "gb": round(args.count * 8192 / 1e9, 2),
                "batch": args.batch, "latents_per_s": round(count / seconds, 1)})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True)
    fashion = commands.add_parser("make-fashion-folder", help=make_fashion_folder.__doc__)
    fashion.add_argument("--out", required=True)
    fashion.set_defaults(run=make_fashion_folder)
    imagenet = commands.add_parser("make-imagenet-like", help=make_imagenet_like.__doc__)
    imagenet.add_argument("--out", required=True)
    imagenet.add_argument("--n", type=int, default=1000)
    imagenet.set_defaults(run=make_imagenet_like)
    rate = commands.add_parser("loader-rate", help=loader_rate.__doc__)
    rate.add_argument("--folder", required=True)
    rate.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    rate.add_argument("--batch", type=int, default=128)
    rate.add_argument("--batches", type=int, default=40)
    rate.add_argument("--image-size", type=int, default=None)
    rate.set_defaults(run=loader_rate)
    ab = commands.add_parser("fashion-ab", help=fashion_ab.__doc__)
    ab.add_argument("--folder", required=True)
    ab.add_argument("--steps", type=int, default=300)
    ab.add_argument("--runs", default="/tmp/latentfm_fashion_ab")
    ab.add_argument("--folder-first", action="store_true", help="run the folder first (the order's effect)")
    ab.set_defaults(run=fashion_ab)
    cache = commands.add_parser("cache-rate", help=cache_rate.__doc__)
    cache.add_argument("--out", required=True)
    cache.add_argument("--count", type=int, default=1_281_167)
    cache.add_argument("--shard-size", type=int, default=4096)
    cache.add_argument("--batch", type=int, default=256)
    cache.add_argument("--seconds", type=float, default=20.0)
    cache.set_defaults(run=cache_rate)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
