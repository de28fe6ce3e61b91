"""Batches of a dataset read in ``torch.utils.data.DataLoader`` worker processes, in the order they are asked for.

The caller says which rows each batch holds (a :class:`BatchRequest`: a training step's slice of the global
batch, a chunk of a latent-cache shard); workers only decode, crop, resize and flip. What a batch holds is
therefore decided in the main process as before, and the number of workers changes how fast batches come, never
what they hold: exact resume and "N ranks train as 1 process" hold with any ``data.workers``.

A worker's ``LatentFMError`` (an unreadable image, say) stops the caller with that one line; a worker that dies
(killed, out of memory) stops it with one line too, instead of a hang.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from latentfm.data.dataset import ImageBatch, ImageDataset
from latentfm.errors import LatentFMError

MAX_WORKERS = 8
PREFETCH_BATCHES = 2  # per worker


@dataclass(frozen=True)
class BatchRequest:
    """The rows ``indices`` of a dataset, mirrored left-right where ``flips`` is true."""

    indices: torch.Tensor
    flips: torch.Tensor | None = None


@dataclass(frozen=True)
class _WorkerError:
    """A ``LatentFMError`` raised in a worker, carried back as a value so its one line survives."""

    message: str


class _Reads(Dataset):
    """A map-style dataset whose keys are ``BatchRequest``s and whose items are ``ImageBatch``es."""

    def __init__(self, data: ImageDataset):
        self.data = data

    def __getitem__(self, request: BatchRequest) -> ImageBatch | _WorkerError:
        try:
            return self.data.read(request.indices, request.flips)
        except LatentFMError as error:
            return _WorkerError(str(error))


def default_workers(data: ImageDataset) -> int:
    """Worker processes for ``data`` when ``data.workers`` is unset: none for data in memory (nothing to decode),
    else the cores this process may use, shared by the ranks on this machine, less one for the main process
    (at least 1, at most ``MAX_WORKERS``).

    >>> from latentfm.data.dataset import ImageData
    >>> default_workers(ImageData(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), None, 0, []))
    0
    """
    if data.in_memory:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(MAX_WORKERS, cores // ranks_here - 1))


def read_batches(
    data: ImageDataset,
    requests: Iterable[BatchRequest],
    workers: int | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[ImageBatch]:
    """The batches of ``requests`` in order, on ``device``: read by ``workers`` processes (``default_workers`` when
    None; 0 reads in this process), each holding at most ``PREFETCH_BATCHES`` batches ahead, pinned for CUDA.

    >>> from latentfm.data.dataset import ImageData
    >>> data = ImageData(torch.arange(8, dtype=torch.uint8).view(4, 1, 1, 2), None, 0, [])
    >>> [b.images.flatten().tolist() for b in read_batches(data, [BatchRequest(torch.tensor([2, 0]))], workers=1)]
    [[4, 5, 0, 1]]
    """
    workers = default_workers(data) if workers is None else workers
    device = torch.device(device)
    if workers == 0:
        for request in requests:
            yield data.read(request.indices, request.flips).to(device)
        return
    loader = DataLoader(
        _Reads(data),
        batch_size=None,
        sampler=requests,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=PREFETCH_BATCHES,
        generator=torch.Generator(),  # workers draw nothing; leave the global RNG (posterior samples) untouched
    )
    batches = iter(loader)
    try:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as error:
                if "DataLoader worker" not in str(error):
                    raise
                raise LatentFMError(
                    f"a data loader worker died ({str(error).splitlines()[0].rstrip('. ')}): rerun with data.workers=0 "
                    "to read in the main process and see why, or lower data.workers if memory ran out"
                ) from None
            if isinstance(batch, _WorkerError):
                raise LatentFMError(batch.message)
            yield batch.to(device)
    finally:
        del batches  # stops the workers now, not when the garbage collector comes by
