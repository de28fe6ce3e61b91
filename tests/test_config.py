"""Config loading: YAML + dotted overrides, unknown keys and wrong types named."""

import pytest
import torch

from latentfm.config import config_to_dict, load_config, recipe_path
from latentfm.errors import LatentFMError
from latentfm.models.build import build_model
from latentfm.tasks import build_task


def test_defaults_and_overrides():
    config = load_config(None, ["train.steps=7", "optim.lr=3e-4", "optim.betas=[0.9, 0.95]", "data.path=/x"])
    assert config.train.steps == 7 and config.optim.lr == 3e-4 and config.optim.betas == (0.9, 0.95)
    assert config.data.path == "/x" and config.model.size is None


def test_yaml_file_and_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  size: DiT-S/2\ntrain:\n  batch_size: 64\n")
    config = load_config(path, ["model.size=null"])
    assert config.train.batch_size == 64 and config.model.size is None
    assert load_config(None).train.batch_size == 128
    assert config_to_dict(config)["optim"]["betas"] == [0.9, 0.999]


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.stepz=3", "unknown config key train.stepz"),
        ("train.steps=many", "train.steps: expected int"),
        ("train.steps=2.5", "train.steps: expected int"),
        ("train.compile=maybe", "train.compile: expected bool"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("nosection.x=1", "unknown config key nosection"),
        ("train=3", "train"),
        ("steps", "key=value"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(LatentFMError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(LatentFMError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(LatentFMError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(LatentFMError, match="mapping"):
        load_config(scalar)


RECIPES = ["digits", "fashion_mnist", "fashion_mnist_latent", "imagenet256_dit_b2", "imagenet256_unet_adm"]
RECIPES += ["fashion_mnist_inpaint", "fashion_mnist_semantic", "celeba_hq256_inpaint", "celeba_hq256_semantic"]
RECIPES += ["fashion_mnist_upsample", "fashion_mnist_taef2_upsample", "boost_sdvae_256_1024"]
RECIPES += ["fashion_mnist_refiner", "digits_refiner"]


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_load(name):
    assert load_config(recipe_path(name)).train.steps > 0


@pytest.mark.parametrize("name", ["celeba_hq256_inpaint", "celeba_hq256_semantic"])
def test_gpu_task_recipes_build_their_models_at_lfm_input_widths(name):
    """The 9-channel (inpaint) and 8-channel (semantic) LFM inputs on 32x32x4 SD-VAE latents of 256² images."""
    config = load_config(recipe_path(name))
    task = build_task(config.task)
    inputs = task.model_inputs((4, 32, 32), (3, 256, 256))
    with torch.device("meta"):
        model = build_model(config.model, 4, 32, 0, **inputs)
    assert 4 + model.concat_channels == (9 if name.endswith("inpaint") else 8)
    if name.endswith("semantic"):
        assert model.concat_encoder(torch.zeros(1, 19, 256, 256, device="meta")).shape == (1, 4, 32, 32)


def test_the_boosting_gpu_recipe_builds_the_papers_eight_channel_unet_on_128_latents():
    """fm-boosting's UNet sees x_t and the up-sampled latent: 4 + 4 channels at 128², 256² images up x4."""
    config = load_config(recipe_path("boost_sdvae_256_1024"))
    task = build_task(config.task)
    with torch.device("meta"):
        model = build_model(config.model, 4, 128, 0, **task.model_inputs((4, 128, 128), (3, 1024, 1024)))
    assert model.concat_channels == 4 and task.factor == 4 and task.mode == "pixel"


def test_autoencoder_recipe_loads_with_its_list_field():
    from latentfm.config import AutoencoderRunConfig

    config = load_config(
        recipe_path("fashion_mnist_autoencoder"), ["model.channel_mult=[1,2,2,2]"], AutoencoderRunConfig
    )
    assert config.model.channel_mult == [1, 2, 2, 2] and config.model.latent_channels == 4
    with pytest.raises(LatentFMError, match=r"model.channel_mult\[1\]: expected int"):
        load_config(recipe_path("fashion_mnist_autoencoder"), ["model.channel_mult=[1,two]"], AutoencoderRunConfig)
