"""Image datasets held in memory as uint8 NCHW tensors: built-in digits, IDX directories, image folders.

Three kinds, all returning :class:`ImageData`:

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits. The split is fixed: a permutation of the
  indices drawn with ``numpy.random.default_rng(0)``; its last 297 indices are the test set, the rest is
  the train set (both kept in ascending index order).
- ``idx``: a directory of MNIST-format IDX files (gzip or plain), Fashion-MNIST by default.
- ``folder``: a directory of images, one class per sub-directory, or unlabelled images at the top level.
- ``npz``: uint8 NHWC images in one ``.npz`` file (``images``, or ``arr_0`` as in ADM's reference batches), with
  optional ``labels`` (or ``arr_1``); ``latentfm sample`` writes such files.

On the command line a dataset is named by ``latentfm.cli.dataset_config`` (``--dataset fashion_mnist``, ...).
"""

import gzip
import hashlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentfm.config import DataConfig
from latentfm.data.maps import load_maps
from latentfm.errors import LatentFMError
from latentfm.image_io import PIL_MODES, convert_image, from_uint8, square_resize

KINDS = ("digits", "idx", "folder", "npz")
SPLITS = ("train", "test", "all")
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
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


@dataclass
class ImageData:
    """A dataset in memory: uint8 images [N, C, H, W] with optional int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    class_names: list[str]
    skipped: int = 0
    maps: torch.Tensor | None = None  # uint8 class-id maps [N, 1, H, W] (``data.maps_path``)
    notes: list[str] = field(default_factory=list)  # what loading decided that the user should hear

    def __len__(self) -> int:
        """Number of images."""
        return self.images.shape[0]

    def fingerprint(self) -> str:
        """SHA-256 of the images (shape and bytes) and labels: equal data, equal fingerprint."""
        digest = hashlib.sha256(str(tuple(self.images.shape)).encode())
        digest.update(self.images.contiguous().numpy().tobytes())
        if self.labels is not None:
            digest.update(self.labels.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def batch(
        self, indices: torch.Tensor, flip: torch.Tensor | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 images in [-1, 1] for ``indices`` (flipped left-right where the bool mask ``flip`` is
        true) and their labels, or None for unlabelled data. With ``device`` the uint8 images are moved
        there before conversion (a quarter of the bytes of float32)."""
        x = from_uint8(self.images[indices].to(device))
        if flip is not None:
            x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        labels = None if self.labels is None else self.labels[indices].to(device)
        return x, labels

    def map_batch(
        self, indices: torch.Tensor, flip: torch.Tensor | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        """The uint8 maps of ``indices``, flipped like ``batch`` flips the images; None without maps."""
        if self.maps is None:
            return None
        maps = self.maps[indices].to(device)
        if flip is not None:
            maps = torch.where(flip.to(maps.device).view(-1, 1, 1, 1), maps.flip(-1), maps)
        return maps


def load_dataset(
    kind: str,
    path: str | None = None,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    skip_corrupt: bool = False,
    maps_path: str | None = None,
) -> ImageData:
    """Load a dataset of ``kind`` ("digits", "idx" or "folder") into memory.

    ``image_size`` resizes to square images (centre crop, then Pillow bicubic); ``channels`` (1 or 3)
    converts grey <-> RGB. ``skip_corrupt`` skips unreadable files in folders instead of failing.
    ``maps_path`` (folders only) holds a class-id map per image, ``MAPS/<path of the image>.png``.

    >>> data = load_dataset("digits", split="test", image_size=16)
    >>> tuple(data.images.shape), data.num_classes
    ((297, 1, 16, 16), 10)
    """
    if split not in SPLITS:
        raise LatentFMError(f"unknown data split {split!r}: use one of {', '.join(SPLITS)}")
    if channels is not None and channels not in PIL_MODES:
        raise LatentFMError(f"data.channels={channels} is not supported: use 1 (grey) or 3 (RGB)")
    if maps_path is not None and kind != "folder":
        raise LatentFMError(f"data.maps_path is set but data.dataset={kind!r}: maps pair with image folders only")
    if kind == "digits":
        data = _load_digits(split)
    elif kind == "idx":
        data = _load_idx_dir(Path(path or DEFAULT_IDX_PATH), split)
    elif kind == "folder":
        data = _load_folder(path, split, image_size, channels, skip_corrupt, maps_path)
    elif kind == "npz":
        data = _load_npz(path, split)
    else:
        raise LatentFMError(f"unknown data.kind {kind!r}: use one of {', '.join(KINDS)}")
    if channels is not None:
        data.images = _convert_channels(data.images, channels)
    if image_size is not None:
        data.images = _resize(data.images, image_size)
    return data


def load_data_config(data: DataConfig, split: str | None = None) -> ImageData:
    """The dataset a config's ``data`` section describes (its split, or ``split`` when given)."""
    split = split or data.split
    return load_dataset(
        data.dataset, data.path, split, data.image_size, data.channels, data.skip_corrupt, data.maps_path
    )


def _load_npz(path: str | None, split: str) -> ImageData:
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


def _load_digits(split: str) -> ImageData:
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


def _load_idx_dir(root: Path, split: str) -> ImageData:
    """Images and labels of ``split`` from a directory of MNIST-format IDX files."""
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


def _load_folder(
    path: str | None,
    split: str,
    image_size: int | None,
    channels: int | None,
    skip_corrupt: bool,
    maps_path: str | None,
) -> ImageData:
    """Images of a folder: one class per sub-directory holding images, else unlabelled; with ``maps_path``, the
    map of each image. Without ``channels`` the images decide: 1 when every one is grey, else 3."""
    if path is None or not Path(path).is_dir():
        raise LatentFMError(f"image folder {path} not found: set data.path to a directory of images")
    if split == "test":
        raise LatentFMError(
            f"image folder {path} has no test split: point data.path at a separate folder of test images"
        )
    root = Path(path)
    classes = sorted(d for d in root.iterdir() if d.is_dir() and _image_files(d))
    if classes:
        files = [(f, i) for i, d in enumerate(classes) for f in _image_files(d)]
    else:
        files = [(f, -1) for f in _image_files(root)]
    if not files:
        raise LatentFMError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    notes = []
    if channels is None:
        channels = _folder_channels([file for file, _ in files])
        kind = "grey: a 1-channel" if channels == 1 else "in colour (some or all): a 3-channel"
        notes.append(f"data.channels is not set and the images in {root} are {kind} model (set data.channels)")
    arrays, labels, read = [], [], []
    for file, label in files:
        array = _read_image(file, PIL_MODES[channels], image_size, skip_corrupt)
        if array is not None:
            arrays.append(array)
            labels.append(label)
            read.append(file)
    if not arrays:
        raise LatentFMError(f"image folder {root} holds no readable images: all {len(files)} are corrupt")
    images = torch.from_numpy(_stack_same_size(arrays, files)).permute(0, 3, 1, 2).contiguous()
    label_tensor = torch.tensor(labels, dtype=torch.int64) if classes else None
    names = [d.name for d in classes]
    maps = None
    if maps_path is not None:
        maps = load_maps([Path(maps_path, f.relative_to(root)).with_suffix(".png") for f in read], image_size)
        if maps.shape[-2:] != images.shape[-2:]:
            raise LatentFMError(f"maps in {maps_path} are {tuple(maps.shape[-2:])}, images {tuple(images.shape[-2:])}")
    skipped = len(files) - len(arrays)
    return ImageData(images, label_tensor, len(names), names, skipped=skipped, maps=maps, notes=notes)


GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}


