"""Image datasets by name: ``load_dataset`` and ``load_data_config`` return an ``ImageDataset``
(``latentfm.data.dataset``).

- ``digits``, ``idx``, ``npz``: arrays already, held in memory (``latentfm.data.arrays``).
- ``folder``: a directory of images, one class per sub-directory or unlabelled at the top level, indexed once and
  decoded per row when a batch needs it (``latentfm.data.folder``), so memory does not grow with the images.

On the command line a dataset is named by ``latentfm.cli.dataset_config`` (``--dataset fashion_mnist``, ...).
"""

from __future__ import annotations

from pathlib import Path

from latentfm.config import DataConfig
from latentfm.data.arrays import convert_channels, load_digits, load_idx_dir, load_npz, resize_images
from latentfm.data.dataset import ImageDataset
from latentfm.data.folder import ImageFolder, open_folder
from latentfm.errors import LatentFMError
from latentfm.image_io import PIL_MODES

KINDS = ("digits", "idx", "folder", "npz")
SPLITS = ("train", "test", "all")
FINGERPRINTS = ("index", "content")


def load_dataset(
    kind: str,
    path: str | None = None,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    skip_corrupt: bool = False,
    maps_path: str | None = None,
    fingerprint: str = "index",
    index_file: str | Path | None = None,
    refuse_change: bool = False,
) -> ImageDataset:
    """The dataset of ``kind`` ("digits", "idx", "npz": arrays in memory; "folder": read lazily).

    ``image_size`` resizes to square images (ADM's centre crop: box halving, bicubic, crop); ``channels`` (1 or 3)
    converts grey <-> RGB. Folders only: ``skip_corrupt`` replaces an unreadable file by the next readable one
    (counted) instead of stopping; ``maps_path`` holds a class-id map per image, ``MAPS/<path of the image>.png``;
    ``fingerprint`` is ``index`` (paths, sizes, labels) or ``content`` (every byte); ``index_file`` caches the
    folder's index and ``refuse_change`` refuses a folder that changed since (see
    ``latentfm.data.folder.open_folder``).

    >>> data = load_dataset("digits", split="test", image_size=16)
    >>> data.image_shape, len(data), data.num_classes
    ((1, 16, 16), 297, 10)
    """
    if split not in SPLITS:
        raise LatentFMError(f"unknown data split {split!r}: use one of {', '.join(SPLITS)}")
    if channels is not None and channels not in PIL_MODES:
        raise LatentFMError(f"data.channels={channels} is not supported: use 1 (grey) or 3 (RGB)")
    if fingerprint not in FINGERPRINTS:
        raise LatentFMError(f"data.fingerprint={fingerprint!r} is unknown: use one of {', '.join(FINGERPRINTS)}")
    if maps_path is not None and kind != "folder":
        raise LatentFMError(f"data.maps_path is set but data.dataset={kind!r}: maps pair with image folders only")
    if kind == "folder":
        index = open_folder(path, split, index_file, refuse_change)
        return ImageFolder(index, image_size, channels, skip_corrupt, maps_path, fingerprint)
    if kind == "digits":
        data = load_digits(split)
    elif kind == "idx":
        data = load_idx_dir(path, split)
    elif kind == "npz":
        data = load_npz(path, split)
    else:
        raise LatentFMError(f"unknown data.kind {kind!r}: use one of {', '.join(KINDS)}")
    if channels is not None:
        data.images = convert_channels(data.images, channels)
    if image_size is not None:
        data.images = resize_images(data.images, image_size)
    return data


def load_data_config(
    data: DataConfig, split: str | None = None, index_file: str | Path | None = None, refuse_change: bool = False
) -> ImageDataset:
    """The dataset a config's ``data`` section describes (its split, or ``split`` when given); ``index_file``
    caches a folder's index (``RUN/data_index.npz``, ``CACHE/data_index.npz``), ``refuse_change`` refuses a folder
    that changed since it was written."""
    split = split or data.split
    return load_dataset(
        data.dataset,
        data.path,
        split,
        data.image_size,
        data.channels,
        data.skip_corrupt,
        data.maps_path,
        data.fingerprint,
        index_file,
        refuse_change,
    )
