"""Deterministic seeds derived from one user seed, so that any step or sample can be reproduced alone."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (e.g. ``(seed, step, rank)``)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(device: torch.device | str, *keys: int) -> torch.Generator:
    """A torch generator on ``device`` seeded from ``keys``."""
    return torch.Generator(device=device).manual_seed(derive_seed(*keys))


def source_noise(seed: int, indices: range | list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal source samples, sample ``i`` drawn from its own seed ``(seed, i)`` on the CPU.

    The same index gives the same noise however the samples are batched or sharded across ranks.
    """
    return torch.stack([torch.randn(shape, generator=generator("cpu", seed, i)) for i in indices])
