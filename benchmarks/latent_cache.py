"""Training steps/s reading latents from the cache against encoding images on the fly: the latent Fashion-MNIST
recipe (configs/fashion_mnist_latent.yaml), same model and batch, one process, alternating timed blocks.

    python benchmarks/latent_cache.py                 # needs the recipe's autoencoder run and latent cache
    python benchmarks/latent_cache.py --device cuda

Prints a Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile

import torch
from train_throughput import timed_block

from latentfm.config import load_config, recipe_path
from latentfm.training.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks per contender (alternating)")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=256")
    args = parser.parse_args()
    trainers = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for name, source in (("cache", []), ("on the fly", ["data.latent_cache=null"])):
            overrides = [*args.overrides, *source, f"train.device={args.device}", f"train.out_dir={out_dir}/{name}"]
            trainers[name] = Trainer(load_config(recipe_path("fashion_mnist_latent"), overrides))
        steps = {name: (lambda t=t: t.train_step()["loss"]) for name, t in trainers.items()}
        device = trainers["cache"].device
        for step in steps.values():  # warm-up
            timed_block(step, 2, device)
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.blocks):
            for name, step in steps.items():
                times[name].append(timed_block(step, args.steps, device))
    cache_s, live_s = statistics.median(times["cache"]), statistics.median(times["on the fly"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    batch = trainers["cache"].config.train.batch_size
    print(f"device={name} threads={torch.get_num_threads()} batch={batch}")
    print("| machine | batch | on the fly steps/s | cache steps/s | cache / on the fly |")
    print(f"| {name} | {batch} | {1 / live_s:.2f} | {1 / cache_s:.2f} | {live_s / cache_s:.2f}x |")


if __name__ == "__main__":
    main()
