"""Features of real and generated images, and the metrics computed from them (FD, KID, precision/recall,
class accuracy); the training-time evaluator."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from latentfm.data import BatchRequest, ImageDataset, read_batches
from latentfm.errors import LatentFMError
from latentfm.evaluation.settings import KEEP_FEATURES
from latentfm.image_io import quantise
from latentfm.metrics.features import FeatureExtractor, load_features
from latentfm.metrics.frechet import FeatureStats, frechet_distance
from latentfm.metrics.kid import kernel_distance
from latentfm.metrics.latency import synchronize
from latentfm.metrics.precision_recall import precision_recall
from latentfm.metrics.reference import ReferenceStats, check_protocol, load_reference
from latentfm.pipeline import FlowPipeline
from latentfm.progress import progress_bar
from latentfm.sampling import SamplerSettings

FEATURE_BATCH = 256


def kept_mask(count: int, keep: int, seed: int) -> np.ndarray:
    """A boolean mask choosing ``min(keep, count)`` of ``count`` items at random (seeded)."""
    mask = np.zeros(count, dtype=bool)
    mask[np.random.default_rng(seed).choice(count, min(keep, count), replace=False)] = True
    return mask


def _extract(extractor: FeatureExtractor, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Features and predictions (or None) of uint8 images, batch by batch."""
    parts = [extractor(batch) for batch in images.split(FEATURE_BATCH)]
    features = torch.cat([f for f, _ in parts]).numpy()
    predictions = None if parts[0][1] is None else torch.cat([p for _, p in parts]).numpy()
    return features, predictions


def reference_statistics(
    data: ImageDataset,
    extractor: FeatureExtractor,
    source: dict[str, Any],
    keep: int = KEEP_FEATURES,
    seed: int = 0,
    progress: bool = False,
    workers: int | None = None,
) -> ReferenceStats:
    """Feature statistics of a dataset under ``extractor``'s protocol, streamed batch by batch (images read by
    ``workers`` processes, see ``latentfm.data.loader``); ``source`` describes the images."""
    stats, kept, replaced = FeatureStats(), [], 0
    mask = kept_mask(len(data), keep, seed)
    starts = range(0, len(data), FEATURE_BATCH)
    requests = [BatchRequest(torch.arange(start, min(start + FEATURE_BATCH, len(data)))) for start in starts]
    batches = read_batches(data, requests, workers)
    with progress_bar(total=len(requests), desc="features", show=progress) as bar, contextlib.closing(batches):
        for start, batch in zip(starts, batches):
            features, _ = _extract(extractor, batch.images)
            stats.update(features)
            kept.append(features[mask[start : start + FEATURE_BATCH]])
            replaced += batch.skipped
            bar.update(1)
    if replaced:
        print(f"replaced {replaced} unreadable image files by the next readable one of their class")
    protocol = extractor.protocol(tuple(data.image_shape))
    source = {**source, "count": len(data), "fingerprint": data.fingerprint()}
    return ReferenceStats(stats.mean, stats.cov, np.concatenate(kept), stats.n, protocol, source)


def generated_features(
    pipe: FlowPipeline,
    extractor: FeatureExtractor,
    classifier: FeatureExtractor | None,
    indices: range,
    seed: int,
    batch_size: int,
    sampler: SamplerSettings,
) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Samples ``indices`` (noise seeded by ``(seed, i)``, class ``i mod num_classes``, drawn with ``sampler``):
    their features, predicted and requested classes (-1 where there are none), NFE
    and generation seconds; and the images."""
    labels = torch.arange(indices.start, indices.stop) % pipe.num_classes if pipe.num_classes else None
    synchronize(pipe.device)
    start = time.perf_counter()
    images, stats = pipe.generate(
        labels, n=len(indices), seed=seed, settings=sampler, first_index=indices.start, batch_size=batch_size
    )
    synchronize(pipe.device)
    seconds = time.perf_counter() - start
    pixels = quantise(images)
    features, predictions = _extract(extractor, pixels)
    if classifier is not None and classifier is not extractor:
        predictions = _extract(classifier, pixels)[1]
    missing = np.full(len(indices), -1, dtype=np.int64)
    return {
        "features": features.astype(np.float32),
        "predictions": missing if predictions is None else predictions.astype(np.int64),
        "labels": missing if labels is None else labels.numpy(),
        "nfe": np.array(stats.nfe),
        "seconds": np.array(seconds),
    }, images


def distribution_metrics(
    reference: ReferenceStats,
    mu: np.ndarray,
    sigma: np.ndarray,
    features: np.ndarray,
    pr_k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    device: Any = "cpu",
) -> dict[str, float]:
    """FD of the moments ``mu``, ``sigma`` to the reference's; KID and precision/recall of the kept ``features``
    against the reference's kept features."""
    kid_mean, kid_std = kernel_distance(reference.features, features, kid_subsets, kid_subset_size, seed)
    precision, recall = precision_recall(reference.features, features, pr_k, device)
    return {
        "fd": frechet_distance(mu, sigma, reference.mu, reference.sigma),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }


def class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float | None:
    """Fraction of samples classified as requested; None without predictions or labels."""
    if (predictions < 0).any() or (labels < 0).any():
        return None
    return float((predictions == labels).mean())


class TrainingEvaluation:
    """The training-time evaluation (``eval`` config section): Fréchet distance and class accuracy of a
    pipeline's samples against reference statistics, checked against the protocol once, up front."""

    def __init__(self, features: str, reference: str, image_shape: tuple[int, int, int], device: torch.device):
        self.extractor = load_features(features, device)
        self.reference = load_reference(reference)
        check_protocol(self.reference, self.extractor.protocol(image_shape), reference)

    def __call__(self, pipe: FlowPipeline, n: int, seed: int, sampler: SamplerSettings) -> dict[str, Any]:
        """``eval_fd``, ``eval_accuracy`` (None without a classifier), ``eval_samples``, ``eval_nfe`` and
        ``eval_seconds`` of ``n`` samples."""
        classifier = self.extractor if self.extractor.predicts_classes else None
        arrays, _ = generated_features(pipe, self.extractor, classifier, range(n), seed, 256, sampler)
        stats = FeatureStats().update(arrays["features"])
        return {
            "eval_fd": frechet_distance(stats.mean, stats.cov, self.reference.mu, self.reference.sigma),
            "eval_accuracy": class_accuracy(arrays["predictions"], arrays["labels"]),
            "eval_samples": n,
            "eval_nfe": int(arrays["nfe"]),
            "eval_seconds": round(float(arrays["seconds"]), 2),
        }


def training_evaluation(section: Any) -> Callable[[tuple[int, int, int], torch.device], TrainingEvaluation] | None:
    """What the trainer needs to build the ``eval`` section's evaluator once it knows the image shape and device
    (None when the section is off); a section it cannot run is refused here, before training starts."""
    if not section.every:
        return None
    if not section.features or not section.reference:
        raise LatentFMError("eval.every is set: also set eval.features and eval.reference (see `latentfm stats`)")
    if section.samples < 2:
        raise LatentFMError(f"eval.samples={section.samples}: a Fréchet distance needs at least 2 samples")
    return partial(TrainingEvaluation, section.features, section.reference)
