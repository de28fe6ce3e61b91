"""The upsample task: its source and condition, training, the upsample command and cascades."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from latentfm.cli import main
from latentfm.condition import Condition
from latentfm.config import load_config
from latentfm.errors import LatentFMError
from latentfm.flow.paths import cosine_alpha_bar
from latentfm.pipeline import FlowPipeline, Latents
from latentfm.tasks import TrainingBatch, UpsampleTask, build_task
from latentfm.training.trainer import Trainer

from ..conftest import TINY

UPSAMPLE = [*TINY, "task.kind=upsample", "train.steps=4", "train.sample_per_class=1"]
UPSAMPLE += ["sample.solver=euler", "sample.nfe=2"]


@pytest.fixture(scope="module")
def upsample_run(tmp_path_factory):
    """A tiny 4x4 -> 8x8 digits upsampler (DiT, no labels), with a sample grid."""
    run = tmp_path_factory.mktemp("upsample") / "run"
    Trainer(load_config(None, [*UPSAMPLE, "train.sample_every=4", f"train.out_dir={run}"])).run()
    return run


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A tiny class model of 4x4 digits: the first stage of a cascade."""
    run = tmp_path_factory.mktemp("base") / "run"
    overrides = [*TINY, "data.image_size=4", "model.patch_size=1", "train.steps=2", f"train.out_dir={run}"]
    Trainer(load_config(None, overrides)).run()
    return run


def test_source_is_the_noised_upsampled_input_and_condition_the_clean_one():
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    task = UpsampleTask(factor=2, mode="nearest")
    cond = task.training_condition(TrainingBatch(images, None, images=images), encode=lambda x: x)
    low = torch.nn.functional.avg_pool2d(images, 2)
    assert torch.equal(cond.concat, low.repeat_interleave(2, -1).repeat_interleave(2, -2))
    noise = torch.randn(3, 1, 8, 8)
    a = cosine_alpha_bar(400)
    torch.testing.assert_close(task.source(cond, noise), math.sqrt(a) * cond.concat + math.sqrt(1 - a) * noise)
    plain = UpsampleTask(noise="sigma", sigma=0.2)
    torch.testing.assert_close(plain.source(cond, noise), cond.concat + 0.2 * noise)
    latent_low = UpsampleTask(low_source="latent").training_condition(TrainingBatch(images, None), None)
    assert latent_low.concat.shape == (3, 1, 8, 8) and latent_low.labels is None


@pytest.mark.parametrize("step", [0, 250, 400, 999])
def test_source_noise_level_is_the_paths_alpha_bar_at_the_configured_step(step):
    config = load_config(None, ["task.kind=upsample", f"task.upsample_diffusion_step={step}"])
    task = build_task(config.task)
    alpha_bar = cosine_alpha_bar(step)
    assert (task.signal, task.noise) == (math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar))
    up, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    source = task.source(Condition(concat=up), noise)
    assert torch.equal(source, math.sqrt(alpha_bar) * up + math.sqrt(1 - alpha_bar) * noise)


def test_default_source_noise_level_is_unchanged():
    task = UpsampleTask()
    assert (task.signal.hex(), task.noise.hex()) == ("0x1.9bfc6f95d5fddp-1", "0x1.2ffe17e7511cdp-1")


def test_bad_upsample_settings_are_one_line():
    with pytest.raises(LatentFMError, match="upsample_factor=3"):
        UpsampleTask(factor=3)
    with pytest.raises(LatentFMError, match="upsample_mode='cubic'"):
        UpsampleTask(mode="cubic")
    with pytest.raises(LatentFMError, match="use task.upsample_low_source=image or cache"):
        UpsampleTask(mode="pixel", low_source="latent")
    assert UpsampleTask().unconditional(Condition(concat=torch.zeros(1)), 10) is None


