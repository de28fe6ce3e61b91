"""Latents on disk: a dataset encoded once into sharded ``.npy`` files with a JSON manifest.

Layout of a cache directory::

    manifest.json       what was encoded, by which autoencoder (weights hash), from which data (fingerprint)
    shard_00000.npy     latents [n, views, C, h, w]; view 1 is the left-right flipped image when ``hflip``
    labels.npy          int64 labels [N] (absent for unlabelled data)

Writing is resumable: each shard appears atomically, finished shards are never re-encoded, and ``torchrun``
ranks take every ``world_size``-th shard. The manifest is marked complete, with per-channel moments of all
stored latents, only when every shard exists. Training reads the shards memory-mapped.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from latentfm.atomic import write_bytes_atomic
from latentfm.autoencoders import build_autoencoder
from latentfm.autoencoders.base import Autoencoder, LatentNorm, autoencoder_identity, check_image_size
from latentfm.config import Config
from latentfm.data.images import ImageData, load_data_config
from latentfm.distributed import barrier, setup_distributed
from latentfm.errors import LatentFMError
from latentfm.seeding import derive_seed

FORMAT = "latentfm-latent-cache/1"
MANIFEST = "manifest.json"
DTYPES = {"float32": np.float32, "float16": np.float16}
# Header keys that decide what the shards contain; a cache that differs in any of them is refused.
# (The dataset's path and description may change: a moved dataset with the same fingerprint is the same data.)
IDENTITY_KEYS = (
    "format",
    "autoencoder",
    "dataset.count",
    "dataset.fingerprint",
    "hflip",
    "dtype",
    "shard_size",
    "sampling",
)


def cache_header(
    data: ImageData,
    autoencoder_identity: dict[str, Any],
    data_description: dict[str, Any],
    latent_shape: tuple[int, int, int],
    hflip: bool = False,
    dtype: str = "float32",
    shard_size: int = 4096,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The manifest of a cache before encoding: everything that identifies its contents.

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
        "dtype": dtype,
        "shard_size": shard_size,
        "sampling": sampling,
        "latent_shape": list(latent_shape),
        "image_shape": list(data.images.shape[1:]),
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "complete": False,
    }


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LatentFMError(f"latent cache manifest {path} is not valid JSON ({error}); delete the cache") from None


def _difference(saved: dict[str, Any], header: dict[str, Any]) -> str | None:
    """The first identity key in which an existing cache differs from ``header``, with both values."""
    for key in IDENTITY_KEYS:
        section, _, sub = key.partition(".")
        old, new = saved.get(section), header.get(section)
        if sub:
            old, new = (old or {}).get(sub), (new or {}).get(sub)
        if isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    return f"{key}.{name}: {old.get(name)!r} in the cache, {new.get(name)!r} now"
        elif old != new:
            return f"{key}: {old!r} in the cache, {new!r} now"
    return None


def prepare_cache(directory: str | Path, header: dict[str, Any], write: bool = True) -> bool:
    """Check ``directory`` against ``header`` and (with ``write``) create its manifest if it has none.

    Returns True when the cache is already complete. A cache made with another autoencoder, dataset or
    layout is refused with a message that names the difference.
    """
    directory = Path(directory)
    saved = _read_manifest(directory)
    if saved is None:
        if directory.is_dir() and any(directory.iterdir()):
            raise LatentFMError(f"{directory} is not empty and holds no {MANIFEST}; choose an empty or new --out")
        if write:
            directory.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(directory / MANIFEST, json.dumps(header, indent=1).encode())
        return False
    difference = _difference(saved, header)
    if difference:
        raise LatentFMError(f"latent cache {directory} was built differently ({difference}); use a new --out")
    return bool(saved.get("complete"))


def _shard_path(directory: Path, shard: int) -> Path:
    return directory / f"shard_{shard:05d}.npy"


def _shard_count(header: dict[str, Any]) -> int:
    return -(-header["dataset"]["count"] // header["shard_size"])


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(path, buffer.getvalue())


@torch.no_grad()
def encode_shards(
    directory: str | Path,
    header: dict[str, Any],
    data: ImageData,
    autoencoder: Autoencoder,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> int:
    """Encode this rank's missing shards (every ``world_size``-th, from ``rank``); returns how many it wrote.

    The global RNG is reseeded from ``(seed, shard)`` before each shard, so autoencoders that sample
    their posterior give the same cache on any number of ranks.
    """
    directory, size = Path(directory), header["shard_size"]
    todo = [s for s in range(rank, _shard_count(header), world_size) if not _shard_path(directory, s).is_file()]
    bar = tqdm(total=sum(min(size, len(data) - s * size) for s in todo), desc="encoding", disable=not progress)
    for shard in todo:
        torch.manual_seed(derive_seed(seed, shard))
        indices = torch.arange(shard * size, min((shard + 1) * size, len(data)))
        parts = []
        for chunk in indices.split(batch_size):
            images, _ = data.batch(chunk, device=device)
            views = [images, images.flip(-1)] if header["hflip"] else [images]
            parts.append(torch.stack([autoencoder.encode(v).float() for v in views], dim=1).cpu())
            bar.update(len(chunk))
        latents = torch.cat(parts).numpy().astype(DTYPES[header["dtype"]])
        if list(latents.shape[2:]) != header["latent_shape"]:
            raise LatentFMError(
                f"the autoencoder gave latents of shape {list(latents.shape[2:])}, expected {header['latent_shape']}"
            )
        _save_npy(_shard_path(directory, shard), latents)
    bar.close()
    return len(todo)


def finalize_cache(directory: str | Path, data: ImageData) -> dict[str, Any]:
    """Once every shard exists: store the labels and the latents' per-channel moments, mark complete."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    if manifest is None:
        raise LatentFMError(f"{directory} has no {MANIFEST}")
    missing = [s for s in range(_shard_count(manifest)) if not _shard_path(directory, s).is_file()]
    if missing:
        raise LatentFMError(f"latent cache {directory} misses {len(missing)} shards; rerun latentfm encode")
    if data.labels is not None:
        _save_npy(directory / "labels.npy", data.labels.numpy().astype(np.int64))
    shards = (torch.from_numpy(np.load(_shard_path(directory, s))).flatten(0, 1) for s in range(_shard_count(manifest)))
    mean, var = LatentNorm.moments(shards)
    manifest.update(complete=True, moments={"mean": mean, "var": var})
    write_bytes_atomic(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def check_cache_autoencoder(cache: LatentCache, identity: dict[str, Any]) -> None:
    """Refuse a cache encoded by another autoencoder than the one the run config builds."""
    difference = _difference({"autoencoder": cache.manifest["autoencoder"]}, {"autoencoder": identity})
    if difference:
        raise LatentFMError(
            f"latent cache {cache.directory} was encoded by another autoencoder than the config's ({difference}); "
            "point autoencoder.* at the one that made it, or encode again"
        )


def build_cache(
    config: Config,
    out: str | Path,
    hflip: bool | None = None,
    dtype: str = "float32",
    shard_size: int = 4096,
    batch_size: int = 256,
    device: str = "auto",
) -> tuple[dict[str, Any] | None, int]:
    """Encode ``config.data`` with ``config.autoencoder`` into the cache ``out`` (what ``latentfm encode`` does).

    Resumes an unfinished cache; under ``torchrun`` the ranks share the shards. Returns the finished
    manifest (on the main rank; None on the others) and the number of shards this rank encoded.
    """
    dist = setup_distributed(device)
    data = load_data_config(config.data)
    autoencoder = build_autoencoder(config.autoencoder, image_channels=data.images.shape[1]).to(dist.device)
    check_image_size(data.images.shape, autoencoder)
    with torch.no_grad():
        latent_shape = tuple(autoencoder.encode(data.batch(torch.arange(1), device=dist.device)[0]).shape[1:])
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
        data, identity, description, latent_shape, hflip, dtype, shard_size, seed, batch_size, dist.device
    )
    # The main rank creates the manifest before the others look, so no rank sees a half-made directory.
    complete = prepare_cache(out, header) if dist.is_main else False
    barrier()
    if not dist.is_main:
        complete = prepare_cache(out, header, write=False)
    if complete:
        return (_read_manifest(Path(out)) if dist.is_main else None), 0
    written = encode_shards(
        out, header, data, autoencoder, dist.device, batch_size, seed, dist.rank, dist.world_size, dist.is_main
    )
    barrier()
    return (finalize_cache(out, data) if dist.is_main else None), written


