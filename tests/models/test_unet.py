"""Tests of the ADM UNet backbone: published sizes, zero init, conditioning, checkpointing, config and training."""

from __future__ import annotations

import pytest
import torch

from latentfm.config import load_config, recipe_path
from latentfm.errors import LatentFMError
from latentfm.models import Condition
from latentfm.models.build import MODEL_SIZES, UNET_SIZES, build_model
from latentfm.models.unet import UNet
from latentfm.pipeline import FlowPipeline
from latentfm.training.trainer import Trainer

from ..conftest import TINY
from .test_dit import inputs, perturb

SMALL = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,))

# ADM: Dhariwal & Nichol 2021, Table 11 (class-conditional ImageNet, learned variance). LFM: the count of
# VinAIResearch/LFM's own model code for its commands (ImageNet: +1,024 here for the null-label row).
PUBLISHED = {
    "ADM-64": (dict(in_channels=3, image_size=64, num_classes=1000, learn_sigma=True), 296e6, 0.005),
    "ADM-256": (dict(in_channels=3, image_size=256, num_classes=1000, learn_sigma=True), 554e6, 0.005),
    "LFM-ADM-256": (dict(in_channels=4, image_size=32, num_classes=1000), 407_420_420, 1e-5),
    "LFM-ADM-CelebA-256": (dict(in_channels=4, image_size=32), 153_099_524, 0),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name: str) -> None:
    kwargs, published, tolerance = PUBLISHED[name]
    with torch.device("meta"):
        model = UNet(**UNET_SIZES[name], **kwargs)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / published - 1) <= tolerance, count


def test_forward_shape_and_zero_output_at_init() -> None:
    model = UNet(in_channels=3, image_size=8, num_classes=5, **SMALL)
    x, t = inputs(2, 3, 8)
    v = model(x, t, Condition(labels=torch.tensor([0, 5])))
    assert v.shape == x.shape and torch.equal(v, torch.zeros_like(v))


def test_labels_and_time_change_the_output() -> None:
    model = UNet(in_channels=1, image_size=8, num_classes=3, **SMALL)
    perturb(model)
    x, t = inputs(2, 1, 8)
    v = model(x, t, Condition(labels=torch.tensor([0, 0])))
    assert not torch.allclose(v, model(x, t, Condition(labels=torch.tensor([1, 1]))))
    assert not torch.allclose(v, model(x, t.flip(0), Condition(labels=torch.tensor([0, 0]))))
    null = model(x, t, Condition(labels=torch.tensor([3, 3])))
    assert torch.equal(null, model(x, t))  # no labels means the null label


def test_concat_channels_start_at_zero_and_are_validated() -> None:
    model = UNet(in_channels=2, image_size=8, concat_channels=3, **SMALL)
    perturb(model)
    torch.nn.init.zeros_(model.concat_conv.weight)
    torch.nn.init.zeros_(model.concat_conv.bias)
    x, t = inputs(2, 2, 8)
    a = model(x, t, Condition(concat=torch.randn(2, 3, 8, 8)))
    assert torch.equal(a, model(x, t, Condition(concat=torch.randn(2, 3, 8, 8))))
    fresh = UNet(in_channels=2, image_size=8, concat_channels=3, **SMALL)
    assert fresh.concat_conv.weight.abs().sum() == 0
    with pytest.raises(LatentFMError, match="cond.concat is missing"):
        model(x, t)
    with pytest.raises(LatentFMError, match="cond.concat has shape"):
        model(x, t, Condition(concat=torch.randn(2, 1, 8, 8)))


def test_resblock_updown_and_learn_sigma() -> None:
    model = UNet(in_channels=2, image_size=8, resblock_updown=True, learn_sigma=True, **SMALL)
    perturb(model)
    x, t = inputs(3, 2, 8)
    assert model.out_conv.out_channels == 4 and model(x, t).shape == x.shape