def test_an_upsampler_trains_without_labels_and_boosts_images_reproducibly(upsample_run):
    pipe = FlowPipeline.from_checkpoint(upsample_run)
    assert pipe.num_classes == 0 and (upsample_run / "samples" / "step_00000004.png").is_file()
    low = torch.rand(5, 1, 4, 4) * 2 - 1
    images, stats = pipe.upsample(low, seed=2)
    again, _ = pipe.upsample(low, seed=2, batch_size=2)
    assert images.shape == (5, 1, 8, 8) and stats.nfe == 2
    torch.testing.assert_close(images, again)
    with pytest.raises(LatentFMError, match="this model up-samples 1x4x4 to 1x8x8"):
        pipe.upsample(torch.zeros(1, 1, 8, 8))


def test_upsample_command_reads_folders_and_sample_files(upsample_run, tmp_path, capsys):
    (tmp_path / "low").mkdir()
    for name in ("b.png", "a.png"):
        Image.fromarray(np.full((4, 4), 40 if name == "a.png" else 200, np.uint8)).save(tmp_path / "low" / name)
    args = ["upsample", "--checkpoint", str(upsample_run), "--seed", "1"]
    assert main([*args, "--input", str(tmp_path / "low"), "--out", str(tmp_path / "out")]) == 0
    out = np.load(tmp_path / "out" / "upsampled.npz")
    assert out["images"].shape == (2, 8, 8) and out["images"].dtype == np.uint8
    assert out["images"][0].mean() < out["images"][1].mean()  # a.png (dark) first: sorted file-name order
    assert (tmp_path / "out" / "upsampled.png").is_file()
    np.savez(tmp_path / "samples.npz", images=np.full((3, 4, 4), 90, np.uint8), labels=np.zeros(3))
    assert main([*args, "--input", str(tmp_path / "samples.npz"), "--out", str(tmp_path / "npz")]) == 0
    assert np.load(tmp_path / "npz" / "upsampled.npz")["images"].shape == (3, 8, 8)
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "low" / "c.png")
    assert main([*args, "--input", str(tmp_path / "low"), "--out", str(tmp_path / "bad")]) == 2
    assert "c.png is 6x6, a.png is 4x4: give low-resolution images of one size" in capsys.readouterr().err
    for name in ("a.png", "b.png"):
        (tmp_path / "low" / name).unlink()
    assert main([*args, "--input", str(tmp_path / "low"), "--out", str(tmp_path / "bad")]) == 2
    assert "this model up-samples 1x4x4 to 1x8x8" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cascade_and_latents_files(base_run, upsample_run, tmp_path, capsys):
    args = ["sample", "--checkpoint", str(base_run), "--labels", "0,1", "--n", "2", "--nfe", "2"]
    assert main([*args, "--latents", "--out", str(tmp_path / "base")]) == 0
    latents = Latents.load(tmp_path / "base" / "latents.npz")
    assert latents.values.shape == (4, 1, 4, 4)
    up = ["upsample", "--checkpoint", str(upsample_run), "--input", str(tmp_path / "base" / "latents.npz")]
    assert main([*up, "--out", str(tmp_path / "boosted")]) == 0
    boosted = np.load(tmp_path / "boosted" / "upsampled.npz")["images"]
    assert main([*args, "--upsample", str(upsample_run), "--out", str(tmp_path / "cascade")]) == 0
    stats = json.loads((tmp_path / "cascade" / "stats.json").read_text())
    assert [stage["nfe"] for stage in stats["stages"]] == [2, 2]
    cascade = np.load(tmp_path / "cascade" / "samples.npz")["images"]
    assert cascade.shape == (4, 8, 8) and np.array_equal(cascade, boosted)  # the same seed, never decoded between
    other = Latents(latents.values, latents.latent_norm, {**latents.autoencoder, "weights_sha256": "f" * 64})
    other.save(tmp_path / "other.npz")
    assert main([*up[:-1], str(tmp_path / "other.npz"), "--out", str(tmp_path / "refused")]) == 2
    assert "the latents come from another autoencoder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def digit_caches(tmp_path_factory):
    """Caches of the 8x8 digits (identity autoencoder): as they are, and down-sampled x2 (and x4)."""
    root = tmp_path_factory.mktemp("caches")
    config = root / "encode.yaml"
    config.write_text("data:\n  dataset: digits\nautoencoder:\n  kind: identity\n")
    for name, factor, *extra in (("high", "1"), ("low", "2"), ("low4", "4"), ("up", "2", "--pixel-upsample")):
        args = ["encode", "--config", str(config), "--device", "cpu", "--downsample", factor, *extra]
        assert main([*args, "--out", str(root / name)]) == 0
    return root


