"""An image folder read lazily: an index of files and labels built by listing names (no decoding), and rows
decoded when a batch needs them.

A folder holds one class per sub-directory (labels by the sorted directory names) or unlabelled images at the
top level. The index (:class:`FolderIndex`) keeps relative paths, byte sizes and labels in numpy arrays (a
``DataLoader`` worker shares them with its parent without copying), is built by ``scan_folder`` with threads
(listing and ``stat`` wait on the file system, not the CPU) and can be cached in a file (``open_folder``): the
main rank of a ``torchrun`` job scans and writes it, the other ranks read it, and a resumed run or cache is
refused in one line when the folder changed since.

The fingerprint of an :class:`ImageFolder` hashes the index (relative paths, sizes, labels) and how images are
loaded (``image_size``, channels); ``data.fingerprint=content`` hashes every byte instead.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentfm.atomic import write_bytes_atomic
from latentfm.checkpoint import file_sha256
from latentfm.data.dataset import ImageBatch, ImageDataset
from latentfm.data.maps import read_map
from latentfm.distributed import barrier, is_main_rank
from latentfm.errors import LatentFMError
from latentfm.image_io import PIL_MODES, convert_image, square_resize

INDEX_FORMAT = "latentfm-folder-index/1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}
CHANNEL_SAMPLE = 64  # files whose headers decide an unset data.channels and the image size
SCAN_THREADS = 16
STAT_CHUNK = 2048
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class FolderIndex:
    """The files of an image folder in reading order: class by class, names sorted."""

    root: Path
    files: np.ndarray  # bytes [N]: UTF-8 paths relative to root
    sizes: np.ndarray  # int64 [N]: file sizes in bytes
    labels: np.ndarray  # int64 [N]: class ids, -1 when unlabelled
    class_names: list[str]

    def __len__(self) -> int:
        """Number of files."""
        return len(self.files)

    def relative(self, row: int) -> str:
        """The path of file ``row`` relative to the root."""
        return self.files[row].decode()

    def path(self, row: int) -> Path:
        """The path of file ``row``."""
        return self.root / self.relative(row)

    def digest(self) -> hashlib._Hash:
        """SHA-256 of the format, class names and every (relative path, size, label)."""
        digest = hashlib.sha256(f"{INDEX_FORMAT}\n{self.class_names}\n".encode())
        for name, size, label in zip(self.files, self.sizes.tolist(), self.labels.tolist()):
            digest.update(b"%s\0%d\0%d\n" % (name, size, label))
        return digest

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (an ``.npz``, atomically)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(INDEX_FORMAT),
            root=np.array(str(self.root)),
            files=self.files,
            sizes=self.sizes,
            labels=self.labels,
            class_names=np.array(self.class_names, dtype=str),
        )
        write_bytes_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path, root: str | Path) -> FolderIndex | None:
        """The index saved in ``path`` for the folder ``root``; None when there is none or it is unreadable."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["format"]) != INDEX_FORMAT:
                    return None
                names = [str(n) for n in saved["class_names"]]
                return cls(Path(root), saved["files"], saved["sizes"], saved["labels"], names)
        except (OSError, ValueError, KeyError):
            return None

    def difference(self, other: FolderIndex) -> str | None:
        """What changed from this index to ``other`` (files added, removed, resized, relabelled), or None.

        >>> a = FolderIndex(Path("."), np.array([b"a.png", b"b.png"]), np.array([1, 2]), np.array([0, 1]), ["x", "y"])
        >>> b = FolderIndex(Path("."), np.array([b"b.png", b"c.png"]), np.array([3, 2]), np.array([1, 1]), ["x", "y"])
        >>> a.difference(b)
        '1 added (c.png), 1 removed (a.png), 1 changed size (b.png)'
        """
        old = {name: (size, label) for name, size, label in zip(self.files, self.sizes, self.labels)}
        new = {name: (size, label) for name, size, label in zip(other.files, other.sizes, other.labels)}
        changes = [
            ("added", [n for n in new if n not in old]),
            ("removed", [n for n in old if n not in new]),
            ("changed size", [n for n in new if n in old and new[n][0] != old[n][0]]),
            ("changed label", [n for n in new if n in old and new[n][1] != old[n][1]]),
        ]
        parts = [f"{len(names)} {what} ({_examples(names)})" for what, names in changes if names]
        if self.class_names != other.class_names:
            parts.append(f"class names {self.class_names} became {other.class_names}")
        return ", ".join(parts) or None


def _examples(names: list[bytes]) -> str:
    """The first of ``names`` and whether there are more."""
    return names[0].decode() + (", ..." if len(names) > 1 else "")


