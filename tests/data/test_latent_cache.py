"""The latent cache: contents equal direct encoding, resume, refusal of other autoencoders or data,
sharding across ranks, and flow training that reads it."""

import json
import os

import numpy as np
import pytest
import torch

from latentfm.autoencoders import LatentNorm, build_autoencoder
from latentfm.autoencoders.base import autoencoder_identity, latent_norm_for
from latentfm.cli import main
from latentfm.config import AutoencoderRunConfig, load_config
from latentfm.data import LatentCache, load_dataset
from latentfm.data import latent_cache_writer as cache
from latentfm.errors import LatentFMError
from latentfm.pipeline import FlowPipeline
from latentfm.training.autoencoder_trainer import AutoencoderTrainer
from latentfm.training.trainer import Trainer

from ..conftest import TINY, TINY_AE, run_torchrun


@pytest.fixture(scope="module")
def kl_run(tmp_path_factory):
    """A KL autoencoder trained for two steps on digits (factor 2, 2 latent channels)."""
    run = tmp_path_factory.mktemp("kl") / "run"
    config = load_config(None, [*TINY_AE, f"train.out_dir={run}", "train.steps=2"], cls=AutoencoderRunConfig)
    AutoencoderTrainer(config).run()
    return run


@pytest.fixture
def encode_config(tmp_path, kl_run):
    path = tmp_path / "encode.yaml"
    path.write_text(f"data:\n  dataset: digits\nautoencoder:\n  kind: kl\n  checkpoint: {kl_run}\n")
    return path


def _encode(config, out, *extra):
    return main(["encode", "--config", str(config), "--out", str(out), "--device", "cpu", *extra])


def test_cache_holds_exactly_the_encoded_images_and_flips(tmp_path, encode_config, kl_run):
    out = tmp_path / "cache"
    assert _encode(encode_config, out, "--hflip", "--shard-size", "400") == 0
    opened = LatentCache(out)
    data = load_dataset("digits")
    autoencoder = build_autoencoder({"kind": "kl", "checkpoint": str(kl_run)}, image_channels=1)
    indices, flips = torch.tensor([0, 399, 400, 1499, 7]), torch.tensor([False, True, False, True, True])
    latents, labels = opened.batch(indices, flips)
    images, expected_labels = data.batch(indices, flips)
    torch.testing.assert_close(latents, autoencoder.encode(images), atol=1e-5, rtol=1e-5)
    assert torch.equal(labels, expected_labels)
    assert len(opened) == 1500 and opened.latent_shape == (2, 4, 4) and len(opened.shards) == 4
    everything = torch.cat([torch.from_numpy(np.array(s)).flatten(0, 1) for s in opened.shards]).double()
    per_channel = everything.transpose(0, 1).flatten(1)
    assert everything.shape[0] == 3000  # both views of every image
    np.testing.assert_allclose(opened.moments()[0], per_channel.mean(1).numpy(), rtol=1e-9)
    np.testing.assert_allclose(opened.moments()[1], per_channel.var(1, unbiased=False).numpy(), rtol=1e-7)


def test_interrupted_cache_resumes_without_re_encoding(tmp_path, encode_config):
    out = tmp_path / "cache"
    assert _encode(encode_config, out, "--shard-size", "500") == 0
    finished = {p.name: p.read_bytes() for p in out.glob("shard_*.npy")}
    (out / "shard_00001.npy").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    stamp = os.stat(out / "shard_00000.npy").st_mtime_ns
    with pytest.raises(LatentFMError, match="incomplete"):
        LatentCache(out)
    assert _encode(encode_config, out, "--shard-size", "500") == 0
    assert os.stat(out / "shard_00000.npy").st_mtime_ns == stamp  # not rewritten
    assert {p.name: p.read_bytes() for p in out.glob("shard_*.npy")} == finished
    assert LatentCache(out).manifest["complete"]


