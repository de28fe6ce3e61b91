"""Datasets that are arrays already, held in memory as uint8 NCHW (:class:`latentfm.data.images.ImageData`).

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits. The split is fixed: a permutation of the
  indices drawn with ``numpy.random.default_rng(0)``; its last 297 indices are the test set, the rest is
  the train set (both kept in ascending index order).
- ``idx``: a directory of MNIST-format IDX files (gzip or plain), Fashion-MNIST by default.
- ``npz``: uint8 NHWC images in one ``.npz`` file (``images``, or ``arr_0`` as in ADM's reference batches), with
  optional ``labels`` (or ``arr_1``); ``latentfm sample`` writes such files.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentfm.data.dataset import ImageData
from latentfm.errors import LatentFMError
from latentfm.image_io import square_resize

DIGITS_SEED = 0
DIGITS_TEST_SIZE = 297
DEFAULT_IDX_PATH = "/usr/share/datasets/fashion-mnist"
IDX_PREFIXES = {"train": "train", "test": "t10k"}
FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def load_npz(path: str | None, split: str) -> ImageData:
    """uint8 NHWC images (``images`` or ``arr_0``) and optional labels (``labels`` or ``arr_1``) of an npz file."""
    if path is None or not Path(path).is_file():
        raise LatentFMError(f"npz dataset {path} not found: set data.path to an .npz file of uint8 NHWC images")
    try:
        with np.load(path, allow_pickle=False) as values:
            images = values["images"] if "images" in values else values["arr_0"]
            labels = values["labels"] if "labels" in values else values.get("arr_1")
    except (OSError, ValueError, KeyError) as error:
        raise LatentFMError(f"cannot read npz dataset {path}: {error} (it needs an images or arr_0 array)") from None
    if split == "test":
        raise LatentFMError(f"npz dataset {path} has no test split: point data.path at another file")
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise LatentFMError(f"npz dataset {path}: images must be uint8 NHW or NHWC, got {images.dtype} {images.shape}")
    if labels is not None and labels.shape != (len(images),):
        raise LatentFMError(f"npz dataset {path}: {labels.shape} labels for {len(images)} images")
    images = torch.from_numpy(images[..., None] if images.ndim == 3 else images).permute(0, 3, 1, 2).contiguous()
    if labels is None or not len(labels) or labels.min() < 0:
        return ImageData(images, None, 0, [])
    label_tensor = torch.from_numpy(labels.astype(np.int64))
    classes = int(label_tensor.max()) + 1
    return ImageData(images, label_tensor, classes, [str(i) for i in range(classes)])


def load_digits(split: str) -> ImageData:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255) with the fixed split of this module."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    order = np.random.default_rng(DIGITS_SEED).permutation(len(images))
    test = np.sort(order[-DIGITS_TEST_SIZE:])
    train = np.sort(order[:-DIGITS_TEST_SIZE])
    keep = {"train": train, "test": test, "all": np.arange(len(images))}[split]
    labels = torch.from_numpy(digits.target[keep].astype(np.int64))
    return ImageData(torch.from_numpy(images[keep]), labels, 10, [str(i) for i in range(10)])


def load_idx_dir(path: str | None, split: str) -> ImageData:
    """Images and labels of ``split`` from a directory of MNIST-format IDX files (Fashion-MNIST by default)."""
    root = Path(path or DEFAULT_IDX_PATH)
    if not root.is_dir():
        raise LatentFMError(
            f"IDX dataset directory {root} not found: install it (apt-get install dataset-fashion-mnist) "
            "or set data.path to a directory of IDX files"
        )
    prefixes = ["train", "test"] if split == "all" else [split]
    parts = [_load_idx_pair(root, IDX_PREFIXES[p]) for p in prefixes]
    images = torch.cat([torch.from_numpy(im) for im, _ in parts])[:, None]
    labels = torch.cat([torch.from_numpy(lab.astype(np.int64)) for _, lab in parts])
    names = _idx_class_names(root, int(labels.max()) + 1 if len(labels) else 0)
    return ImageData(images, labels, len(names), names)


def _load_idx_pair(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """The images [N, H, W] and labels [N] of one IDX file pair, checked to agree in length."""
    images_file = _find_idx_file(root, prefix, "images", 3)
    labels_file = _find_idx_file(root, prefix, "labels", 1)
    images, labels = _read_idx(images_file, 3), _read_idx(labels_file, 1)
    if len(images) != len(labels):
        raise LatentFMError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels: "
            "the files do not belong together"
        )
    return images, labels


def _find_idx_file(root: Path, prefix: str, what: str, ndim: int) -> Path:
    """The path of e.g. ``train-images-idx3-ubyte[.gz]`` (or ``train-images.idx3-ubyte``) in ``root``."""
    stems = [f"{prefix}-{what}-idx{ndim}-ubyte", f"{prefix}-{what}.idx{ndim}-ubyte"]
    for name in (stem + ext for stem in stems for ext in (".gz", "")):
        if (root / name).is_file():
            return root / name
    raise LatentFMError(f"IDX file {root / stems[0]}[.gz] not found: set data.path to a complete IDX directory")


def _read_idx(file: Path, ndim: int) -> np.ndarray:
    """A uint8 array from an IDX file (gzip or plain), checking its magic number and size."""
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise LatentFMError(f"cannot read IDX file {file}: {err}; re-download or reinstall it") from err
    if len(raw) < 4 + 4 * ndim or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise LatentFMError(
            f"IDX file {file} does not start with the magic number of {ndim}-d uint8 data: "
            "it is corrupt or not an IDX file"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise LatentFMError(
            f"IDX file {file} holds {len(body)} data bytes but its header {dims} needs {int(np.prod(dims))}: "
            "it is truncated or corrupt; re-download or reinstall it"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()


def _idx_class_names(root: Path, num_labels: int) -> list[str]:
    """Fashion-MNIST's names for a directory named like it, else the label numbers (at least 0..9)."""
    if "fashion" in root.resolve().name.lower() and num_labels <= len(FASHION_NAMES):
        return list(FASHION_NAMES)
    return [str(i) for i in range(max(10, num_labels))]


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 NCHW images (1 or 3 channels) to square ``size`` with Pillow; a no-op if already so."""
    if images.shape[-2:] == (size, size):
        return images
    grey = images.shape[1] == 1
    hwc = images.permute(0, 2, 3, 1).numpy()
    out = [np.asarray(square_resize(Image.fromarray(a[:, :, 0] if grey else a), size)) for a in hwc]
    resized = torch.from_numpy(np.stack(out))
    return resized[:, None] if grey else resized.permute(0, 3, 1, 2).contiguous()


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by ITU-R 601-2 luminance; unchanged if already right."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.repeat(1, 3, 1, 1)
    weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
