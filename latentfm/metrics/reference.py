"""Reference statistics files (``latentfm stats``): feature mean and covariance, a sample of the features for
KID and precision/recall, the protocol they were made under and where the images came from.

A file is one ``.npz`` (no pickles): ``mu``, ``sigma``, ``features``, ``count`` and JSON strings ``protocol``
and ``source``. ``check_protocol`` refuses to compare statistics made under different protocols.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentfm.atomic import write_bytes_atomic
from latentfm.errors import LatentFMError, first_difference

FORMAT = "latentfm-stats/1"


@dataclass
class ReferenceStats:
    """Statistics of a set of real images under one protocol."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray  # at most a fixed number of features, drawn at random, for KID and precision/recall
    count: int
    protocol: dict[str, Any]
    source: dict[str, Any]

    def save(self, path: str | Path) -> None:
        """Write the statistics to ``path`` (``.npz``), atomically."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(FORMAT),
            mu=self.mu,
            sigma=self.sigma,
            features=self.features.astype(np.float32),
            count=np.array(self.count),
            protocol=np.array(json.dumps(self.protocol)),
            source=np.array(json.dumps(self.source)),
        )
        write_bytes_atomic(path, buffer.getvalue())


def load_reference(path: str | Path) -> ReferenceStats:
    """Statistics written by ``ReferenceStats.save``; other files are one clear error."""
    path = Path(path)
    if not path.is_file():
        raise LatentFMError(f"reference statistics {path} not found: make them with `latentfm stats`")
    try:
        with np.load(path, allow_pickle=False) as values:
            if "format" not in values or str(values["format"]) != FORMAT:
                raise LatentFMError(
                    f"{path} is not a latentfm statistics file ({FORMAT}): make it with `latentfm stats`, which "
                    "records the protocol (statistics of other tools do not say how their features were made)"
                )
            return ReferenceStats(
                mu=values["mu"],
                sigma=values["sigma"],
                features=values["features"],
                count=int(values["count"]),
                protocol=json.loads(str(values["protocol"])),
                source=json.loads(str(values["source"])),
            )
    except (OSError, ValueError, KeyError) as error:
        raise LatentFMError(f"cannot read reference statistics {path}: {error}") from None


def check_protocol(reference: ReferenceStats, protocol: dict[str, Any], path: str | Path) -> None:
    """Refuse ``reference`` (read from ``path``) when it was made under another protocol than ``protocol``."""
    difference = first_difference(reference.protocol, protocol)
    if difference is not None:
        raise LatentFMError(
            f"reference statistics {path} were made with {difference.key} = {difference.old!r}, this evaluation "
            f"uses {difference.new!r}: recompute them with `latentfm stats` under the same protocol"
        )