def scan_folder(root: Path) -> FolderIndex:
    """Index the images of ``root``: one class per sub-directory holding images (hidden ones ignored), else the
    images at the top level. Only names and sizes are read."""
    directories = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        listed = list(pool.map(_image_names, directories))
        empty = [d.name for d, names in zip(directories, listed) if not names]
        if directories and len(empty) < len(directories):
            if empty:
                raise LatentFMError(
                    f"class folder {root / empty[0]} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                    "add images or move it out of the dataset"
                )
            relative = [f"{d.name}/{name}" for d, names in zip(directories, listed) for name in names]
            labels = np.repeat(np.arange(len(directories)), [len(names) for names in listed])
            class_names = [d.name for d in directories]
        else:
            relative, class_names = _image_names(root), []
            labels = np.full(len(relative), -1)
        if not relative:
            raise LatentFMError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        chunks = [relative[i : i + STAT_CHUNK] for i in range(0, len(relative), STAT_CHUNK)]
        sizes = np.concatenate(list(pool.map(lambda chunk: _sizes(root, chunk), chunks)))
    files = np.array([name.encode() for name in relative], dtype=bytes)
    return FolderIndex(root, files, sizes, labels.astype(np.int64), class_names)


def _image_names(directory: Path) -> list[str]:
    """The sorted names of the image files directly inside ``directory``."""
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file()]
    except OSError as error:
        raise LatentFMError(f"cannot list image folder {directory} ({error.strerror}): check its permissions") from None
    return sorted(names)


def _sizes(root: Path, relative: list[str]) -> np.ndarray:
    """The byte sizes of ``relative`` files under ``root``."""
    base = f"{root}{os.sep}"  # string joins: a Path per file costs more than the stat at a million files
    try:
        return np.array([os.stat(base + name).st_size for name in relative], dtype=np.int64)
    except OSError as error:
        raise LatentFMError(f"cannot stat {error.filename} ({error.strerror}): check the dataset folder") from None


def open_folder(
    path: str | None, split: str, index_file: str | Path | None = None, refuse_change: bool = False
) -> FolderIndex:
    """The index of the folder ``path``. With ``index_file`` the main rank scans the folder and writes the index
    there, and the other ``torchrun`` ranks read it instead of scanning. With ``refuse_change`` (a resumed run, an
    unfinished latent cache) a folder that changed since ``index_file`` was written is refused, naming what changed.
    """
    if path is None or not Path(path).is_dir():
        raise LatentFMError(f"image folder {path} not found: set data.path to a directory of images")
    if split == "test":
        raise LatentFMError(
            f"image folder {path} has no test split: point data.path at a separate folder of test images"
        )
    root = Path(path)
    if index_file is None:
        return scan_folder(root)
    main = is_main_rank()
    if main:
        index = scan_folder(root)
        saved = FolderIndex.load(index_file, root) if Path(index_file).is_file() else None
        change = None if saved is None else saved.difference(index)
        if change and refuse_change:
            raise LatentFMError(
                f"image folder {root} changed since {index_file} was written (files: {change}): restore the folder, or "
                "start anew in another output directory (the index is rebuilt from the folder there)"
            )
        if saved is None or change:
            index.save(index_file)
    barrier()
    if main:
        return index
    loaded = FolderIndex.load(index_file, root)
    if loaded is None:
        raise LatentFMError(f"cannot read the folder index {index_file}: delete it and start again")
    return loaded


