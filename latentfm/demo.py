"""``latentfm demo``: the main job, end to end on the CPU in minutes.

Trains a class-conditional pixel-space DiT on scikit-learn's real 8×8 digits, generates ``per_class``
samples of every class, and judges them with a classifier trained only on real digits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from latentfm.atomic import write_bytes_atomic
from latentfm.config import load_config, recipe_path
from latentfm.data import load_dataset
from latentfm.image_io import write_samples
from latentfm.metrics.classifier import accuracy, train_classifier
from latentfm.training.trainer import Trainer


def judge(images: torch.Tensor, labels: torch.Tensor, seed: int) -> dict[str, float]:
    """Accuracy of a classifier trained on real train digits: on held-out real digits and on ``images``."""
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    train_images, train_labels = train.batch(torch.arange(len(train)))
    test_images, test_labels = test.batch(torch.arange(len(test)))
    classifier = train_classifier(train_images, train_labels, train.num_classes, epochs=30, seed=seed)
    return {
        "classifier_accuracy_real_test": accuracy(classifier, test_images, test_labels),
        "class_accuracy_generated": accuracy(classifier, images, labels),
    }


def run_demo(out: Path, steps: int | None = None, per_class: int = 50, seed: int = 0) -> dict:
    """Train, sample and judge; writes OUT/samples.png, OUT/samples.npz and OUT/report.json."""
    overrides = [f"train.out_dir={out / 'run'}", f"train.seed={seed}"]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    config = load_config(recipe_path("digits"), overrides)
    start = time.perf_counter()
    trainer = Trainer(config)
    trainer.run()
    train_seconds = time.perf_counter() - start
    labels = torch.arange(trainer.latents.num_classes).repeat_interleave(per_class)
    sampler = trainer.sampler
    images, stats = trainer.pipeline().generate(labels, seed=seed, settings=sampler)
    write_samples(out, images, labels, columns=per_class)
    report = {
        "train_steps": config.train.steps,
        "train_seconds": round(train_seconds, 1),
        "solver": stats.solver,
        "nfe": stats.nfe,
        "cfg": sampler.cfg,
        "samples": len(images),
        "seed": seed,
        **judge(images, labels, seed),
    }
    write_bytes_atomic(out / "report.json", json.dumps(report, indent=1).encode())
    print(
        f"trained {config.train.steps} steps in {train_seconds / 60:.1f} min; "
        f"{len(images)} samples at {stats.nfe} NFE, cfg {sampler.cfg}"
    )
    print(
        f"a classifier trained on real digits (held-out accuracy {report['classifier_accuracy_real_test']:.1%}) "
        f"assigns {report['class_accuracy_generated']:.1%} of the samples to the class asked for"
    )
    print(
        f"samples: {out / 'samples.png'} (one row per class) and {out / 'samples.npz'}; report: {out / 'report.json'}"
    )
    return report
