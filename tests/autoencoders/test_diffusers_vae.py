"""The diffusers AutoencoderKL adapter on a tiny randomly initialised VAE saved to disk."""

import re

import pytest
import torch

from latentfm.autoencoders.diffusers_vae import DiffusersAutoencoder, load_diffusers_autoencoder
from latentfm.errors import LatentFMError

diffusers = pytest.importorskip("diffusers", reason="the optional extra is absent: pip install 'latentfm[diffusers]'")

TINY_VAE = {
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "latent_channels": 4,
    "sample_size": 16,
    "scaling_factor": 0.5,
    "shift_factor": 0.1,
}


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A directory holding a tiny AutoencoderKL written by ``save_pretrained``."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_vae")
    diffusers.AutoencoderKL(**TINY_VAE).save_pretrained(path)
    return path


@torch.inference_mode()
def test_encode_decode_shapes_and_range(vae_dir):
    model = load_diffusers_autoencoder(vae_dir)
    x = torch.rand(2, 3, 16, 12) * 2.0 - 1.0
    z = model.encode(x)
    y = model.decode(z)
    assert (model.latent_channels, model.downsample_factor) == (4, 2)
    assert z.shape == (2, 4, 8, 6) and z.dtype == torch.float32
    assert y.shape == x.shape and y.min() >= -1.0 and y.max() <= 1.0
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@torch.inference_mode()
def test_posterior_mean_is_deterministic_and_sample_is_seeded(vae_dir):
    x = torch.rand(2, 3, 16, 16) * 2.0 - 1.0
    mean_model = load_diffusers_autoencoder(vae_dir)
    sample_model = load_diffusers_autoencoder(vae_dir, posterior="sample")
    mean = mean_model.encode(x)
    torch.testing.assert_close(mean, mean_model.encode(x), rtol=0, atol=0)
    first = sample_model.encode(x, generator=torch.Generator().manual_seed(3))
    again = sample_model.encode(x, generator=torch.Generator().manual_seed(3))
    other = sample_model.encode(x, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, mean) and not torch.allclose(first, other)


def test_pretrained_norm_follows_the_diffusers_convention(vae_dir):
    model = load_diffusers_autoencoder(vae_dir)
    norm = model.pretrained_norm()
    assert norm.shift == pytest.approx([0.1] * 4) and norm.scale == pytest.approx([0.5] * 4)
    z = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(norm.normalize(z), (z - 0.1) * 0.5)
    torch.testing.assert_close(norm.denormalize(norm.normalize(z)), z)


def test_pretrained_norm_uses_latents_mean_and_std_when_published():
    config = {**TINY_VAE, "shift_factor": None, "latents_mean": [0.0, 1.0, 2.0, 3.0], "latents_std": [1, 2, 4, 5]}
    norm = DiffusersAutoencoder(diffusers.AutoencoderKL(**config)).pretrained_norm()
    assert norm.shift == [0.0, 1.0, 2.0, 3.0] and norm.scale == pytest.approx([0.5, 0.25, 0.125, 0.1])
    config = {**TINY_VAE, "shift_factor": None}
    assert DiffusersAutoencoder(diffusers.AutoencoderKL(**config)).pretrained_norm().shift == [0.0] * 4


@torch.inference_mode()
def test_grey_images_use_the_rgb_vae(vae_dir):
    model = load_diffusers_autoencoder(vae_dir, image_channels=1)
    x = torch.rand(2, 1, 16, 16) * 2.0 - 1.0
    z = model.encode(x)
    assert z.shape == (2, 4, 8, 8) and model.decode(z).shape == (2, 1, 16, 16)
    torch.testing.assert_close(z, load_diffusers_autoencoder(vae_dir).encode(x.repeat(1, 3, 1, 1)))


def test_errors_are_one_clear_line(vae_dir, tmp_path):
    missing = tmp_path / "no_such_vae"
    with pytest.raises(LatentFMError, match=f"{re.escape(str(missing))} not found") as info:
        load_diffusers_autoencoder(missing)
    assert "\n" not in str(info.value)
    with pytest.raises(LatentFMError, match=rf"{re.escape(str(tmp_path))}.*config.json"):
        load_diffusers_autoencoder(tmp_path)
    with pytest.raises(LatentFMError, match="posterior='median'"):
        load_diffusers_autoencoder(vae_dir, posterior="median")
    with pytest.raises(LatentFMError, match="3-channel images, not 2"):
        load_diffusers_autoencoder(vae_dir, image_channels=2)


def test_flow_training_through_the_diffusers_adapter_with_its_published_norm(vae_dir, tiny_overrides, tmp_path):
    from latentfm.config import load_config
    from latentfm.pipeline import FlowPipeline
    from latentfm.training.trainer import Trainer

    ae = ["autoencoder.kind=diffusers", f"autoencoder.path={vae_dir}", "autoencoder.normalize=pretrained"]
    trainer = Trainer(load_config(None, [*tiny_overrides, *ae, "data.image_size=16", "model.patch_size=1"]))
    assert trainer.latent_shape == (4, 8, 8)
    assert trainer.latent_norm.shift == [0.1] * 4 and trainer.latent_norm.scale == [0.5] * 4
    trainer.run()
    pipe = FlowPipeline.from_checkpoint(tmp_path / "run")
    images, _ = pipe.generate(torch.arange(2), settings=pipe.sampler.with_(nfe=2))
    assert images.shape == (2, 1, 16, 16)