class ImageFolder(ImageDataset):
    """The images of a :class:`FolderIndex`, decoded per row (``read``) in whichever process asks.

    Without ``channels`` the headers of up to ``CHANNEL_SAMPLE`` files spread over the index decide (1 when all
    are grey, else 3), and a colour file met later in a folder decided grey is refused, naming it. Without
    ``image_size`` every image must have the size of the first one. ``skip_corrupt`` replaces an unreadable file
    by the next readable one of its class (so labels stay right) and counts it in ``ImageBatch.skipped``.
    """

    in_memory = False

    def __init__(
        self,
        index: FolderIndex,
        image_size: int | None = None,
        channels: int | None = None,
        skip_corrupt: bool = False,
        maps_path: str | None = None,
        fingerprint: str = "index",
    ):
        self.index, self.image_size, self.skip_corrupt = index, image_size, skip_corrupt
        self.maps_root = None if maps_path is None else Path(maps_path)
        self.fingerprint_mode = fingerprint
        labelled = bool(index.class_names)
        self.labels = torch.from_numpy(index.labels) if labelled else None
        self.class_names, self.num_classes = list(index.class_names), len(index.class_names)
        self.notes: list[str] = []
        grey, size = self._sample_headers()
        self.decided_channels = channels is None
        if channels is None:
            channels = 1 if grey else 3
            kind = "grey: a 1-channel" if channels == 1 else "in colour (some or all): a 3-channel"
            self.notes.append(
                f"data.channels is not set and the images in {index.root} are {kind} model (set data.channels)"
            )
        self.channels = channels
        height, width = (image_size, image_size) if image_size else (size[1], size[0])
        self.image_shape = (channels, height, width)
        self.has_maps = self.maps_root is not None

    def __len__(self) -> int:
        """Number of image files."""
        return len(self.index)

    def _sample_headers(self) -> tuple[bool, tuple[int, int]]:
        """Whether the sampled files are all grey, and the (width, height) of the first readable one."""
        rows = np.unique(np.linspace(0, len(self.index) - 1, min(CHANNEL_SAMPLE, len(self.index))).astype(int))
        grey, size = True, None
        for row in rows.tolist():
            try:
                with Image.open(self.index.path(row)) as img:
                    grey = grey and _is_grey(img)
                    size = size or img.size
            except UNREADABLE:
                continue  # reported (or skipped) when the image is read
        if size is None:
            raise LatentFMError(
                f"image folder {self.index.root}: none of {len(rows)} sampled files is a readable image; "
                "check the folder"
            )
        return grey, size

    def fingerprint(self) -> str:
        """SHA-256 of the index (or, with ``data.fingerprint=content``, of every file's bytes) and the loading."""
        digest = self.index.digest()
        digest.update(f"image_size={self.image_size} channels={self.channels}".encode())
        if self.fingerprint_mode == "content":
            with ThreadPoolExecutor(SCAN_THREADS) as pool:
                for file_digest in pool.map(file_sha256, (self.index.path(r) for r in range(len(self.index)))):
                    digest.update(bytes.fromhex(file_digest))
        return digest.hexdigest()

    def read(self, indices: Sequence[int] | torch.Tensor, flips: torch.Tensor | None = None) -> ImageBatch:
        """Decode the rows ``indices`` (cropped and resized to ``image_size``), mirrored where ``flips`` is true."""
        rows = torch.as_tensor(indices, dtype=torch.int64)
        mirrored = [False] * len(rows) if flips is None else flips.bool().tolist()
        channels, height, width = self.image_shape
        images = np.empty((len(rows), height, width, channels), np.uint8)
        skipped = 0
        for i, row in enumerate(rows.tolist()):
            image, used = self._decode(row), row
            while image is None:
                used = self._next_in_class(used)
                if used == row:
                    raise LatentFMError(f"image {self.index.path(row)}: no readable image in its class to replace it")
                image, skipped = self._decode(used), skipped + 1
            images[i] = _mirror(image, mirrored[i])
        maps = None
        if self.maps_root is not None:
            maps = np.stack([_mirror(self._read_map(row), m) for row, m in zip(rows.tolist(), mirrored)])
            maps = torch.from_numpy(maps)[:, None]
        labels = None if self.labels is None else self.labels[rows]
        return ImageBatch(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, maps, skipped)

    def _next_in_class(self, row: int) -> int:
        """The row after ``row`` in its class (the index holds classes in order), wrapping to the class's first."""
        labels = self.index.labels
        start, stop = np.searchsorted(labels, labels[row], "left"), np.searchsorted(labels, labels[row], "right")
        return int(start + (row + 1 - start) % (stop - start))

    def _decode(self, row: int) -> np.ndarray | None:
        """The HWC uint8 image of ``row``; None when it is unreadable and ``skip_corrupt`` is set."""
        file = self.index.path(row)
        try:
            with Image.open(file) as img:
                img.load()
                if self.decided_channels and self.channels == 1 and not _is_grey(img):
                    raise LatentFMError(
                        f"image {file} is in colour, but the sampled images of {self.index.root} are grey: set "
                        "data.channels=3 (or 1 to convert colour images to grey)"
                    )
                img = convert_image(img, PIL_MODES[self.channels], file)
        except UNREADABLE as error:
            if self.skip_corrupt:
                return None
            raise LatentFMError(
                f"cannot read image {file} ({error}): remove it or set data.skip_corrupt=true"
            ) from None
        if self.image_size is not None:
            img = square_resize(img, self.image_size)
        array = np.asarray(img, dtype=np.uint8)
        array = array[:, :, None] if array.ndim == 2 else array
        if array.shape[:2] != self.image_shape[1:]:
            height, width = self.image_shape[1:]
            raise LatentFMError(
                f"image {file} is {array.shape[1]}x{array.shape[0]}, the folder's images are {width}x{height}: "
                "set data.image_size to resize them"
            )
        return array

    def _read_map(self, row: int) -> np.ndarray:
        """The class-id map of ``row``: ``MAPS/<relative path>.png``, resized like the image."""
        file = (self.maps_root / self.index.relative(row)).with_suffix(".png")
        if not file.is_file():
            raise LatentFMError(f"map {file} not found: data.maps_path needs one PNG per image, named like the image")
        found = read_map(file, self.image_size)
        if found.shape != self.image_shape[1:]:
            raise LatentFMError(
                f"map {file} is {found.shape}, the images are {self.image_shape[1:]}: set data.image_size"
            )
        return found


def _mirror(array: np.ndarray, flip: bool) -> np.ndarray:
    """``array`` (H, W, ...) mirrored left-right when ``flip`` (a view: the caller's copy does the work)."""
    return array[:, ::-1] if flip else array


def _is_grey(img: Image.Image) -> bool:
    """Whether an image is grey by its Pillow mode (a palette by its colours)."""
    if img.mode == "P":
        palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
        return bool((palette == palette[:, :1]).all())
    return img.mode in GREY_MODES