def test_cache_of_another_autoencoder_or_dataset_is_refused(tmp_path, encode_config, capsys):
    out = tmp_path / "cache"
    assert _encode(encode_config, out) == 0
    assert _encode(encode_config, out, "data.split=test") == 2
    assert "dataset.count: 1500 in the cache, 297 now" in capsys.readouterr().err
    identity = tmp_path / "identity.yaml"
    identity.write_text("data:\n  dataset: digits\nautoencoder:\n  kind: identity\n")
    assert _encode(identity, out) == 2
    assert "autoencoder.downsample_factor" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert _encode(encode_config, tmp_path / "other") == 2
    assert "not empty" in capsys.readouterr().err


def test_ranks_share_the_shards(tmp_path, kl_run):
    """Sampled posteriors too: each shard reseeds from (seed, shard), whichever rank encodes it."""
    data = load_dataset("digits")
    spec = {"kind": "kl", "checkpoint": str(kl_run), "posterior": "sample"}
    autoencoder = build_autoencoder(spec, image_channels=1)
    identity = autoencoder_identity(autoencoder, "kl")
    header = cache.cache_header(data, identity, {"kind": "digits"}, (2, 4, 4), shard_size=300)
    outputs = {}
    for world in (1, 2):
        out = tmp_path / f"world{world}"
        cache.prepare_cache(out, header)
        written = [cache.encode_shards(out, header, data, autoencoder, rank=r, world_size=world) for r in range(world)]
        assert written == ([(5, 0)] if world == 1 else [(3, 0), (2, 0)])
        cache.finalize_cache(out, data)
        outputs[world] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert outputs[1] == outputs[2]


def test_torchrun_encodes_with_two_ranks(tmp_path, encode_config):
    encode_config.write_text(encode_config.read_text() + "  posterior: sample\n")
    options = ["--out", str(tmp_path / "two"), "--device", "cpu", "--shard-size", "400"]
    result = run_torchrun("encode", "--config", str(encode_config), *options)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _encode(encode_config, tmp_path / "one", "--shard-size", "400") == 0
    for name in ("manifest.json", "labels.npy", *(f"shard_{i:05d}.npy" for i in range(4))):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_flow_training_reads_the_cache(tmp_path, encode_config, kl_run):
    out = tmp_path / "cache"
    assert _encode(encode_config, out, "--hflip") == 0
    common = [*TINY, "autoencoder.kind=kl", f"autoencoder.checkpoint={kl_run}", "data.hflip=true", "train.steps=3"]
    cached = Trainer(load_config(None, [*common, f"data.latent_cache={out}", f"train.out_dir={tmp_path / 'a'}"]))
    live = Trainer(load_config(None, [*common, f"train.out_dir={tmp_path / 'b'}"]))
    for step in (0, 2):
        indices, flips = cached.batch_indices(1500, step)
        assert flips.any() and not flips.all()
        cached_latents, live_latents = cached.latents.batch(indices, flips)[0], live.latents.batch(indices, flips)[0]
        torch.testing.assert_close(cached_latents, live_latents, atol=1e-5, rtol=1e-5)
    mean, var = cached.latents.moments()
    torch.testing.assert_close(torch.tensor(cached.latent_norm.shift), torch.tensor(mean))
    cached.run()
    pipe = FlowPipeline.from_checkpoint(tmp_path / "a")
    images, _ = pipe.generate(torch.arange(3), seed=0, settings=pipe.sampler.with_(nfe=2, cfg=1.0))
    assert images.shape == (3, 1, 8, 8) and images.abs().max() <= 1.0


def test_cache_from_another_autoencoder_is_refused_by_training(tmp_path, encode_config):
    out = tmp_path / "cache"
    assert _encode(encode_config, out) == 0
    config = load_config(None, [*TINY, f"data.latent_cache={out}", f"train.out_dir={tmp_path / 'run'}"])
    with pytest.raises(LatentFMError, match="encoded by another autoencoder"):
        Trainer(config)


def test_cache_from_other_weights_of_the_same_architecture_is_refused(tmp_path, encode_config):
    out = tmp_path / "cache"
    assert _encode(encode_config, out) == 0
    other = tmp_path / "other_ae"
    config = load_config(
        None, [*TINY_AE, f"train.out_dir={other}", "train.steps=2", "train.seed=1"], cls=AutoencoderRunConfig
    )
    AutoencoderTrainer(config).run()
    ae = ["autoencoder.kind=kl", f"autoencoder.checkpoint={other}", f"data.latent_cache={out}"]
    with pytest.raises(LatentFMError, match="autoencoder.weights_sha256"):
        Trainer(load_config(None, [*TINY, *ae, f"train.out_dir={tmp_path / 'run'}"]))


