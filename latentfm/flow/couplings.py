"""Couplings: which source sample each data sample of a batch is paired with.

- ``independent``: the source rows in drawing order (independent Gaussian coupling).
- ``ot``: minibatch optimal transport (Tong et al. 2023, Pooladian et al. 2023): the source rows re-ordered by
  the exact assignment that minimises the summed squared distance to the data. It is global across
  ``torchrun`` ranks: every rank gathers the whole batch's data, solves the same assignment and keeps its
  slice, so 2 ranks pair exactly as 1 process does. With class labels the assignment stays inside each class,
  so every class still starts from an unbiased Gaussian sample (the source it meets at sampling time).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from latentfm.distributed import gather_ranks
from latentfm.errors import LatentFMError

Coupling = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", slice], torch.Tensor]
"""``coupling(x0_global, x1, labels, rank_slice) -> x0``: this rank's source rows for its data ``x1``."""


def ot_permutation(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The permutation ``perm`` minimising ``sum_i |x0[perm[i]] - x1[i]|²`` (rows compared flattened)."""
    if x0.shape != x1.shape or x0.ndim < 1:
        raise LatentFMError(
            f"OT pairing needs two batches of one shape [n, ...]; got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )
    a, b = x1.detach().flatten(1).double().cpu(), x0.detach().flatten(1).double().cpu()
    cost = torch.cdist(a, b).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm).to(x0.device)


def minibatch_ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """``x0[perm]``: the rows of ``x0`` matched one to one with the rows of ``x1`` (equal shapes ``[n, ...]``)
    so that the summed squared distance is minimal. Needs no process group.

    Example:
        >>> x0 = torch.tensor([[1.0], [-1.0]])
        >>> minibatch_ot_pairing(x0, torch.tensor([[-2.0], [3.0]])).tolist()
        [[-1.0], [1.0]]
    """
    return x0[ot_permutation(x0, x1)]


def _within_classes(x0: torch.Tensor, x1: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """OT pairing solved separately among the rows of each label (rows keep their positions' class); rows that
    are all alone in their group (a condition per sample) keep their source as drawn."""
    groups = torch.unique(labels)
    if len(groups) == len(labels):
        return x0
    perm = torch.arange(len(x0), device=x0.device)
    for label in groups:
        rows = (labels == label).nonzero().flatten()
        perm[rows] = rows[ot_permutation(x0[rows], x1[rows])]
    return x0[perm]


def independent_coupling(x0: torch.Tensor, x1: torch.Tensor, labels: torch.Tensor | None, part: slice) -> torch.Tensor:
    """This rank's rows of the source as drawn."""
    return x0[part]


def ot_coupling(x0: torch.Tensor, x1: torch.Tensor, labels: torch.Tensor | None, part: slice) -> torch.Tensor:
    """This rank's rows of the source after minibatch OT over the global batch (inside each class)."""
    x1_all = gather_ranks(x1)
    if len(x1_all) != len(x0):
        raise LatentFMError(f"OT coupling: {len(x1_all)} data rows across ranks for {len(x0)} source rows")
    if labels is None:
        return minibatch_ot_pairing(x0, x1_all)[part]
    return _within_classes(x0, x1_all, gather_ranks(labels))[part]


def build_coupling(name: str) -> Coupling:
    """The coupling called ``name``: ``"independent"`` or ``"ot"``."""
    couplings = {"independent": independent_coupling, "ot": ot_coupling}
    if name not in couplings:
        raise LatentFMError(f"flow.coupling={name!r} is unknown; use 'independent' or 'ot'")
    return couplings[name]
