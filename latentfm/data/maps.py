"""Semantic maps on disk: PNGs whose pixel values are class ids (mode ``L``, or ``P`` whose palette indices are
the ids, as CelebAMask-HQ's preprocessed masks). Resized like images (centre crop to a square), but with nearest
neighbours so that ids stay ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentfm.errors import LatentFMError
from latentfm.image_io import open_image, square_resize

MAP_MODES = ("L", "P")


def read_map(file: str | Path, image_size: int | None = None) -> np.ndarray:
    """The H×W uint8 class ids of one map file, cropped and resized to ``image_size``² when given.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "map.png"
        >>> Image.fromarray(np.array([[0, 1], [2, 2]], np.uint8)).save(path)
        >>> read_map(path).tolist(), read_map(path, 4).shape
        ([[0, 1], [2, 2]], (4, 4))
    """
    img = open_image(file, "map")
    if img.mode not in MAP_MODES:
        raise LatentFMError(f"map {file} has mode {img.mode}: save class ids as an 8-bit grey (L) or palette (P) PNG")
    if image_size is not None and img.size != (image_size, image_size):
        img = square_resize(img, image_size, Image.Resampling.NEAREST)
    return np.array(img, dtype=np.uint8)


def one_hot_maps(maps: torch.Tensor, classes: int) -> torch.Tensor:
    """Class-id maps ``[B, 1, H, W]`` as float one-hot ``[B, classes, H, W]``; ids outside ``0..classes-1`` are
    one line.

    Example:
        >>> one_hot_maps(torch.tensor([[[[0, 2]]]]), 3)[0, :, 0].tolist()
        [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    maps = maps.long()
    if maps.numel() and (maps.min() < 0 or maps.max() >= classes):
        raise LatentFMError(f"a map holds class id {int(maps.max())}, but the model knows {classes} (0..{classes - 1})")
    return torch.nn.functional.one_hot(maps[:, 0], classes).permute(0, 3, 1, 2).float()
