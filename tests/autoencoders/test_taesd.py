"""The TAESD-family autoencoder: real TAEF2 weights on real Fashion-MNIST, strict loading, grey images."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from latentfm.autoencoders.taesd import TinyAutoencoder, load_tiny_autoencoder
from latentfm.errors import LatentFMError
from latentfm.metrics.reconstruction import psnr_8bit

TAEF2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "taef2"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _fashion_test_images(count: int, size: int) -> torch.Tensor:
    """The first ``count`` Fashion-MNIST test images upscaled bicubically to ``size``, RGB in [0, 1]."""
    if not FASHION.is_dir():
        pytest.skip(f"Fashion-MNIST is absent ({FASHION}): apt-get install -y dataset-fashion-mnist")
    from latentfm.data import load_dataset

    images = load_dataset("idx", None, "test").images[:count].float() / 255.0
    images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    return images.repeat(1, 3, 1, 1)


def _write(tmp_path: Path, model: TinyAutoencoder, suffix: str, edit=None, prefix: str = "tiny") -> tuple[Path, Path]:
    """Save ``model`` as encoder/decoder files (float16 like the published ones), ``edit`` applied to the encoder."""
    paths = []
    for name, part in (("encoder", model.encoder), ("decoder", model.decoder)):
        state = {k: v.half().clone() for k, v in part.state_dict().items()}
        if edit is not None and name == "encoder":
            edit(state)
        path = tmp_path / f"{prefix}_{name}{suffix}"
        save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
        paths.append(path)
    return paths[0], paths[1]


def _pooled(layers: torch.nn.Sequential) -> list[int]:
    return [i for i, layer in enumerate(layers) if getattr(layer, "pool", None) is not None]


@torch.inference_mode()
def test_taef2_round_trip_on_fashion_mnist():
    if not (TAEF2 / "taef2_encoder.pth").is_file():
        pytest.skip(f"../shared/data/taef2 is absent ({TAEF2}): the real TAEF2 weights are needed for this test")
    model = load_tiny_autoencoder(TAEF2 / "taef2_encoder.pth", TAEF2 / "taef2_decoder.pth")
    x = _fashion_test_images(64, 64) * 2.0 - 1.0
    z = model.encode(x)
    y = model.decode(z)
    assert model.latent_channels == 32 and model.downsample_factor == 8
    assert (_pooled(model.encoder), _pooled(model.decoder)) == ([11, 12, 13], [3, 4, 5])
    assert z.shape == (64, 32, 8, 8) and z.dtype == torch.float32
    assert y.shape == x.shape and y.min() >= -1.0 and y.max() <= 1.0
    assert psnr_8bit(x, y).mean() >= 29.0  # about 29.4 dB measured at 64x64 (35.7 dB at 128x128)


@pytest.mark.parametrize(("latent_channels", "encoder_pool", "decoder_pool"), [(4, {12}, {4}), (16, set(), set())])
def test_layout_is_read_from_the_weights(tmp_path, latent_channels, encoder_pool, decoder_pool):
    torch.manual_seed(0)
    source = TinyAutoencoder(latent_channels, encoder_pool, decoder_pool)
    model = load_tiny_autoencoder(*_write(tmp_path, source, ".pth"))
    assert model.latent_channels == latent_channels
    assert (_pooled(model.encoder), _pooled(model.decoder)) == (sorted(encoder_pool), sorted(decoder_pool))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, source.state_dict()[key].half().float())
    with torch.inference_mode():
        assert model.encode(torch.zeros(2, 3, 16, 16)).shape == (2, latent_channels, 2, 2)


def _drop(state):
    del state["12.conv.2.bias"]


def _misshape(state):
    state["12.conv.2.bias"] = torch.zeros(63, dtype=torch.float16)


def _extra(state):
    state["12.skip.weight"] = torch.zeros(64, 64, 1, 1, dtype=torch.float16)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize(("edit", "words"), [(_drop, "missing"), (_misshape, "shape [63]"), (_extra, "unexpected")])
def test_strict_load_names_the_key(tmp_path, suffix, edit, words):
    encoder, decoder = _write(tmp_path, TinyAutoencoder(4, {12}, {4}), suffix, edit)
    key = "12.skip.weight" if edit is _extra else "12.conv.2.bias"
    with pytest.raises(LatentFMError, match=rf"{re.escape(str(encoder))}: .*{re.escape(key)}") as info:
        load_tiny_autoencoder(encoder, decoder)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_file_errors_are_one_clear_line(tmp_path):
    encoder, decoder = _write(tmp_path, TinyAutoencoder(4), ".pth")
    with pytest.raises(LatentFMError, match=r"absent.pth not found: set autoencoder.decoder to"):
        load_tiny_autoencoder(encoder, tmp_path / "absent.pth")
    other_encoder, _ = _write(tmp_path, TinyAutoencoder(16), ".pth", prefix="other")
    with pytest.raises(LatentFMError, match="same TAESD variant"):
        load_tiny_autoencoder(other_encoder, decoder)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LatentFMError, match="broken.pth: cannot read"):
        load_tiny_autoencoder(tmp_path / "broken.pth", decoder)
    with pytest.raises(LatentFMError, match="1- or 3-channel"):
        load_tiny_autoencoder(encoder, decoder, image_channels=2)


@torch.inference_mode()
def test_grey_images_round_trip_with_one_channel(tmp_path):
    paths = _write(tmp_path, TinyAutoencoder(4, {12}, {4}), ".safetensors")
    model = load_tiny_autoencoder(*paths, image_channels=1)
    x = torch.rand(2, 1, 24, 16) * 2.0 - 1.0
    z = model.encode(x)
    y = model.decode(z)
    assert z.shape == (2, 4, 3, 2) and y.shape == (2, 1, 24, 16)
    assert y.min() >= -1.0 and y.max() <= 1.0
    torch.testing.assert_close(z, load_tiny_autoencoder(*paths).encode(x.repeat(1, 3, 1, 1)))
    with pytest.raises(LatentFMError, match="3 channels"):
        model.encode(x.repeat(1, 3, 1, 1))
