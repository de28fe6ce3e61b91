"""Feature extractors for distribution metrics, and the protocol that says how their features were made.

Two kinds, both fed uint8 NCHW images (what a PNG holds: generated images are quantised exactly like real ones):

- ``inception``: the FID InceptionV3 (pool3, 2048-d) from a local ``pt_inception-2015-12-05`` weights file;
  grey images are repeated to RGB, every image is resized bilinearly to 299x299.
- ``classifier``: a ``latentfm train-classifier`` model; its penultimate features give a dataset-specific
  Fréchet distance and its predictions the class accuracy of conditional samples. Images are used at their
  own resolution, which must be the one it was trained at.

``load_features(path)`` picks the kind from the file: ``.pth``/``.pt`` is InceptionV3, ``.safetensors`` (with
its ``.json`` sidecar) a classifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentfm.checkpoint import weights_sha256
from latentfm.errors import LatentFMError
from latentfm.image_io import from_uint8
from latentfm.metrics.classifier import SmallClassifier, load_classifier
from latentfm.metrics.inception import FEATURE_DIM, INPUT_SIZE, load_inception

QUANTISATION = "uint8 per channel (PNG-equivalent, lossless); no JPEG"


class FeatureExtractor:
    """Features (and, for classifiers, class predictions) of uint8 images, with the protocol they follow."""

    def __init__(self, kind: str, network: nn.Module, path: Path, dim: int):
        self.kind, self.network, self.path, self.dim = kind, network, path, dim
        self.weights_sha256 = weights_sha256(network)

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> FeatureExtractor:
        """Move the network to ``device``; returns ``self``."""
        self.network.to(device)
        return self

    @property
    def predicts_classes(self) -> bool:
        """True when the extractor also classifies (an in-project classifier)."""
        return isinstance(self.network, SmallClassifier)

    def protocol(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        """Everything that must match for two feature statistics of ``[C, H, W]`` images to be comparable."""
        channels, height, width = image_shape
        if self.kind == "inception":
            preprocessing = f"grey repeated to RGB; bilinear resize to {INPUT_SIZE}x{INPUT_SIZE} (align_corners=False)"
        else:
            preprocessing = "none (the classifier's own resolution)"
        return {
            "features": f"{self.kind} ({self.dim}-d)",
            "features_sha256": self.weights_sha256,
            "resolution": f"{channels}x{height}x{width}",
            "preprocessing": preprocessing,
            "file_format": QUANTISATION,
        }

    def check_images(self, image_shape: tuple[int, ...]) -> None:
        """Refuse images of ``[C, H, W]`` a classifier was not trained on (InceptionV3 takes any)."""
        if self.kind != "classifier":
            return
        config = self.network.config
        expected = (config["in_channels"], config["image_size"], config["image_size"])
        if tuple(image_shape) != expected:
            raise LatentFMError(
                f"classifier {self.path} was trained on {'x'.join(map(str, expected))} images, not "
                f"{'x'.join(map(str, image_shape))}"
            )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(features [B, D] float32, predicted classes [B] or None)`` of uint8 images ``[B, C, H, W]``."""
        if images.dtype != torch.uint8:
            raise LatentFMError(f"feature extractors take uint8 images, got {images.dtype}; quantise them first")
        x = from_uint8(images.to(self.device))
        if self.kind == "inception":
            return self.network.features(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x).float().cpu(), None
        self.check_images(tuple(x.shape[1:]))
        features = self.network.features(x)
        return features.float().cpu(), self.network.head(features).argmax(1).cpu()


def load_features(path: str | Path, device: torch.device | str = "cpu") -> FeatureExtractor:
    """The feature extractor stored at ``path`` (see the module docstring), on ``device``."""
    path = Path(path)
    if path.suffix in (".pth", ".pt"):
        return FeatureExtractor("inception", load_inception(path), path, FEATURE_DIM).to(device)
    if path.suffix == ".safetensors":
        classifier = load_classifier(path)
        return FeatureExtractor("classifier", classifier, path, classifier.feature_dim).to(device)
    raise LatentFMError(
        f"--features {path}: give InceptionV3 weights (.pth, pytorch-fid's pt_inception-2015-12-05) or a "
        "classifier from `latentfm train-classifier` (.safetensors)"
    )
