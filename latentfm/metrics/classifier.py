"""A small CNN classifier trained in-project on real images; it judges the class of generated samples.

Its penultimate features (``SmallClassifier.features``) also serve a dataset-specific Fréchet distance.

Example (bright against dark 8x8 images; a real judge trains on a dataset's training split):
    >>> images = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> labels = (images.mean((1, 2, 3)) > 0).long()
    >>> model = train_classifier(images, labels, num_classes=2, epochs=30, seed=0)
    >>> accuracy(model, images, labels) > 0.8
    True
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from latentfm.atomic import atomic_file
from latentfm.errors import LatentFMError


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """conv3x3 (optionally strided) -> BatchNorm -> SiLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.SiLU(),
    )


class SmallClassifier(nn.Module):
    """A CNN for class judgements and dataset-specific features.

    A full-resolution stem (``width // 2`` channels), then stages of (strided conv block, conv block) that
    halve the resolution down to about 4x4 (``width`` channels in the first stage, ``2 * width`` after), a
    global average pool, dropout and a linear head. ``width=32`` at 28x28 has about 143k parameters.

    Inputs are float NCHW in [-1, 1]; any ``image_size`` from 8 to 64 works (non powers of two included).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32):
        super().__init__()
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "image_size": image_size,
            "width": width,
        }
        layers, channels = [_conv_block(in_channels, width // 2)], width // 2
        for stage in range(max(1, math.ceil(math.log2(image_size / 4)))):
            out = width if stage == 0 else 2 * width
            layers += [_conv_block(channels, out, stride=2), _conv_block(out, out)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(channels, num_classes)
        self.feature_dim = channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[B, feature_dim]`` (global average pool of the last conv block)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.dropout(self.features(x)))


def _random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift every image by its own random offset in ``[-max_shift, max_shift]`` px (edges replicated)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator).to(x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]
    shifted = padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]  # [B, H, W, C]
    return shifted.permute(0, 3, 1, 2).contiguous()


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    augment: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> SmallClassifier:
    """Train a ``SmallClassifier`` on ``images`` (float [-1, 1] NCHW) and int64 ``labels``.

    AdamW with a one-cycle learning rate; augmentation is a random translation of +-1 px (images up to
    16 px) or +-2 px (larger), never a flip. Deterministic given ``seed``; the global RNG is left untouched.
    ``progress`` prints the mean loss of every epoch. Returns the model in eval mode.
    """
    n, c, h, _ = images.shape
    batch_size = min(batch_size, n)
    steps = n // batch_size
    max_shift = 1 if h <= 16 else 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = SmallClassifier(c, num_classes, h).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for i in range(steps):
                index = order[i * batch_size : (i + 1) * batch_size]
                x = images[index].to(device)
                if augment:
                    x = _random_translate(x, max_shift, generator)
                loss = F.cross_entropy(model(x), labels[index].to(device), label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
            if progress:
                print(f"classifier epoch {epoch + 1}/{epochs}: loss {total / steps:.4f}", flush=True)
    return model.eval()


@torch.no_grad()
def predict(model: SmallClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes (int64 ``[N]``, on the CPU) of ``images`` in [-1, 1], batch by batch in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x.to(device)).argmax(dim=1).cpu() for x in images.split(batch_size)])


def accuracy(model: SmallClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction in [0, 1] of ``images`` that the model assigns to ``labels``."""
    return (predict(model, images) == labels.cpu()).float().mean().item()


def _config_path(path: Path) -> Path:
    """The sidecar JSON next to the weights file: ``clf.safetensors`` -> ``clf.json``."""
    if path.suffix == ".json":
        raise LatentFMError(f"classifier weights path must not end in .json: {path}")
    return path.with_suffix(".json")


def save_classifier(model: SmallClassifier, path: str | Path, report: dict[str, Any] | None = None) -> None:
    """Write the weights to ``path`` (safetensors), the constructor arguments to ``path`` with .json and, when
    given, how it was trained and how well it does (``report``) to ``path`` with .report.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(weights, str(tmp))
    with atomic_file(_config_path(path)) as tmp:
        tmp.write_text(json.dumps(model.config, indent=2))
    if report is not None:
        with atomic_file(path.with_suffix(".report.json")) as tmp:
            tmp.write_text(json.dumps(report, indent=1))


def load_classifier(path: str | Path) -> SmallClassifier:
    """Load a classifier written by ``save_classifier``, in eval mode on the CPU.

    Raises ``LatentFMError`` naming the path when the weights or the sidecar JSON are missing or corrupt.
    """
    path = Path(path)
    config_path = _config_path(path)
    for p in (path, config_path):
        if not p.is_file():
            raise LatentFMError(f"classifier file not found: {p}")
    try:
        model = SmallClassifier(**json.loads(config_path.read_text()))
        model.load_state_dict(load_file(str(path)))
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise LatentFMError(f"corrupt classifier at {path} (config {config_path.name}): {reason}") from exc
    return model.eval()
