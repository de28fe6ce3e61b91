"""Writing a latent cache (``latentfm encode``): the manifest first, then shards, each atomically; resumable,
shared across ``torchrun`` ranks, and marked complete with the moments of all latents at the end. The layout
and the reader are in ``latentfm.data.latent_cache``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentfm.atomic import atomic_file, remove_leftovers, write_bytes_atomic
from latentfm.autoencoders import build_autoencoder
from latentfm.autoencoders.base import Autoencoder, LatentNorm, autoencoder_identity, check_image_size
from latentfm.config import Config
from latentfm.data.dataset import ImageDataset
from latentfm.data.images import load_data_config
from latentfm.data.latent_cache import (
    DTYPES,
    FORMAT,
    INDEX_FILE,
    MANIFEST,
    cache_difference,
    read_manifest,
    shard_count,
    shard_path,
)
from latentfm.data.loader import BatchRequest, read_batches
from latentfm.distributed import barrier, setup_distributed
from latentfm.errors import LatentFMError
from latentfm.image_io import area_downsample, bicubic_upsample
from latentfm.progress import progress_bar
from latentfm.seeding import derive_seed

MOMENT_ROWS = 256  # latents per step of the moments pass over the finished shards (bounded memory)


def cache_header(
    data: ImageDataset,
    autoencoder_identity: dict[str, Any],
    data_description: dict[str, Any],
    latent_shape: tuple[int, int, int],
    hflip: bool = False,
    dtype: str = "float32",
    shard_size: int = 4096,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    downsample: int = 1,
    pixel_upsample: bool = False,
) -> dict[str, Any]:
    """The manifest of a cache before encoding: everything that identifies its contents.

    ``downsample`` > 1 encodes the images down-sampled that many times by area (the upsample task's inputs);
    ``pixel_upsample`` brings them back to full size bicubically first (its pixel-mode condition).

    An autoencoder that samples its posterior makes latents that also depend on the seed, the batch size
    (one draw per call) and the device type, so those are part of the identity then.
    """
    if dtype not in DTYPES:
        raise LatentFMError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    if shard_size < 1 or batch_size < 1:
        raise LatentFMError(f"--shard-size {shard_size} and --batch-size {batch_size} must be at least 1")
    sampling = None
    if autoencoder_identity["posterior"] == "sample":
        sampling = {"seed": seed, "batch_size": batch_size, "device_type": torch.device(device).type}
    return {
        "format": FORMAT,
        "autoencoder": autoencoder_identity,
        "dataset": {**data_description, "count": len(data), "fingerprint": data.fingerprint()},
        "hflip": hflip,
        "downsample": downsample,
        "pixel_upsample": pixel_upsample,
        "dtype": dtype,
        "shard_size": shard_size,
        "sampling": sampling,
        "latent_shape": list(latent_shape),
        "image_shape": [
            data.image_shape[0],
            *(size // (1 if pixel_upsample else downsample) for size in data.image_shape[1:]),
        ],
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "complete": False,
    }


def prepare_cache(directory: str | Path, header: dict[str, Any], write: bool = True) -> bool:
    """Check ``directory`` against ``header`` and (with ``write``) create its manifest if it has none.

    Returns True when the cache is already complete. A cache made with another autoencoder, dataset or
    layout is refused with a message that names the difference.
    """
    directory = Path(directory)
    saved = read_manifest(directory)
    if saved is None:
        if directory.is_dir() and any(p.name != INDEX_FILE for p in directory.iterdir()):
            raise LatentFMError(f"{directory} is not empty and holds no {MANIFEST}; choose an empty or new --out")
        if write:
            directory.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(directory / MANIFEST, json.dumps(header, indent=1).encode())
        return False
    difference = cache_difference(saved, header)
    if difference:
        raise LatentFMError(f"latent cache {directory} was built differently ({difference}); use a new --out")
    return bool(saved.get("complete"))


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as an ``.npy`` file that appears complete or not at all (written straight from the array)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


@torch.no_grad()
def encode_shards(
    directory: str | Path,
    header: dict[str, Any],
    data: ImageDataset,
    autoencoder: Autoencoder,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[int, int]:
    """Encode this rank's missing shards (every ``world_size``-th, from ``rank``), reading only their images (with
    ``workers`` processes; memory is bounded by a shard, not the dataset); returns how many shards it wrote and
    how many unreadable files it replaced (``data.skip_corrupt``).

    The global RNG is reseeded from ``(seed, shard)`` before each shard, so autoencoders that sample
    their posterior give the same cache on any number of ranks.
    """
    directory, size = Path(directory), header["shard_size"]
    todo = [s for s in range(rank, shard_count(header), world_size) if not shard_path(directory, s).is_file()]
    chunks = {s: torch.arange(s * size, min((s + 1) * size, len(data))).split(batch_size) for s in todo}
    batches = read_batches(data, (BatchRequest(c) for s in todo for c in chunks[s]), workers, device)
    total = sum(min(size, len(data) - s * size) for s in todo)
    replaced = 0
    views = 2 if header["hflip"] else 1
    with progress_bar(total=total, desc="encoding", show=progress) as bar, contextlib.closing(batches):
        for shard in todo:
            torch.manual_seed(derive_seed(seed, shard))
            rows = min(size, len(data) - shard * size)
            latents = np.empty((rows, views, *header["latent_shape"]), DTYPES[header["dtype"]])
            done = 0
            for chunk in chunks[shard]:
                batch = next(batches)
                images = low_resolution(batch.floats(), header)
                for view, flipped in enumerate([images, images.flip(-1)][:views]):
                    latents[done : done + len(chunk), view] = _encode(autoencoder, flipped, header)
                done += len(chunk)
                replaced += batch.skipped
                bar.update(len(chunk))
            _save_npy(shard_path(directory, shard), latents)
    return len(todo), replaced


def _encode(autoencoder: Autoencoder, images: torch.Tensor, header: dict[str, Any]) -> np.ndarray:
    """Float32 latents of ``images``, checked against the cache's latent shape."""
    latents = autoencoder.encode(images).float().cpu()
    if list(latents.shape[1:]) != header["latent_shape"]:
        raise LatentFMError(
            f"the autoencoder gave latents of shape {list(latents.shape[1:])}, expected {header['latent_shape']}"
        )
    return latents.numpy()


