"""FlowPipeline (pipeline.py): loading a checkpoint, the recipe's sampler, seeds per sample, progress per velocity
call, latents that travel between pipelines, and what it refuses. The tasks' own inputs (inpaint, maps, up-sample)
are tested in tests/tasks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentfm.config import TaskConfig, load_config
from latentfm.errors import LatentFMError
from latentfm.pipeline import FlowPipeline, Latents, recipe_sampler
from latentfm.progress import progress_bar
from latentfm.tasks import build_task
from latentfm.training.trainer import Trainer

from .conftest import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny class-conditional digits run whose recipe is Euler at 2 NFE with guidance 1.5."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    overrides = [*TINY, "train.steps=2", "sample.solver=euler", "sample.cfg=1.5", f"train.out_dir={out}"]
    Trainer(load_config(None, overrides)).run()
    return out


@pytest.fixture(scope="module")
def pipe(run):
    return FlowPipeline.from_checkpoint(run)


def test_the_recipe_is_the_default_sampler(run, pipe):
    assert pipe.sampler == recipe_sampler(run)
    assert (pipe.sampler.solver, pipe.sampler.nfe, pipe.sampler.cfg) == ("euler", 2, 1.5)
    labels = torch.tensor([0, 1, 2])
    default, stats = pipe.generate(labels, seed=4)
    explicit, _ = pipe.generate(labels, seed=4, settings=pipe.sampler)
    assert torch.equal(default, explicit) and stats.nfe == 2 and stats.network_passes == 4  # guided: 2 per call
    other, stats = pipe.generate(labels, seed=4, settings=pipe.sampler.with_(nfe=4))
    assert stats.nfe == 4 and not torch.equal(other, default)


def test_images_do_not_depend_on_the_batch_size_or_the_position(pipe):
    labels = torch.arange(10)
    whole, _ = pipe.generate(labels, seed=7, batch_size=10)
    batched, _ = pipe.generate(labels, seed=7, batch_size=3)
    torch.testing.assert_close(whole, batched, atol=1e-5, rtol=0)
    tail, _ = pipe.latents(labels[6:], seed=7, first_index=6)
    torch.testing.assert_close(pipe.latents(labels, seed=7)[0][6:], tail, atol=1e-5, rtol=0)
    assert whole.shape == (10, *pipe.image_shape) and whole.min() >= -1 - 1e-5


def test_the_progress_bar_advances_per_velocity_call(pipe, monkeypatch):
    bars = []

    def keep(*args, **kwargs):
        bars.append(progress_bar(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr("latentfm.pipeline.progress_bar", keep)
    pipe.latents(torch.arange(7), settings=pipe.sampler.with_(solver="midpoint", nfe=4), batch_size=3, progress=True)
    assert (bars[0].n, bars[0].total) == (3 * 4, 3 * 4)  # three batches of four calls each


def test_latents_round_trip_through_a_file(pipe, tmp_path):
    values, _ = pipe.latents(torch.tensor([1, 2]), seed=0)
    Latents(values, pipe.latent_norm, pipe.autoencoder_identity).save(tmp_path / "latents.npz")
    again = Latents.load(tmp_path / "latents.npz")
    torch.testing.assert_close(again.values, values)
    assert again.autoencoder == pipe.autoencoder_identity and again.latent_norm.scale == pipe.latent_norm.scale


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.generate(torch.tensor([10])), "labels must lie in 0..9"),
        (lambda p: p.generate(None, n=0), "nothing to generate"),
        (lambda p: p.generate(torch.tensor([0, 1]), inputs={"map": torch.zeros(3, 1, 8, 8)}), "3 map inputs for 2"),
    ],
)
def test_bad_calls_are_one_line(pipe, call, message):
    with pytest.raises(LatentFMError, match=message):
        call(pipe)


def test_a_flow_run_is_not_a_refiner(run, pipe):
    with pytest.raises(LatentFMError, match="is a checkpoint of kind 'flow', expected 'refiner'"):
        pipe.with_refiner(run)


def test_a_latents_file_of_something_else_is_refused(tmp_path):
    (tmp_path / "latents.npz").write_bytes(b"not an npz")
    with pytest.raises(LatentFMError, match="is not a latents.npz"):
        Latents.load(tmp_path / "latents.npz")


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    from latentfm.config import AutoencoderRunConfig
    from latentfm.training.autoencoder_trainer import AutoencoderTrainer

    from .conftest import TINY_AE

    config = load_config(None, [*TINY_AE, "train.steps=2", f"train.out_dir={tmp_path / 'ae'}"], AutoencoderRunConfig)
    AutoencoderTrainer(config).run()
    with pytest.raises(LatentFMError, match="expected 'flow'"):
        FlowPipeline.from_checkpoint(tmp_path / "ae")


def test_the_sde_sampler_draws_each_samples_noise_from_its_own_seed(pipe):
    settings = pipe.sampler.with_(solver="sde", nfe=4, noise=1.0)
    labels = torch.arange(7) % 10
    whole, stats = pipe.generate(labels, seed=3, settings=settings, batch_size=7)
    parts, _ = pipe.generate(labels, seed=3, settings=settings, batch_size=3)
    torch.testing.assert_close(whole, parts)
    euler, _ = pipe.generate(labels, seed=3, settings=settings.with_(noise=0.0))
    assert stats.nfe == 4 and not torch.allclose(whole, euler)
    again, _ = pipe.generate(labels, seed=4, settings=settings)
    assert not torch.allclose(whole, again)


def test_the_sde_sampler_is_refused_where_the_flow_does_not_start_from_noise(pipe):
    upsampler = replace(pipe, task=build_task(TaskConfig(kind="upsample")))
    with pytest.raises(LatentFMError, match="solver sde assumes the flow starts from noise"):
        upsampler.latents(n=1, settings=pipe.sampler.with_(solver="sde", noise=1.0))
