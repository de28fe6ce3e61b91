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


def step_noise(seed: int, indices: range | list[int], step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The fresh standard normal noise of a stochastic sampler's ``step`` for samples ``indices``, each from its
    own seed ``(seed, i, 1, step)`` on the CPU: like ``source_noise``, independent of batching and ranks.

    Example:
        >>> together = step_noise(0, range(4), 2, (3,))
        >>> bool((together[2:] == step_noise(0, [2, 3], 2, (3,))).all())
        True
    """
    return torch.stack([torch.randn(shape, generator=generator("cpu", seed, i, 1, step)) for i in indices])