def test_damaged_or_mismatched_inputs_are_refused(tmp_path, encode_config, kl_run):
    out = tmp_path / "cache"
    assert _encode(encode_config, out, "--shard-size", "1000") == 0
    np.save(out / "shard_00001.npy", np.zeros((3, 1, 2, 4, 4), np.float32))
    with pytest.raises(LatentFMError, match="shard_00001.npy has shape"):
        LatentCache(out)
    (out / "shard_00001.npy").write_bytes(b"not a numpy file")
    with pytest.raises(LatentFMError, match="cannot read latent cache shard"):
        LatentCache(out)
    odd = [*TINY, "autoencoder.kind=kl", f"autoencoder.checkpoint={kl_run}", "data.image_size=9"]
    with pytest.raises(LatentFMError, match="downsampling factor 2"):
        Trainer(load_config(None, [*odd, f"train.out_dir={tmp_path / 'run'}"]))
    assert _encode(encode_config, tmp_path / "c2", "data.image_size=9") == 2
    assert _encode(encode_config, tmp_path / "c3", "--batch-size", "0") == 2


def test_pipeline_refuses_other_autoencoder_weights(tmp_path, kl_run, tiny_overrides):
    ae = ["autoencoder.kind=kl", f"autoencoder.checkpoint={kl_run}", "train.steps=1"]
    Trainer(load_config(None, [*tiny_overrides, *ae])).run()
    other = tmp_path / "other_ae"
    config = load_config(None, [*TINY_AE, f"train.out_dir={other}", "train.steps=1"], cls=AutoencoderRunConfig)
    AutoencoderTrainer(config).run()
    state_file = next((tmp_path / "run" / "checkpoints").iterdir()) / "state.json"
    state = json.loads(state_file.read_text())
    state["config"]["autoencoder"]["checkpoint"] = str(other)
    state_file.write_text(json.dumps(state))
    with pytest.raises(LatentFMError, match="trained with autoencoder weights"):
        FlowPipeline.from_checkpoint(tmp_path / "run")


def test_latent_norm_modes():
    mean, var = [1.0, -2.0], [4.0, 0.25]
    channel = LatentNorm.from_moments(mean, var, "channel")
    assert channel.shift == mean and channel.scale == [0.5, 2.0]
    global_norm = LatentNorm.from_moments(mean, var, "global")
    # pooled: E[z] = -0.5, E[z^2] = ((4 + 1) + (0.25 + 4)) / 2 = 4.625, var = 4.375
    assert global_norm.shift == [-0.5, -0.5] and global_norm.scale[0] == pytest.approx(4.375**-0.5)
    assert LatentNorm.from_moments(mean, var, "none").scale == [1.0, 1.0]
    with pytest.raises(LatentFMError, match="publishes no normalisation"):
        latent_norm_for(build_autoencoder({"kind": "identity"}, 1), "pretrained", lambda: (mean, var))
    with pytest.raises(LatentFMError, match="normalize='median'"):
        LatentNorm.from_moments(mean, var, "median")


def test_autoencoder_config_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "taesd.yaml"
    config.write_text("data:\n  dataset: digits\nautoencoder:\n  kind: taesd\n  encoder: /nowhere/enc.pth\n")
    assert _encode(config, tmp_path / "cache") == 2
    assert "needs autoencoder.decoder" in capsys.readouterr().err
    config.write_text(config.read_text() + "  decoder: /nowhere/dec.pth\n")
    assert _encode(config, tmp_path / "cache") == 2
    error = capsys.readouterr().err
    assert "/nowhere/enc.pth not found" in error and len(error.strip().splitlines()) == 1
    config.write_text("data:\n  dataset: digits\nautoencoder:\n  kind: vqgan\n")
    assert _encode(config, tmp_path / "cache") == 2
    assert "available: identity, taesd, kl, diffusers" in capsys.readouterr().err