def _folder_channels(files: list[Path]) -> int:
    """1 when every readable image is grey (by its Pillow mode, read from the header only), else 3."""
    for file in files:
        try:
            with Image.open(file) as img:
                grey = img.mode in GREY_MODES or (img.mode == "P" and _grey_palette(img))
        except (OSError, ValueError):
            continue  # unreadable files are reported (or skipped) when the images are read
        if not grey:
            return 3
    return 1


def _grey_palette(img: Image.Image) -> bool:
    """Whether a palette image's colours are all grey."""
    palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool((palette == palette[:, :1]).all())


def _image_files(directory: Path) -> list[Path]:
    """The image files directly inside ``directory``, sorted by name."""
    return sorted(f for f in directory.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(file: Path, mode: str, image_size: int | None, skip_corrupt: bool) -> np.ndarray | None:
    """An HWC uint8 array of one image file in Pillow ``mode``; None for a corrupt file if skipping."""
    try:
        with Image.open(file) as img:
            img = convert_image(img, mode, file)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        if skip_corrupt:
            return None
        raise LatentFMError(f"cannot read image {file} ({err}): remove it or set data.skip_corrupt=true") from err
    if image_size is not None:
        img = square_resize(img, image_size)
    array = np.asarray(img, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _stack_same_size(arrays: list[np.ndarray], files: list[tuple[Path, int]]) -> np.ndarray:
    """Stack HWC arrays, or fail naming two files of different sizes."""
    sizes = {a.shape[:2]: i for i, a in enumerate(arrays)}
    if len(sizes) > 1:
        (size_a, i), (size_b, j) = list(sizes.items())[:2]
        raise LatentFMError(
            f"images differ in size ({size_a[1]}x{size_a[0]} and {size_b[1]}x{size_b[0]}, e.g. "
            f"{files[i][0].name} and {files[j][0].name}): set data.image_size to resize them"
        )
    return np.stack(arrays)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 NCHW images (1 or 3 channels) to square ``size`` with Pillow; a no-op if already so."""
    if images.shape[-2:] == (size, size):
        return images
    grey = images.shape[1] == 1
    hwc = images.permute(0, 2, 3, 1).numpy()
    out = [np.asarray(square_resize(Image.fromarray(a[:, :, 0] if grey else a), size)) for a in hwc]
    resized = torch.from_numpy(np.stack(out))
    return resized[:, None] if grey else resized.permute(0, 3, 1, 2).contiguous()


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by ITU-R 601-2 luminance; unchanged if already right."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.repeat(1, 3, 1, 1)
    weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
