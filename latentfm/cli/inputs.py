"""What the generating commands read from the user: class label lists, image and mask files, low-resolution
inputs, semantic maps, integer lists; each refused in one line naming the flag and the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from latentfm.errors import LatentFMError

if TYPE_CHECKING:
    from latentfm.pipeline import Latents


def parse_labels(text: str | None, num_classes: int, class_names: Sequence[str] = ()) -> list[int] | None:
    """``"all"``, ``"0,3,7"``, ``"2-5"`` or class names (``"Sneaker,Bag"``, any case, mixed with numbers) as a
    list of class indices; None for unconditional sampling.

    >>> parse_labels("Sneaker,0,2-3", 10, ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
    ...     "Sneaker", "Bag", "Ankle boot"])
    [7, 0, 2, 3]
    """
    if num_classes == 0:
        if text not in (None, "all"):
            raise LatentFMError("--labels: this checkpoint is unconditional; leave --labels out")
        return None
    if text in (None, "all"):
        return list(range(num_classes))
    by_name = {name.casefold(): index for index, name in enumerate(class_names)}
    labels: list[int] = []
    for part in text.split(","):
        if part.strip().casefold() in by_name:
            labels.append(by_name[part.strip().casefold()])
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            names = f", or class names ({', '.join(class_names)})" if class_names else ""
            raise LatentFMError(
                f"--labels {text!r}: {part!r} is not a class; use 'all', a list like 0,3,7, a range like 2-5{names}"
            ) from None
        bad = next((label for label in (first, last) if not 0 <= label < num_classes), None)
        if bad is not None:
            raise LatentFMError(f"--labels: {bad} is not a class of this checkpoint (0..{num_classes - 1})")
        if last < first:
            raise LatentFMError(f"--labels {text!r}: the range {part} is empty; write it low-high")
        labels.extend(range(first, last + 1))
    return labels


def cycled_labels(
    text: str | None, num_classes: int, per_input: int, inputs: int, class_names: Sequence[str] = ()
) -> torch.Tensor | None:
    """``--labels`` cycled over the ``per_input`` outputs of each input; None (the null label) when not given."""
    labels = None if text is None else parse_labels(text, num_classes, class_names)  # refuses an unconditional model
    if labels is None:
        return None
    return torch.tensor([labels[j % len(labels)] for j in range(per_input)]).repeat(inputs)


def paired_files(image: str, mask: str) -> list[tuple[Path, Path]]:
    """(image, mask) file pairs: two files, or two folders whose PNGs pair by file name."""
    image_path, mask_path = Path(image), Path(mask)
    for path, flag in ((image_path, "--image"), (mask_path, "--mask")):
        if not path.exists():
            raise LatentFMError(f"{flag} {path} not found: give a PNG file or a folder of PNGs")
    if image_path.is_dir() != mask_path.is_dir():
        raise LatentFMError(f"--image {image_path} and --mask {mask_path}: give two files or two folders")
    if not image_path.is_dir():
        return [(image_path, mask_path)]
    names = sorted(f.name for f in image_path.iterdir() if f.suffix.lower() == ".png")
    if not names:
        raise LatentFMError(f"--image {image_path} holds no PNG files")
    missing = [name for name in names if not (mask_path / name).is_file()]
    if missing:
        raise LatentFMError(f"--mask {mask_path} has no {missing[0]}: masks pair with images by file name")
    return [(image_path / name, mask_path / name) for name in names]


def read_pair(image_file: Path, mask_file: Path, image_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """An image in the model's channel mode and its mask, refused in one line unless both have the model's size."""
    from latentfm.image_io import read_image, read_mask

    image, mask = read_image(image_file, image_shape[0]), read_mask(mask_file)
    if mask.shape[-2:] != image.shape[-2:]:
        size = "x".join(map(str, image.shape[:0:-1]))
        raise LatentFMError(f"mask {mask_file} is not {size} like image {image_file}: give masks of the image's size")
    if tuple(image.shape) != tuple(image_shape):
        expected = "x".join(map(str, image_shape[:0:-1]))
        raise LatentFMError(f"image {image_file} is not {expected}, the size of the model's images: resize it")
    return image, mask


def low_resolution_inputs(path: str, channels: int) -> torch.Tensor | Latents:
    """``--input``: a folder of PNGs (sorted by name, read in the model's channel mode), a ``samples.npz`` of
    uint8 images, or a ``latents.npz`` of ``latentfm sample --latents``."""
    from latentfm.image_io import from_uint8, read_image
    from latentfm.pipeline import Latents

    source = Path(path)
    if source.is_dir():
        files = sorted(f for f in source.iterdir() if f.suffix.lower() == ".png")
        if not files:
            raise LatentFMError(f"--input {source} holds no PNG files")
        images = [read_image(file, channels) for file in files]
        for file, image in zip(files, images):
            if image.shape != images[0].shape:
                raise LatentFMError(
                    f"--input {source}: {file.name} is {image.shape[2]}x{image.shape[1]}, {files[0].name} is "
                    f"{images[0].shape[2]}x{images[0].shape[1]}: give low-resolution images of one size"
                )
        return torch.stack(images)
    if source.suffix != ".npz" or not source.is_file():
        raise LatentFMError(f"--input {source}: give a folder of PNGs, a samples.npz or a latents.npz")
    with np.load(source) as data:
        names = set(data.files)
    if "latents" in names:
        return Latents.load(source)
    if "images" not in names:
        raise LatentFMError(f"--input {source} holds neither images nor latents")
    with np.load(source) as data:
        images = torch.from_numpy(data["images"])
    images = images[..., None] if images.ndim == 3 else images
    if images.ndim != 4 or images.shape[-1] != channels or images.dtype != torch.uint8:
        raise LatentFMError(f"--input {source}: images must be uint8 N×H×W (grey) or N×H×W×3, {channels} channels here")
    return from_uint8(images.permute(0, 3, 1, 2))


def map_files(path: str) -> list[Path]:
    """``--semantic``: one map file, or the PNGs of a folder in file-name order."""
    source = Path(path)
    if source.is_dir():
        files = sorted(f for f in source.iterdir() if f.suffix.lower() == ".png")
        if not files:
            raise LatentFMError(f"--semantic {source} holds no PNG maps")
        return files
    if not source.is_file():
        raise LatentFMError(f"--semantic {source} not found: give a PNG of class ids or a folder of them")
    return [source]


def read_map_file(file: Path, image_shape: tuple[int, ...]) -> torch.Tensor:
    """A map file as ``[1, H, W]`` class ids, refused unless it has the model's image size."""
    from latentfm.data.maps import read_map

    array = torch.from_numpy(read_map(file))
    if tuple(array.shape) != tuple(image_shape[1:]):
        size = "x".join(map(str, image_shape[:0:-1]))
        raise LatentFMError(f"map {file} is {array.shape[1]}x{array.shape[0]}, the model makes {size} images")
    return array[None]


def int_list(text: str, flag: str) -> list[int]:
    """Comma-separated integers of ``flag``, e.g. ``4,8,16``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LatentFMError(f"{flag} {text!r}: give integers separated by commas, e.g. 4,8,16") from None
