"""Autoencoders behind one protocol; the rest of the code never branches on which one it is."""

from __future__ import annotations

from typing import Any

from latentfm.autoencoders.base import Autoencoder, LatentNorm
from latentfm.autoencoders.identity import IdentityAutoencoder
from latentfm.errors import LatentFMError


def build_autoencoder(spec: dict[str, Any], image_channels: int = 3) -> Autoencoder:
    """The autoencoder a config block describes, e.g. ``{"kind": "identity"}``.

    ``image_channels`` is the channel count of the images it will see (used by the identity).
    """
    kind = spec.get("kind")
    if kind == "identity":
        return IdentityAutoencoder(image_channels)
    raise LatentFMError(f"autoencoder.kind={kind!r} is unknown; available: 'identity'")


__all__ = ["Autoencoder", "IdentityAutoencoder", "LatentNorm", "build_autoencoder"]
