"""Latents on disk: a dataset encoded once into sharded ``.npy`` files with a JSON manifest.

Layout of a cache directory::

    manifest.json       what was encoded, by which autoencoder (weights hash), from which data (fingerprint),
                        down-sampled how many times by area (``downsample``, 1: as loaded) and whether
                        brought back up bicubically (``pixel_upsample``)
    shard_00000.npy     latents [n, views, C, h, w]; view 1 is the left-right flipped image when ``hflip``
    labels.npy          int64 labels [N] (absent for unlabelled data)
    data_index.npz      an image folder's index (``latentfm.data.folder``): which files, so that resuming an
                        unfinished cache refuses a folder that changed, naming what changed

Writing is resumable: each shard appears atomically, finished shards are never re-encoded, and ``torchrun``
ranks take every ``world_size``-th shard. The manifest is marked complete, with per-channel moments of all
stored latents, only when every shard exists. Training reads the shards memory-mapped (this module);
``latent_cache_writer`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentfm.autoencoders.base import Autoencoder, check_image_size
from latentfm.data.dataset import ImageDataset
from latentfm.errors import LatentFMError, first_difference

FORMAT = "latentfm-latent-cache/1"
MANIFEST = "manifest.json"
INDEX_FILE = "data_index.npz"  # an image folder's index (latentfm.data.folder), kept with the cache it made
DTYPES = {"float32": np.float32, "float16": np.float16}
# Header keys that decide what the shards contain; a cache that differs in any of them is refused.
# (The dataset's path and description may change: a moved dataset with the same fingerprint is the same data.)
IDENTITY_KEYS = (
    "format",
    "autoencoder",
    "dataset.count",
    "dataset.fingerprint",
    "hflip",
    "downsample",
    "pixel_upsample",
    "dtype",
    "shard_size",
    "sampling",
)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a cache directory, or None when it has none."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LatentFMError(f"latent cache manifest {path} is not valid JSON ({error}); delete the cache") from None


def cache_difference(saved: dict[str, Any], header: dict[str, Any]) -> str | None:
    """The first identity key in which an existing cache differs from ``header``, with both values."""
    # caches written before --downsample existed hold the images as loaded
    loaded = {"downsample": 1, "pixel_upsample": False}
    difference = first_difference({**loaded, **saved}, {**loaded, **header}, keys=IDENTITY_KEYS)
    if difference is None:
        return None
    return f"{difference.key}: {difference.old!r} in the cache, {difference.new!r} now"


def shard_path(directory: Path, shard: int) -> Path:
    """The file of shard ``shard``."""
    return directory / f"shard_{shard:05d}.npy"


def shard_count(header: dict[str, Any]) -> int:
    """How many shards a cache of this header holds."""
    return -(-header["dataset"]["count"] // header["shard_size"])


def check_cache_autoencoder(cache: LatentCache, identity: dict[str, Any]) -> None:
    """Refuse a cache encoded by another autoencoder than the one the run config builds."""
    difference = cache_difference({"autoencoder": cache.manifest["autoencoder"]}, {"autoencoder": identity})
    if difference:
        raise LatentFMError(
            f"latent cache {cache.directory} was encoded by another autoencoder than the config's ({difference}); "
            "point autoencoder.* at the one that made it, or encode again"
        )


class LatentCache:
    """A complete cache opened for training: ``batch`` gathers latents from memory-mapped shards."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest = read_manifest(self.directory)
        if manifest is None or manifest.get("format") != FORMAT:
            raise LatentFMError(f"{self.directory} is not a latent cache (no {MANIFEST} of {FORMAT})")
        if not manifest.get("complete"):
            raise LatentFMError(f"latent cache {self.directory} is incomplete; rerun latentfm encode to finish it")
        self.manifest = manifest
        self.shards = [self._open_shard(s) for s in range(shard_count(manifest))]
        labels_file = self.directory / "labels.npy"
        self.labels = torch.from_numpy(np.load(labels_file)) if labels_file.is_file() else None
        self.num_classes, self.class_names = manifest["num_classes"], manifest["class_names"]
        self.image_shape = tuple(manifest["image_shape"])
        self.latent_shape = tuple(manifest["latent_shape"])
        self.downsample = manifest.get("downsample", 1)

    def _open_shard(self, shard: int) -> np.ndarray:
        """Shard ``shard`` memory-mapped, checked against the manifest's shapes."""
        path, size, count = shard_path(self.directory, shard), self.manifest["shard_size"], len(self)
        views = 2 if self.manifest["hflip"] else 1
        expected = (min(size, count - shard * size), views, *self.manifest["latent_shape"])
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise LatentFMError(
                f"cannot read latent cache shard {path} ({error}); delete it and rerun encode"
            ) from None
        if array.shape != expected:
            raise LatentFMError(f"latent cache shard {path} has shape {array.shape}, expected {expected}; encode again")
        return array

    def __len__(self) -> int:
        """Number of encoded images."""
        return self.manifest["dataset"]["count"]

    def moments(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and variance of all stored latents (computed when the cache was finished)."""
        return self.manifest["moments"]["mean"], self.manifest["moments"]["var"]

    def batch(
        self, indices: torch.Tensor, flip: torch.Tensor | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 raw latents of ``indices`` (of the flipped images where ``flip`` is true) and labels."""
        if flip is not None and not self.manifest["hflip"]:
            raise LatentFMError(f"data.hflip=true but latent cache {self.directory} was encoded without --hflip")
        indices = indices.cpu().numpy()
        views = np.zeros(len(indices), np.int64) if flip is None else flip.cpu().numpy().astype(np.int64)
        size = self.manifest["shard_size"]
        shard_of, offset = indices // size, indices % size
        out = np.empty((len(indices), *self.latent_shape), np.float32)
        for shard in np.unique(shard_of):
            rows = shard_of == shard
            out[rows] = self.shards[shard][offset[rows], views[rows]]
        labels = None if self.labels is None else self.labels[torch.from_numpy(indices)].to(device)
        return torch.from_numpy(out).to(device), labels


class EncodedImages:
    """Images encoded on the fly, with the same ``batch`` interface as LatentCache (reading in this process; the
    trainer reads its steps' images through ``latentfm.data.loader`` workers instead)."""

    def __init__(self, data: ImageDataset, autoencoder: Autoencoder):
        check_image_size(data.image_shape, autoencoder)
        self.data, self.autoencoder = data, autoencoder
        self.num_classes, self.class_names = data.num_classes, data.class_names
        self.image_shape = tuple(data.image_shape)

    def __len__(self) -> int:
        """Number of images."""
        return len(self.data)

    @torch.no_grad()
    def batch(
        self, indices: torch.Tensor, flip: torch.Tensor | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 raw latents of images ``indices`` (flipped where ``flip`` is true) and labels."""
        images, labels = self.data.batch(indices, flip, device=device)
        return self.autoencoder.encode(images).float(), labels