def low_resolution(images: torch.Tensor, header: dict[str, Any]) -> torch.Tensor:
    """What a cache of this header encodes of ``images``: down-sampled by area ``downsample`` times, and with
    ``pixel_upsample`` brought back to full size bicubically (the upsample task's pixel-mode condition)."""
    factor = header.get("downsample", 1)
    low = area_downsample(images, factor)
    return bicubic_upsample(low, factor) if header.get("pixel_upsample") else low


def finalize_cache(directory: str | Path, data: ImageDataset) -> dict[str, Any]:
    """Once every shard exists: store the labels and the latents' per-channel moments, mark complete."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise LatentFMError(f"{directory} has no {MANIFEST}")
    missing = [s for s in range(shard_count(manifest)) if not shard_path(directory, s).is_file()]
    if missing:
        raise LatentFMError(f"latent cache {directory} misses {len(missing)} shards; rerun latentfm encode")
    if data.labels is not None:
        _save_npy(directory / "labels.npy", data.labels.numpy().astype(np.int64))
    mean, var = LatentNorm.moments(
        torch.from_numpy(np.array(latents[start : start + MOMENT_ROWS])).flatten(0, 1)
        for latents in (np.load(shard_path(directory, s), mmap_mode="r") for s in range(shard_count(manifest)))
        for start in range(0, len(latents), MOMENT_ROWS)
    )
    manifest.update(complete=True, moments={"mean": mean, "var": var})
    write_bytes_atomic(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def build_cache(
    config: Config,
    out: str | Path,
    hflip: bool | None = None,
    dtype: str = "float32",
    shard_size: int = 4096,
    batch_size: int = 256,
    device: str = "auto",
    downsample_factor: int = 1,
    pixel_upsample: bool = False,
) -> tuple[dict[str, Any] | None, int]:
    """Encode ``config.data`` with ``config.autoencoder`` into the cache ``out`` (what ``latentfm encode`` does);
    with ``downsample_factor`` > 1, the images down-sampled that many times by area (and, with
    ``pixel_upsample``, brought back to full size bicubically).

    Resumes an unfinished cache; under ``torchrun`` the ranks share the shards. Returns the finished
    manifest (on the main rank; None on the others) and the number of shards this rank encoded.
    """
    dist = setup_distributed(device, "--device")
    started = read_manifest(Path(out)) is not None
    data = load_data_config(config.data, index_file=Path(out) / INDEX_FILE, refuse_change=started)
    autoencoder = build_autoencoder(config.autoencoder, image_channels=data.image_shape[0]).to(dist.device)
    if downsample_factor < 1 or data.image_shape[-1] % downsample_factor:
        raise LatentFMError(
            f"--downsample {downsample_factor}: must be at least 1 and divide the images' size {data.image_shape[-1]}"
        )
    if pixel_upsample and downsample_factor == 1:
        raise LatentFMError("--pixel-upsample brings down-sampled images back up: give --downsample F too")
    resize = {"downsample": downsample_factor, "pixel_upsample": pixel_upsample}
    first = low_resolution(data.read([0]).to(dist.device).floats(), resize)
    check_image_size(first.shape, autoencoder)
    with torch.no_grad():
        latent_shape = tuple(autoencoder.encode(first).shape[1:])
    d = config.data
    description = {
        "kind": d.dataset,
        "path": d.path,
        "split": d.split,
        "image_size": d.image_size,
        "channels": d.channels,
    }
    identity = autoencoder_identity(autoencoder, config.autoencoder.kind)
    hflip = d.hflip if hflip is None else hflip
    seed = config.train.seed
    header = cache_header(
        data,
        identity,
        description,
        latent_shape,
        hflip,
        dtype,
        shard_size,
        seed,
        batch_size,
        dist.device,
        downsample_factor,
        pixel_upsample,
    )
    # The main rank creates the manifest before the others look, so no rank sees a half-made directory.
    complete = prepare_cache(out, header) if dist.is_main else False
    if dist.is_main:
        remove_leftovers(out)  # what killed shard writes left, before any rank writes again
    barrier()
    if not dist.is_main:
        complete = prepare_cache(out, header, write=False)
    if complete:
        return (read_manifest(Path(out)) if dist.is_main else None), 0
    written, replaced = encode_shards(
        out,
        header,
        data,
        autoencoder,
        dist.device,
        batch_size,
        seed,
        dist.rank,
        dist.world_size,
        dist.is_main,
        config.data.workers,
    )
    if replaced:
        print(f"rank {dist.rank}: replaced {replaced} unreadable image files by the next readable one of their class")
    barrier()
    return (finalize_cache(out, data) if dist.is_main else None), written