class LatentCache:
    """A complete cache opened for training: ``batch`` gathers latents from memory-mapped shards."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest = _read_manifest(self.directory)
        if manifest is None or manifest.get("format") != FORMAT:
            raise LatentFMError(f"{self.directory} is not a latent cache (no {MANIFEST} of {FORMAT})")
        if not manifest.get("complete"):
            raise LatentFMError(f"latent cache {self.directory} is incomplete; rerun latentfm encode to finish it")
        self.manifest = manifest
        self.shards = [self._open_shard(s) for s in range(_shard_count(manifest))]
        labels_file = self.directory / "labels.npy"
        self.labels = torch.from_numpy(np.load(labels_file)) if labels_file.is_file() else None
        self.num_classes, self.class_names = manifest["num_classes"], manifest["class_names"]
        self.image_shape = tuple(manifest["image_shape"])
        self.latent_shape = tuple(manifest["latent_shape"])

    def _open_shard(self, shard: int) -> np.ndarray:
        """Shard ``shard`` memory-mapped, checked against the manifest's shapes."""
        path, size, count = _shard_path(self.directory, shard), self.manifest["shard_size"], len(self)
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
    """Images encoded on the fly, with the same ``batch`` interface as LatentCache."""

    def __init__(self, data: ImageData, autoencoder: Autoencoder):
        check_image_size(data.images.shape, autoencoder)
        self.data, self.autoencoder = data, autoencoder
        self.num_classes, self.class_names = data.num_classes, data.class_names
        self.image_shape = tuple(data.images.shape[1:])

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
