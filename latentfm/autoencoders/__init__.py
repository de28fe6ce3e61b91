"""Autoencoders behind one protocol; the rest of the code never branches on which one it is."""

from __future__ import annotations

import dataclasses
from typing import Any

from latentfm.autoencoders.base import Autoencoder, LatentNorm
from latentfm.autoencoders.identity import IdentityAutoencoder
from latentfm.config import AutoencoderConfig
from latentfm.errors import LatentFMError

KINDS = ("identity", "taesd", "kl", "diffusers")


def _required(spec: dict[str, Any], key: str) -> Any:
    if not spec.get(key):
        raise LatentFMError(f"autoencoder.kind={spec['kind']!r} needs autoencoder.{key}")
    return spec[key]


def build_autoencoder(spec: dict[str, Any] | AutoencoderConfig, image_channels: int = 3) -> Autoencoder:
    """The autoencoder a config block describes, in eval mode with frozen weights.

    ``spec`` is an ``AutoencoderConfig`` or a dict of its fields, e.g. ``{"kind": "identity"}``,
    ``{"kind": "taesd", "encoder": PATH, "decoder": PATH}``, ``{"kind": "kl", "checkpoint": RUN}`` or
    ``{"kind": "diffusers", "path": DIR}``; ``image_channels`` is the channel count of the images it
    will see (grayscale images are repeated to RGB for autoencoders trained on RGB).
    """
    if isinstance(spec, AutoencoderConfig):
        spec = dataclasses.asdict(spec)
    kind = spec.get("kind")
    if kind == "identity":
        return IdentityAutoencoder(image_channels)
    if kind == "taesd":
        from latentfm.autoencoders.taesd import load_tiny_autoencoder

        return load_tiny_autoencoder(_required(spec, "encoder"), _required(spec, "decoder"), image_channels)
    if kind == "kl":
        from latentfm.autoencoders.kl import load_kl_autoencoder

        return load_kl_autoencoder(_required(spec, "checkpoint"), spec.get("posterior", "mean"), image_channels)
    if kind == "diffusers":
        from latentfm.autoencoders.diffusers_vae import load_diffusers_autoencoder

        return load_diffusers_autoencoder(
            _required(spec, "path"), spec.get("subfolder"), spec.get("posterior", "mean"), image_channels
        )
    raise LatentFMError(f"autoencoder.kind={kind!r} is unknown; available: {', '.join(KINDS)}")


__all__ = ["KINDS", "Autoencoder", "IdentityAutoencoder", "LatentNorm", "build_autoencoder"]
