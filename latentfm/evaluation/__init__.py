"""Evaluation under one protocol (EVALUATION.md): reference statistics of real images (``latentfm stats``) and
the evaluation of a checkpoint (``latentfm eval``): Fréchet distance, KID, precision/recall, class accuracy,
NFE and latency.

Generated images are quantised to uint8 exactly as real images are stored, then go through the same feature
extractor. Sample ``i`` starts from noise seeded by ``(seed, i)`` and, for a conditional model, asks for class
``i mod num_classes``; samples are generated in shards of consecutive indices, spread over ``torchrun`` ranks
and written atomically, so an interrupted evaluation resumes where it stopped and gives the same numbers.
"""

from latentfm.evaluation.features import (
    TrainingEvaluation,
    class_accuracy,
    distribution_metrics,
    generated_features,
    reference_statistics,
    training_evaluation,
)
from latentfm.evaluation.report import markdown_report
from latentfm.evaluation.run import Evaluation, measure_latency
from latentfm.evaluation.settings import KEEP_FEATURES, EvalSettings

__all__ = [
    "KEEP_FEATURES",
    "EvalSettings",
    "Evaluation",
    "TrainingEvaluation",
    "class_accuracy",
    "distribution_metrics",
    "generated_features",
    "markdown_report",
    "measure_latency",
    "reference_statistics",
    "training_evaluation",
]