def test_gradient_checkpointing_and_channels_last_give_the_same_result() -> None:
    torch.manual_seed(0)
    plain = UNet(in_channels=1, image_size=8, num_classes=2, class_dropout=0.0, **SMALL)
    perturb(plain)
    x, t = inputs(2, 1, 8)
    for variant in (dict(grad_checkpointing=True), dict(channels_last=True)):
        other = UNet(in_channels=1, image_size=8, num_classes=2, class_dropout=0.0, **SMALL, **variant)
        other.load_state_dict(plain.state_dict())
        grads = []
        for model in (plain, other):
            model.zero_grad()
            model(x, t, Condition(labels=torch.tensor([0, 1]))).square().sum().backward()
            grads.append(model.input_conv.weight.grad.clone())
        torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_shape_errors_name_the_setting() -> None:
    with pytest.raises(LatentFMError, match="divisible by 2\\*\\*\\(len\\(channel_mult\\)-1\\)"):
        UNet(in_channels=1, image_size=28, model_channels=32, channel_mult=(1, 2, 2, 2))
    with pytest.raises(LatentFMError, match="norm_groups"):
        UNet(in_channels=1, image_size=8, model_channels=48, channel_mult=(1,))
    model = UNet(in_channels=1, image_size=8, **SMALL)
    with pytest.raises(LatentFMError, match="x has shape"):
        model(torch.randn(2, 1, 4, 4), torch.rand(2))
    with pytest.raises(LatentFMError, match="num_classes=0"):
        model(torch.randn(2, 1, 8, 8), torch.rand(2), Condition(labels=torch.tensor([0, 1])))


def test_config_selects_the_architecture_and_named_sizes() -> None:
    config = load_config(recipe_path("fashion_mnist"))
    model = build_model(config.model, 1, 28, 10)
    assert isinstance(model, UNet) and model.num_classes == 10
    config = load_config(None, ["model.arch=unet", "model.size=UNet-XS"])
    assert isinstance(build_model(config.model, 1, 28, 10), UNet)
    assert "DiT-XL/2" in MODEL_SIZES and "ADM-256" in MODEL_SIZES
    with pytest.raises(LatentFMError, match="set model.arch=dit"):
        build_model(load_config(None, ["model.arch=unet", "model.size=DiT-S/2"]).model, 4, 32, 0)
    with pytest.raises(LatentFMError, match="model.arch='mlp' is unknown"):
        build_model(load_config(None, ["model.arch=mlp"]).model, 4, 32, 0)
    with pytest.raises(LatentFMError, match="model.size='ADM-9'"):
        build_model(load_config(None, ["model.arch=unet", "model.size=ADM-9"]).model, 4, 32, 0)


def test_unet_trains_resumes_and_samples(tmp_path) -> None:
    unet = [
        "model.arch=unet",
        "model.model_channels=32",
        "model.channel_mult=[1,2]",
        "model.num_res_blocks=1",
        "model.attention_resolutions=[4]",
        "autoencoder.normalize=none",
    ]
    config = load_config(None, [*TINY, *unet, f"train.out_dir={tmp_path / 'run'}", "train.steps=4"])
    Trainer(config).run(until_step=2)
    Trainer(config).run()
    pipe = FlowPipeline.from_checkpoint(tmp_path / "run")
    assert isinstance(pipe.model, UNet) and pipe.latent_norm.scale == [1.0]
    euler = pipe.sampler.with_(solver="euler", nfe=2, cfg=2.0)
    images, stats = pipe.generate(torch.tensor([0, 9]), seed=0, settings=euler)
    assert images.shape == (2, 1, 8, 8) and stats.nfe == 2 and images.abs().sum() > 0


def test_gpu_recipe_builds_lfm_imagenet_adm() -> None:
    config = load_config(recipe_path("imagenet256_unet_adm"))
    with torch.device("meta"):
        model = build_model(config.model, 4, 32, 1000)
    assert sum(p.numel() for p in model.parameters()) == 407_420_420 + 1024  # + the null label's row


def test_docstring_examples_run() -> None:
    import doctest

    import latentfm.models.build
    import latentfm.models.unet

    for module in (latentfm.models.unet, latentfm.models.build):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_label_table_starts_at_unit_scale_like_adm():
    torch.manual_seed(0)
    model = UNet(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2), num_classes=10)
    std = float(model.y_embedder.embedding_table.weight.detach().std())
    assert 0.9 < std < 1.1  # N(0, 1), not DiT's N(0, 0.02²)
