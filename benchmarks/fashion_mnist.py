"""Fashion-MNIST: train a recipe, then judge guided samples at 8 NFE with a classifier trained on the real
training set.

    python benchmarks/fashion_mnist.py                                # pixel-space recipe configs/fashion_mnist.yaml
    python benchmarks/fashion_mnist.py --recipe fashion_mnist_latent  # latent recipe: trains the autoencoder and
                                                                      # encodes the cache first when they are missing
    python benchmarks/fashion_mnist.py --skip-train                   # only the evaluation

Runs resume where they stopped. Writes benchmarks/results/RECIPE.json and RECIPE_samples.png; prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from latentfm import cli
from latentfm.atomic import write_bytes_atomic
from latentfm.checkpoint import list_checkpoints
from latentfm.config import Config, load_config, recipe_path
from latentfm.data import load_dataset
from latentfm.image_io import save_grid
from latentfm.metrics.classifier import accuracy, train_classifier
from latentfm.pipeline import FlowPipeline
from latentfm.training.trainer import Trainer

RESULTS = Path(__file__).parent / "results"


def prepare_latents(config: Config, recipe: str, overrides: list[str]) -> dict[str, float]:
    """Train the recipe's KL autoencoder and encode its latent cache when they are missing; their minutes.

    The autoencoder run sees the ``data.*`` overrides; encoding sees all of them."""
    minutes = {}
    if config.autoencoder.kind == "kl" and not list_checkpoints(Path(config.autoencoder.checkpoint)):
        start = time.perf_counter()
        data_overrides = [o for o in overrides if o.startswith("data.") and not o.startswith("data.latent_cache")]
        ae_config = str(recipe_path("fashion_mnist_autoencoder"))
        ae_run = f"train.out_dir={config.autoencoder.checkpoint}"
        assert cli.main(["train-autoencoder", "--config", ae_config, *data_overrides, ae_run]) == 0
        minutes["autoencoder_train_minutes"] = round((time.perf_counter() - start) / 60, 1)
    if config.data.latent_cache:
        start = time.perf_counter()
        cache = config.data.latent_cache
        assert cli.main(["encode", "--config", str(recipe_path(recipe)), "--out", cache, *overrides]) == 0
        minutes["encode_minutes"] = round((time.perf_counter() - start) / 60, 1)
    return minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fashion_mnist", help="fashion_mnist (pixels) or fashion_mnist_latent")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--per-class", type=int, default=100, help="generated samples per class")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=100")
    args = parser.parse_args()
    config = load_config(recipe_path(args.recipe), args.overrides)
    report: dict = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads", "config": args.recipe}
    if not args.skip_train:
        report.update(prepare_latents(config, args.recipe, args.overrides))
        start = time.perf_counter()
        Trainer(config).run()
        report["train_minutes"] = round((time.perf_counter() - start) / 60, 1)
    report["train_steps"] = config.train.steps

    train, test = load_dataset("idx", config.data.path, "train"), load_dataset("idx", config.data.path, "test")
    start = time.perf_counter()
    classifier = train_classifier(*train.batch(torch.arange(len(train))), train.num_classes, epochs=10, seed=0)
    report["classifier_minutes"] = round((time.perf_counter() - start) / 60, 1)
    report["classifier_real_test_accuracy"] = accuracy(classifier, *test.batch(torch.arange(len(test))))

    pipe = FlowPipeline.from_checkpoint(config.train.out_dir)
    labels = torch.arange(10).repeat_interleave(args.per_class)
    rows = []
    for solver in ("euler", "heun"):
        for cfg in (1.0, 2.0, 3.0):
            start = time.perf_counter()
            images, stats = pipe.generate(labels, seed=0, settings=pipe.sampler.with_(solver=solver, nfe=8, cfg=cfg))
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "solver": solver,
                    "nfe": stats.nfe,
                    "cfg": cfg,
                    "accuracy": accuracy(classifier, images, labels),
                    "seconds_per_1000": round(1000 * seconds / len(images), 2),
                }
            )
            if solver == "heun" and cfg == 2.0:
                grid = torch.cat([images[c * args.per_class : c * args.per_class + 10] for c in range(10)])
                save_grid(grid, RESULTS / f"{args.recipe}_samples.png", columns=10)
    report["samples"] = rows
    write_bytes_atomic(RESULTS / f"{args.recipe}.json", json.dumps(report, indent=1).encode())
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
    print("| solver | NFE | cfg | class accuracy | s / 1000 samples |")
    for r in rows:
        print(f"| {r['solver']} | {r['nfe']} | {r['cfg']} | {r['accuracy']:.1%} | {r['seconds_per_1000']} |")


if __name__ == "__main__":
    main()
