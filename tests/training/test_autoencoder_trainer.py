"""The KL autoencoder and its trainer: shapes, posterior, exact resume with the GAN term, DDP, loading."""

import pytest
import torch

from latentfm import checkpoint as ckpt
from latentfm.autoencoders import build_autoencoder
from latentfm.autoencoders.kl import KLAutoencoder, kl_divergence
from latentfm.cli import main
from latentfm.config import AutoencoderRunConfig, KLModelConfig, config_to_dict, load_config
from latentfm.errors import LatentFMError
from latentfm.training.autoencoder_trainer import AutoencoderTrainer

from ..conftest import TINY_AE, assert_same_tensors, run_torchrun, weights


def tiny_ae_config(run_dir, *extra):
    return load_config(None, [*TINY_AE, f"train.out_dir={run_dir}", *extra], cls=AutoencoderRunConfig)


@pytest.mark.parametrize("mult, factor", [([1], 1), ([1, 2], 2), ([1, 2, 2], 4), ([1, 1, 2, 2], 8)])
def test_kl_autoencoder_shapes_follow_the_channel_multipliers(mult, factor):
    model = KLAutoencoder(3, KLModelConfig(channels=8, channel_mult=mult, groups=4, latent_channels=3))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = model.encode(x)
    assert model.downsample_factor == factor and z.shape == (2, 3, 16 // factor, 16 // factor)
    y = model.decode(z)
    assert y.shape == x.shape and y.abs().max() <= 1.0


def test_posterior_mean_is_deterministic_and_sampling_is_seeded():
    model = KLAutoencoder(1, KLModelConfig(channels=8, channel_mult=[1, 2], groups=4))
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(model.encode(x), model.encode(x))
    model.posterior = "sample"
    first = model.encode(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, model.encode(x, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(first, model.posterior_params(x)[0])


def test_kl_divergence_closed_form():
    mean, logvar = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = 0.5 * torch.tensor([1.0, torch.e**2 - 1 - 2]).mean()
    torch.testing.assert_close(kl_divergence(mean, logvar), expected)


def test_interrupted_gan_run_resumes_to_identical_weights(tmp_path):
    extra = ["loss.gan_weight=0.1", "loss.gan_start=2", "loss.disc_channels=8", "loss.l2_weight=1.0"]
    AutoencoderTrainer(tiny_ae_config(tmp_path / "straight", *extra)).run()
    AutoencoderTrainer(tiny_ae_config(tmp_path / "split", *extra)).run(until_step=3)
    resumed = AutoencoderTrainer(tiny_ae_config(tmp_path / "split", *extra))
    assert resumed.step == 3
    resumed.run()
    for name in ("model", "ema", "optimizer", "disc", "disc_optimizer"):
        assert_same_tensors(weights(tmp_path / "straight", name), weights(tmp_path / "split", name))
    log = (tmp_path / "straight" / "metrics.jsonl").read_text()
    assert '"discriminator"' in log and '"generator"' in log and '"kl"' in log


def test_loaded_autoencoder_is_the_ema_of_the_run(tmp_path):
    trainer = AutoencoderTrainer(tiny_ae_config(tmp_path / "run"))
    trainer.run()
    autoencoder = build_autoencoder({"kind": "kl", "checkpoint": str(tmp_path / "run")}, image_channels=1)
    x = trainer.data.batch(torch.arange(4))[0]
    assert torch.equal(autoencoder.encode(x), trainer.ema.model.encode(x))
    assert not any(p.requires_grad for p in autoencoder.parameters())
    assert trainer.save_samples().is_file()
    with pytest.raises(LatentFMError, match="data.channels=1"):
        build_autoencoder({"kind": "kl", "checkpoint": str(tmp_path / "run")}, image_channels=3)


def test_flow_checkpoint_is_not_an_autoencoder(tmp_path, tiny_overrides):
    from latentfm.training.trainer import Trainer

    Trainer(load_config(None, [*tiny_overrides, "train.steps=1"])).run()
    with pytest.raises(LatentFMError, match="of kind 'flow', expected 'autoencoder'"):
        build_autoencoder({"kind": "kl", "checkpoint": str(tmp_path / "run")}, image_channels=1)


def write_kl_checkpoint(run, kind="autoencoder", ema=None):
    """A one-step checkpoint of a tiny KL autoencoder, written by ``checkpoint.py`` without training."""
    config = tiny_ae_config(run)
    model = KLAutoencoder(1, config.model)
    weights = {"model": model.state_dict(), "ema": model.state_dict() if ema is None else ema}
    shapes = ckpt.DataShapes(image_shape=[1, 8, 8], latent_shape=[2, 4, 4])
    state = ckpt.CheckpointState(kind=kind, step=1, config=config_to_dict(config), data=shapes)
    directory = run / "checkpoints" / "step_00000001"
    ckpt.save_checkpoint(directory, weights, {}, state)
    return directory, model


def refusal(load):
    """The one-line message ``load()`` is refused with."""
    with pytest.raises(LatentFMError) as error:
        load()
    assert "\n" not in str(error.value)
    return str(error.value)


def load_kl(path):
    return lambda: build_autoencoder({"kind": "kl", "checkpoint": str(path)}, image_channels=1)


def test_kl_autoencoder_loads_through_checkpoint_py(tmp_path):
    directory, model = write_kl_checkpoint(tmp_path / "run")
    for path in (tmp_path / "run", directory):
        assert_same_tensors(load_kl(path)().state_dict(), model.state_dict())


def test_kl_autoencoder_refusals_are_checkpoint_py_refusals(tmp_path):
    refiner, _ = write_kl_checkpoint(tmp_path / "refiner", kind="refiner")
    message = refusal(load_kl(refiner))
    assert message == refusal(lambda: ckpt.read_state(refiner, "autoencoder")) and "expected 'autoencoder'" in message

    truncated, _ = write_kl_checkpoint(tmp_path / "truncated")
    ema = truncated / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:-8])
    message = refusal(load_kl(tmp_path / "truncated"))
    assert message == refusal(lambda: ckpt.resolve_checkpoint(tmp_path / "truncated")) and "bytes" in message

    other = KLAutoencoder(1, KLModelConfig(channels=8, channel_mult=[1, 2], groups=4, latent_channels=3))
    altered, model = write_kl_checkpoint(tmp_path / "altered", ema=other.state_dict())
    message = refusal(load_kl(altered))
    assert message == refusal(lambda: ckpt.load_weights(model, altered, "ema")) and "altered" in message


def test_image_size_must_divide_by_the_factor(tmp_path):
    with pytest.raises(LatentFMError, match="downsampling factor 4"):
        AutoencoderTrainer(tiny_ae_config(tmp_path / "run", "model.channel_mult=[1,2,2]", "data.image_size=10"))


def test_cli_trains_and_reports_test_psnr(tmp_path, capsys):
    run, config = tmp_path / "run", tmp_path / "empty.yaml"
    config.write_text("")
    assert main(["train-autoencoder", "--config", str(config), *TINY_AE, f"train.out_dir={run}", "train.steps=2"]) == 0
    assert "test PSNR (8-bit, EMA weights, 297 images)" in capsys.readouterr().out
    assert (run / "eval.json").is_file() and ckpt.list_checkpoints(run)
    assert main(["train-autoencoder", "--config", str(config), "model.channel_mult=[1,x]"]) == 2


def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun with 2 gloo ranks at batch 8 each equals one process at batch 16, GAN term included."""
    gan = ["loss.gan_weight=0.1", "loss.gan_start=1", "loss.disc_channels=8"]
    AutoencoderTrainer(tiny_ae_config(tmp_path / "one", "train.steps=3", *gan)).run()
    config = tmp_path / "empty.yaml"
    config.write_text("")
    command = ["train-autoencoder", "--config", str(config), "--eval-split", "none", *TINY_AE]
    result = run_torchrun(*command, f"train.out_dir={tmp_path / 'two'}", "train.steps=3", *gan)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("model", "disc"):
        assert_same_tensors(weights(tmp_path / "one", name), weights(tmp_path / "two", name), exact=False)


def test_psnr_known_answers():
    from latentfm.metrics.reconstruction import psnr_8bit

    images = torch.full((2, 1, 4, 4), -1.0)  # 8-bit level 0
    one_level = images + 2.0 / 255  # level 1 everywhere
    torch.testing.assert_close(
        psnr_8bit(images, one_level), torch.full((2,), 20 * torch.log10(torch.tensor(255.0))).double()
    )
    assert (psnr_8bit(images, images) > 100).all()


def test_bad_autoencoder_shapes_are_one_line_errors():
    with pytest.raises(LatentFMError, match="model.groups=8"):
        KLAutoencoder(1, KLModelConfig(channels=12, channel_mult=[1, 2]))
    with pytest.raises(LatentFMError, match="one positive multiplier"):
        KLAutoencoder(1, KLModelConfig(channel_mult=[]))
    with pytest.raises(LatentFMError, match="model.groups=0"):
        KLAutoencoder(1, KLModelConfig(groups=0))
