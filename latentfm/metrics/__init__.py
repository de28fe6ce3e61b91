"""Metrics of generated images: Fréchet distance, KID, precision/recall, class accuracy with an in-project
classifier, 8-bit PSNR and SSIM, mean IoU of semantic maps, feature extractors and their reference statistics,
latency."""

from latentfm.metrics.classifier import SmallClassifier, accuracy, load_classifier, train_classifier
from latentfm.metrics.features import FeatureExtractor, load_features
from latentfm.metrics.frechet import FeatureStats, frechet_distance
from latentfm.metrics.kid import kernel_distance
from latentfm.metrics.precision_recall import precision_recall
from latentfm.metrics.reconstruction import psnr_8bit, ssim_8bit
from latentfm.metrics.reference import ReferenceStats, load_reference
from latentfm.metrics.segmentation import mean_iou

__all__ = [
    "FeatureExtractor",
    "FeatureStats",
    "ReferenceStats",
    "SmallClassifier",
    "accuracy",
    "frechet_distance",
    "kernel_distance",
    "load_classifier",
    "load_features",
    "load_reference",
    "mean_iou",
    "precision_recall",
    "psnr_8bit",
    "ssim_8bit",
    "train_classifier",
]
