"""The TAESD family of tiny autoencoders (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2) from local weight files.

One layout (Ollin Boer Bohan's madebyollin/taesd, MIT) covers the family; the variants differ only in their
latent channels and in which Blocks carry a pooling branch, and both are read from the weights themselves.
The network sees images in [0, 1] and makes latents at 1/8 resolution; this module speaks the protocol's [-1, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from latentfm.errors import LatentFMError, unpickling_refused

WIDTH = 64
ENCODER_OUT_KEY = "14.weight"  # the encoder's last conv: its out-channels are the latent channels
DECODER_IN_KEY = "1.weight"  # the decoder's first conv (index 0 is the parameter-free clamp)


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _SoftClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(x / 3.0)


class _Block(nn.Module):
    """``relu(conv(relu(conv(relu(conv(x))))) + x)``; with ``pool``, x first gains a 1x1 GroupNorm branch."""

    def __init__(self, pool: bool):
        super().__init__()
        hidden = 4 * WIDTH
        self.conv = nn.Sequential(_conv(WIDTH, WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH))
        self.pool = None
        if pool:
            self.pool = nn.Sequential(
                nn.Conv2d(WIDTH, hidden, 1, bias=False),
                nn.GroupNorm(4, hidden),
                nn.ReLU(),
                nn.Conv2d(hidden, WIDTH, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


def _encoder(latent_channels: int, pool: set[int]) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, WIDTH)]
    layers.append(_Block(len(layers) in pool))
    for _ in range(3):
        layers.append(_conv(WIDTH, WIDTH, stride=2, bias=False))
        for _ in range(3):
            layers.append(_Block(len(layers) in pool))
    layers.append(_conv(WIDTH, latent_channels))
    return nn.Sequential(*layers)


def _decoder(latent_channels: int, pool: set[int]) -> nn.Sequential:
    layers: list[nn.Module] = [_SoftClamp(), _conv(latent_channels, WIDTH), nn.ReLU()]
    for _ in range(3):
        for _ in range(3):
            layers.append(_Block(len(layers) in pool))
        layers += [nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False)]
    layers.append(_Block(len(layers) in pool))
    layers.append(_conv(WIDTH, 3))
    return nn.Sequential(*layers)


class TinyAutoencoder(nn.Module):
    """A TAESD-family autoencoder: ``encode(images in [-1, 1]) -> raw latents``, ``decode(z) -> images``.

    ``encoder_pool`` and ``decoder_pool`` are the ``nn.Sequential`` indices of the Blocks with a pooling
    branch. With ``image_channels=1`` grey images are repeated to RGB and decoded images averaged back.
    Usually built by :func:`load_tiny_autoencoder`.
    """

    downsample_factor = 8

    def __init__(
        self,
        latent_channels: int,
        encoder_pool: Iterable[int] = (),
        decoder_pool: Iterable[int] = (),
        image_channels: int = 3,
    ):
        super().__init__()
        if image_channels not in (1, 3):
            raise LatentFMError(f"a TAESD autoencoder takes 1- or 3-channel images, not {image_channels}")
        self.latent_channels = latent_channels
        self.image_channels = image_channels
        self.encoder = _encoder(latent_channels, set(encoder_pool))
        self.decoder = _decoder(latent_channels, set(decoder_pool))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 latents ``[B, latent_channels, H/8, W/8]`` of images ``[B, image_channels, H, W]`` in [-1, 1]."""
        if x.shape[1] != self.image_channels:
            raise LatentFMError(f"images have {x.shape[1]} channels but the autoencoder expects {self.image_channels}")
        x = x.float().expand(-1, 3, -1, -1)  # a no-op for RGB, grey to RGB otherwise
        return self.encoder(x * 0.5 + 0.5)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``[B, image_channels, 8h, 8w]`` in [-1, 1] of latents ``[B, latent_channels, h, w]``."""
        x = self.decoder(z.float()) * 2.0 - 1.0
        if self.image_channels == 1:
            x = x.mean(1, keepdim=True)
        return x.clamp(-1.0, 1.0)


def load_tiny_autoencoder(
    encoder_path: str | Path, decoder_path: str | Path, image_channels: int = 3
) -> TinyAutoencoder:
    """A frozen :class:`TinyAutoencoder` (eval mode, float32) from TAESD-family encoder and decoder files.

    Files are ``.pth``/``.pt`` (read with ``weights_only=True``) or ``.safetensors``. The load is strict:
    every key used, every parameter present with its shape, else a :class:`LatentFMError` naming file and key.
    """
    encoder = _read_weights(Path(encoder_path), "encoder")
    decoder = _read_weights(Path(decoder_path), "decoder")
    latent_channels = _shape(encoder, ENCODER_OUT_KEY, encoder_path, "encoder")[0]
    decoder_channels = _shape(decoder, DECODER_IN_KEY, decoder_path, "decoder")[1]
    if decoder_channels != latent_channels:
        raise LatentFMError(
            f"{decoder_path}: key {DECODER_IN_KEY!r} takes {decoder_channels} latent channels but the encoder "
            f"{encoder_path} makes {latent_channels}; use the encoder and decoder of the same TAESD variant"
        )
    model = TinyAutoencoder(latent_channels, _pool_indices(encoder), _pool_indices(decoder), image_channels)
    _load_strict(model.encoder, encoder, encoder_path)
    _load_strict(model.decoder, decoder, decoder_path)
    return model.eval().requires_grad_(False)


def _read_weights(path: Path, role: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, with errors that say which file and which config key to fix."""
    if not path.is_file():
        raise LatentFMError(
            f"TAESD {role} weights {path} not found: set autoencoder.{role} to a .pth, .pt or .safetensors file"
        )
    suffix = path.suffix.lower()
    if suffix not in (".pth", ".pt", ".safetensors"):
        raise LatentFMError(f"{path}: unknown weights format {suffix!r}; use a .pth, .pt or .safetensors file")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch, pickle and safetensors raise many types for a bad file
        reason = unpickling_refused(exc) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LatentFMError(f"{path}: cannot read TAESD {role} weights ({reason}); download the file again") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LatentFMError(f"{path}: expected a flat dict of tensors (a TAESD {role} state dict), got something else")
    return dict(state)


def _shape(state: Mapping[str, torch.Tensor], key: str, path: str | Path, role: str) -> tuple[int, ...]:
    if key not in state:
        raise LatentFMError(f"{path}: key {key!r} is missing; is this a TAESD-family {role} file?")
    return tuple(state[key].shape)


def _pool_indices(keys: Iterable[str]) -> set[int]:
    """Indices ``N`` of the keys ``N.pool.*``: the Blocks that have a pooling branch."""
    parts = (key.split(".") for key in keys)
    return {int(p[0]) for p in parts if len(p) > 2 and p[0].isdigit() and p[1] == "pool"}


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Load ``state`` into ``module`` as float32, naming the first unexpected, missing or misshapen key."""
    expected = module.state_dict()
    for key in state:
        if key not in expected:
            raise LatentFMError(f"{path}: unexpected key {key!r}; the file does not fit the TAESD-family layout")
    for key, value in expected.items():
        if key not in state:
            raise LatentFMError(f"{path}: key {key!r} is missing; the file is incomplete, download it again")
        if state[key].shape != value.shape:
            raise LatentFMError(
                f"{path}: key {key!r} has shape {list(state[key].shape)} but the network needs {list(value.shape)};"
                " check that the encoder and decoder files belong to the same TAESD variant"
            )
    module.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
