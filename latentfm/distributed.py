"""Process-group set-up for ``torchrun``: NCCL on GPU, gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from latentfm.errors import LatentFMError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the rank that writes logs, samples and checkpoints."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0, what: str = "train.device") -> torch.device:
    """``auto`` picks this rank's GPU when CUDA is available, else the CPU; ``what`` names the setting in errors
    (``train.device``, ``--device``)."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LatentFMError(f"{what} {name}: CUDA is not available here; use cpu or auto")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    try:
        return torch.device(name)
    except RuntimeError:
        raise LatentFMError(f"{what} {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def setup_distributed(device_name: str, what: str = "train.device") -> DistInfo:
    """Join the ``torchrun`` process group when WORLD_SIZE > 1; a single process otherwise (``what`` names the
    device setting in errors)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, what)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def is_main_rank() -> bool:
    """True in a single process and on rank 0 of a joined process group."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over ranks (itself in a single process)."""
    if not dist.is_initialized():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def teardown_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_ranks(value: torch.Tensor) -> torch.Tensor:
    """Every rank's ``value`` (equal shapes) concatenated along dim 0 in rank order; ``value`` itself in a
    single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, value.contiguous())
    return torch.cat(parts)