CACHED = [*UPSAMPLE, "autoencoder.normalize=none", "task.upsample_low_source=cache", "model.patch_size=1"]


def test_a_low_resolution_cache_holds_the_images_down_sampled_by_area(digit_caches):
    from latentfm.data import LatentCache, load_data_config

    low = LatentCache(digit_caches / "low")
    assert low.downsample == 2 and low.image_shape == (1, 4, 4) and low.latent_shape == (1, 4, 4)
    images, _ = load_data_config(load_config(None, TINY).data).batch(torch.arange(10))
    torch.testing.assert_close(low.batch(torch.arange(10))[0], torch.nn.functional.avg_pool2d(images, 2))


@pytest.mark.parametrize("mode,cache", [("bilinear", "low"), ("pixel", "up")])
def test_training_from_the_low_cache_sees_what_encoding_every_step_sees(digit_caches, tmp_path, mode, cache):
    caches = [f"data.latent_cache={digit_caches / 'high'}", f"data.low_latent_cache={digit_caches / cache}"]
    caches.append(f"task.upsample_mode={mode}")
    cached = Trainer(load_config(None, [*CACHED, *caches, f"train.out_dir={tmp_path / 'a'}"]))
    image = [*CACHED[:-2], "model.patch_size=1", "autoencoder.normalize=none", f"task.upsample_mode={mode}"]
    encoded = Trainer(load_config(None, [*image, f"train.out_dir={tmp_path / 'b'}"]))
    for trainer in (cached, encoded):
        batch = trainer.training_batch(3)
        trainer.cond = trainer.task.training_condition(batch, trainer.encode)
    assert encoded.task.low_source == "image" and cached.task.needs_images is False
    torch.testing.assert_close(cached.cond.concat, encoded.cond.concat)
    cached.run()
    assert FlowPipeline.from_checkpoint(tmp_path / "a").upsample(torch.zeros(2, 1, 4, 4))[0].shape == (2, 1, 8, 8)


def test_a_wrong_low_resolution_cache_is_one_line(digit_caches, tmp_path):
    high = f"data.latent_cache={digit_caches / 'high'}"
    cases = [
        ([*CACHED, high], "data.low_latent_cache is read only with task.kind=upsample"),
        ([*UPSAMPLE, high, f"data.low_latent_cache={digit_caches / 'low'}"], "set both or neither"),
        (
            [*CACHED, high, f"data.low_latent_cache={digit_caches / 'high'}"],
            "holds the images as loaded; encode them with --downsample F",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(LatentFMError, match=re.escape(message)):
            Trainer(load_config(None, [*overrides, f"train.out_dir={tmp_path / 'run'}"]))
    with pytest.raises(LatentFMError, match="encode it with --downsample 2 --pixel-upsample for"):
        up = [*CACHED, high, f"data.low_latent_cache={digit_caches / 'low'}", "task.upsample_mode=pixel"]
        Trainer(load_config(None, [*up, f"train.out_dir={tmp_path / 'pixel'}"])).run()
    with pytest.raises(LatentFMError, match="encode it with --downsample 2 for task.upsample_factor=2"):
        low4 = [*CACHED, high, f"data.low_latent_cache={digit_caches / 'low4'}"]
        Trainer(load_config(None, [*low4, f"train.out_dir={tmp_path / 'run'}"])).run()
    with pytest.raises(LatentFMError, match="holds other images than the training data"):
        other = [*CACHED, "data.split=test", f"data.low_latent_cache={digit_caches / 'low'}"]
        Trainer(load_config(None, [*other, f"train.out_dir={tmp_path / 'run'}"]))
