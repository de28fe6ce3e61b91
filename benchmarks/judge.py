"""The judge shared by the Fashion-MNIST benchmarks: the in-project classifier's Fréchet distance against a
split's statistics, and its class accuracy, of uint8 samples.

`prepare_judge` trains the classifier (`latentfm train-classifier`, 10 epochs, seed 0) and the statistics of the
test split (`latentfm stats`) once into a work directory; later runs reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latentfm import cli
from latentfm.metrics.features import FeatureExtractor, load_features
from latentfm.metrics.frechet import FeatureStats, frechet_distance
from latentfm.metrics.reference import ReferenceStats, load_reference


def run_cli(*args: str) -> None:
    """One latentfm command; stop on failure."""
    if cli.main(list(args)) != 0:
        raise SystemExit(f"latentfm {' '.join(args)} failed")


@dataclass
class Judge:
    """A classifier's features and predictions, and the reference statistics samples are compared with."""

    features: FeatureExtractor
    reference: ReferenceStats

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """FD and class accuracy of uint8 ``images`` ``[N, C, H, W]`` generated for ``labels`` ``[N]``."""
        stats, predictions = FeatureStats(), []
        for chunk in images.split(500):
            features, predicted = self.features(chunk)
            stats.update(features.numpy().astype(np.float64))
            predictions.append(predicted)
        fd = frechet_distance(stats.mean, stats.cov, self.reference.mu, self.reference.sigma)
        accuracy = (torch.cat(predictions) == labels.cpu()).float().mean().item()
        return {"fd": fd, "accuracy": accuracy}


def prepare_judge(
    work: Path, dataset: str = "fashion_mnist", reference: str = "fashion_mnist", split: str = "test"
) -> Judge:
    """The judge of ``dataset`` (a `latentfm` dataset spec; its test split is reported when it has one) with the
    statistics of ``reference`` at ``split``, trained into ``work`` when missing."""
    classifier, statistics = work / "classifier.safetensors", work / "reference.npz"
    if not classifier.is_file():
        test_split = [] if dataset in ("fashion_mnist", "digits") else ["--no-test-split"]
        run_cli("train-classifier", "--dataset", dataset, "--out", str(classifier), *test_split)
    if not statistics.is_file():
        run_cli(
            "stats", "--dataset", reference, "--split", split, "--features", str(classifier), "--out", str(statistics)
        )
    return Judge(load_features(classifier), load_reference(statistics))
