"""Images in memory (float NCHW in [-1, 1]) to uint8 arrays, PNG files and sample grids."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentfm.atomic import write_bytes_atomic
from latentfm.errors import LatentFMError

PIL_MODES = {1: "L", 3: "RGB"}


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] to uint8 (same layout and device), rounded as when they are saved as PNG: the one
    float-to-8-bit conversion of the library.

    Example:
        >>> quantise(torch.tensor([-1.0, 0.0, 0.999, 2.0])).tolist()
        [0, 128, 255, 255]
    """
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [-1, 1] (the inverse of ``quantise`` on its grid)."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float NCHW images in [-1, 1] to uint8 NHWC numpy (N×H×W for one channel), for PNG and npz files."""
    array = quantise(images.cpu()).permute(0, 2, 3, 1).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def area_downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Float images ``[N, C, H, W]`` down-sampled ``factor`` times by area averaging (unchanged for 1)."""
    return images if factor == 1 else torch.nn.functional.avg_pool2d(images, factor)


def bicubic_upsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Float images in [-1, 1] up-sampled ``factor`` times bicubically, clamped to [-1, 1].

    Example:
        >>> bicubic_upsample(area_downsample(torch.ones(1, 1, 4, 4), 2), 2).shape
        torch.Size([1, 1, 4, 4])
    """
    size = (images.shape[-2] * factor, images.shape[-1] * factor)
    return torch.nn.functional.interpolate(images, size=size, mode="bicubic").clamp(-1, 1)


def make_grid(images: np.ndarray, columns: int, padding: int = 1, upscale: int = 1) -> np.ndarray:
    """Tile uint8 images (N×H×W or N×H×W×C) into one uint8 image, row-major, ``columns`` per row."""
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + padding) + padding, columns * (w + padding) + padding, *images.shape[3:]), np.uint8)
    for index, image in enumerate(images):
        top, left = padding + (index // columns) * (h + padding), padding + (index % columns) * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write one uint8 image (H×W or H×W×3) as PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def save_grid(images: torch.Tensor, path: str | Path, columns: int, min_tile: int = 32) -> None:
    """Save float images in [-1, 1] as a PNG grid; small images are upscaled (nearest) to ``min_tile`` px."""
    array = to_uint8(images)
    upscale = max(1, min_tile // array.shape[1])
    save_png(make_grid(array, columns, upscale=upscale), path)


def write_samples(out: Path, images: torch.Tensor, labels: torch.Tensor | None, columns: int) -> None:
    """``OUT/samples.png`` (a grid, ``columns`` per row) and ``OUT/samples.npz`` (uint8 images, labels)."""
    save_grid(images, out / "samples.png", columns=columns)
    buffer = io.BytesIO()
    label_array = np.full(len(images), -1) if labels is None else labels.numpy()
    np.savez_compressed(buffer, images=to_uint8(images), labels=label_array.astype(np.int64))
    write_bytes_atomic(out / "samples.npz", buffer.getvalue())


def write_image_folder(folder: Path, images: torch.Tensor) -> None:
    """One PNG per image, ``FOLDER/000000.png`` on, in order (what clean-fid and torch-fidelity read)."""
    for index, image in enumerate(to_uint8(images)):
        save_png(image, folder / f"{index:06d}.png")


def write_adm_batch(path: Path, images: torch.Tensor, labels: torch.Tensor | None) -> None:
    """An ``.npz`` as ADM's evaluator reads it: ``arr_0`` uint8 N×H×W×3 (grey repeated to RGB) and, for a
    conditional model, ``arr_1`` int64 labels."""
    array = to_uint8(images)
    array = np.repeat(array[..., None], 3, axis=-1) if array.ndim == 3 else array
    arrays = {"arr_0": array} if labels is None else {"arr_0": array, "arr_1": labels.numpy().astype(np.int64)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """A loaded Pillow image, or one line naming the file (``what`` says what it was meant to be)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise LatentFMError(f"cannot read {what} {path} ({err}): give a PNG") from err


SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}  # Pillow opens 16-bit PNGs as I;16 (or I, 32-bit ints)


def convert_image(img: Image.Image, mode: str, path: str | Path) -> Image.Image:
    """An image as 8-bit grey (``L``) or ``RGB``: palettes through their colours, CMYK through Pillow, 16-bit
    grey scaled (not clipped) to 8 bits, alpha dropped when every pixel is opaque. Refused in one line: alpha
    with transparent pixels (no background is right for every dataset) and floating-point pixels (no range).

    Example:
        >>> deep = Image.fromarray(np.array([[0, 32896, 65535]], np.uint16))
        >>> np.asarray(convert_image(deep, "L", "deep.png")).tolist()
        [[0, 128, 255]]
    """
    if img.mode == "F":
        raise LatentFMError(f"image {path} has floating-point pixels (mode F), of no fixed range: save 8 or 16 bits")
    if img.mode in SIXTEEN_BIT_MODES:
        deep = np.asarray(img, dtype=np.int64).clip(0, 65535)
        img = Image.fromarray(((deep * 255 + 32767) // 65535).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa") and np.asarray(img.getchannel("A")).min() < 255:
        raise LatentFMError(
            f"image {path} has transparent pixels: flatten it onto the background you want (e.g. white) first"
        )
    return img.convert(mode)


def square_resize(img: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """ADM's centre crop: halve by box filtering while the shorter side is at least ``2 * size`` (images only; maps
    keep nearest neighbours so ids stay ids), resize the shorter side to ``size`` with ``resample``, crop the centre.

    Example:
        >>> square_resize(Image.new("RGB", (300, 200)), 64).size
        (64, 64)
    """
    if resample != Image.Resampling.NEAREST:
        while min(img.size) >= 2 * size:
            img = img.resize(tuple(side // 2 for side in img.size), Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(max(size, round(side * scale)) for side in img.size), resample)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def read_image(path: str | Path, channels: int) -> torch.Tensor:
    """One image file as float ``[channels, H, W]`` in [-1, 1] (converted to grey or RGB as a model needs)."""
    array = np.array(convert_image(open_image(path, "image"), PIL_MODES[channels], path), dtype=np.uint8)
    return from_uint8(torch.from_numpy(array.reshape(*array.shape[:2], channels)).permute(2, 0, 1))


def read_mask(path: str | Path) -> torch.Tensor:
    """A black-and-white mask file as float ``[1, H, W]``: 1 where it is white (generate), 0 where black (keep);
    any grey is refused in one line.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "mask.png"
        >>> Image.fromarray(np.array([[0, 255]], np.uint8)).save(path)
        >>> read_mask(path).tolist()
        [[[0.0, 1.0]]]
    """
    array = np.asarray(open_image(path, "mask").convert("L"), dtype=np.uint8)
    if not np.isin(array, (0, 255)).all():
        raise LatentFMError(f"mask {path} has grey pixels: use pure black (0, keep) and white (255, generate)")
    return torch.from_numpy(array == 255).float()[None]
