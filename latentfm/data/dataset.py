"""What every dataset offers (:class:`ImageDataset`), the batch it reads (:class:`ImageBatch`) and the in-memory
dataset (:class:`ImageData`) of data that are arrays already.

A dataset's length, labels, image shape and fingerprint are known without decoding; ``read(indices)`` returns the
uint8 images of those rows. ``latentfm.data.folder.ImageFolder`` reads image files lazily; ``latentfm.data.loader``
reads batches in ``DataLoader`` worker processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from latentfm.image_io import from_uint8


@dataclass
class ImageBatch:
    """Rows of a dataset as read: uint8 images [n, C, H, W], int64 labels [n] (None when unlabelled), uint8
    class-id maps [n, 1, H, W] (None without ``data.maps_path``) and how many unreadable files were replaced by
    the next readable one of their class (``data.skip_corrupt``)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    maps: torch.Tensor | None = None
    skipped: int = 0

    def pin_memory(self) -> ImageBatch:
        """The batch in page-locked memory (``DataLoader`` calls this with ``pin_memory``), for fast copies."""
        pin = lambda x: None if x is None else x.pin_memory()  # noqa: E731
        return ImageBatch(pin(self.images), pin(self.labels), pin(self.maps), self.skipped)

    def to(self, device: torch.device | str | None) -> ImageBatch:
        """The batch on ``device`` (uint8: a quarter of the bytes of float32)."""
        move = lambda x: None if x is None else x.to(device, non_blocking=True)  # noqa: E731
        return ImageBatch(move(self.images), move(self.labels), move(self.maps), self.skipped)

    def floats(self) -> torch.Tensor:
        """The images as float32 in [-1, 1]."""
        return from_uint8(self.images)


def flip_rows(values: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    """``values`` [n, ...] mirrored left-right in the rows where the bool mask ``flips`` is true."""
    if flips is None:
        return values
    return torch.where(flips.view(-1, *[1] * (values.dim() - 1)), values.flip(-1), values)


class ImageDataset:
    """The interface every dataset offers; subclasses set the attributes and implement ``read`` and
    ``fingerprint``."""

    labels: torch.Tensor | None  # int64 [N]: known without decoding
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W) of every image as read
    has_maps: bool = False
    in_memory: bool = True  # arrays already: nothing to decode, so no worker processes by default
    notes: list[str]  # what loading decided that the user should hear

    def __len__(self) -> int:
        """Number of images."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A SHA-256 that changes when the data changes (what resume, latent caches and references check)."""
        raise NotImplementedError

    def read(self, indices: Sequence[int] | torch.Tensor, flips: torch.Tensor | None = None) -> ImageBatch:
        """The rows ``indices`` as uint8, mirrored left-right where ``flips`` is true."""
        raise NotImplementedError

    def batch(
        self, indices: torch.Tensor, flip: torch.Tensor | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 images in [-1, 1] of ``indices`` (read in this process) on ``device``, and their labels."""
        batch = self.read(indices, flip).to(device)
        return batch.floats(), batch.labels


@dataclass
class ImageData(ImageDataset):
    """A dataset in memory: uint8 images [N, C, H, W] with optional int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    class_names: list[str]
    maps: torch.Tensor | None = None  # uint8 class-id maps [N, 1, H, W]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of images."""
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images."""
        return tuple(self.images.shape[1:])

    @property
    def has_maps(self) -> bool:
        """Whether a class-id map comes with every image."""
        return self.maps is not None

    def fingerprint(self) -> str:
        """SHA-256 of the images (shape and bytes) and labels: equal data, equal fingerprint."""
        digest = hashlib.sha256(str(tuple(self.images.shape)).encode())
        digest.update(self.images.contiguous().numpy().tobytes())
        if self.labels is not None:
            digest.update(self.labels.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def read(self, indices: Sequence[int] | torch.Tensor, flips: torch.Tensor | None = None) -> ImageBatch:
        """The rows ``indices``, mirrored where ``flips`` is true.

        >>> data = ImageData(torch.arange(4, dtype=torch.uint8).view(2, 1, 1, 2), None, 0, [])
        >>> data.read([1, 0], torch.tensor([True, False])).images.flatten().tolist()
        [3, 2, 0, 1]
        """
        indices = torch.as_tensor(indices, dtype=torch.int64)
        maps = None if self.maps is None else flip_rows(self.maps[indices], flips)
        labels = None if self.labels is None else self.labels[indices]
        return ImageBatch(flip_rows(self.images[indices], flips), labels, maps)
