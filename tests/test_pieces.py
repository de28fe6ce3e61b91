"""Small pieces: latent normalisation, EMA, atomic writes, checkpoint round trips, grids, seeds."""

import json
import os

import numpy as np
import pytest
import torch

from latentfm import checkpoint as ckpt
from latentfm.atomic import atomic_directory, write_bytes_atomic
from latentfm.autoencoders import LatentNorm, build_autoencoder
from latentfm.errors import LatentFMError
from latentfm.image_io import make_grid, to_uint8
from latentfm.seeding import derive_seed, source_noise
from latentfm.training.ema import EMA


def test_latent_norm_estimate_and_inverse():
    z = torch.randn(64, 3, 4, 4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + torch.tensor([0.0, 1.0, -3.0]).view(
        1, 3, 1, 1
    )
    norm = LatentNorm.estimate(z.split(16), "channel")
    normalized = norm.normalize(z)
    torch.testing.assert_close(normalized.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.denormalize(normalized), z, atol=1e-5, rtol=1e-5)
    global_norm = LatentNorm.estimate([z], "global")
    assert len(set(global_norm.scale)) == 1
    assert abs(global_norm.normalize(z).std(unbiased=False).item() - 1) < 1e-4
    assert LatentNorm.estimate([z], "none").scale == [1.0, 1.0, 1.0]


def test_identity_autoencoder_and_unknown_kind():
    ae = build_autoencoder({"kind": "identity"}, image_channels=3)
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    assert ae.latent_channels == 3 and ae.downsample_factor == 1 and torch.equal(ae.decode(ae.encode(x)), x)
    with pytest.raises(LatentFMError, match="autoencoder.kind"):
        build_autoencoder({"kind": "vqgan"})


def test_ema_average_and_warmup():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, 0)
    ema.update(model, 1)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 0.75))
    assert EMA(model, 0.999, warmup=True).decay_at(0) == pytest.approx(0.1)
    assert EMA(model, 0.999, warmup=True).decay_at(10**6) == 0.999


def test_optimizer_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    directory = tmp_path / "checkpoints" / "step_00000001"
    weights = {"model": model.state_dict(), "ema": model.state_dict()}
    state = ckpt.CheckpointState(kind="flow", step=1, config={}, data=ckpt.DataShapes([1, 8, 8], [1, 8, 8]))
    ckpt.save_checkpoint(directory, weights, {"optimizer": optimizer.state_dict()}, state)
    restored = ckpt.read_optimizer(directory, "optimizer")
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    fresh.load_state_dict(restored)
    assert fresh.param_groups[0]["lr"] == 1e-3
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(value), fresh.state_dict()["state"][index][name])
    assert ckpt.resolve_checkpoint(tmp_path) == directory
    assert ckpt.read_state(directory, "flow").data.latent_shape == [1, 8, 8]
    with pytest.raises(LatentFMError, match="of kind 'flow', expected 'autoencoder'"):
        ckpt.read_state(directory, "autoencoder")


def test_states_written_by_0_1_still_read(tmp_path):
    """0.1 wrote flow states without a kind, autoencoder states as kl_autoencoder, and (before its latent work) one
    optimizer's groups under optimizer_param_groups."""
    data = {"image_shape": [1, 8, 8], "latent_shape": [1, 8, 8], "num_classes": 10, "class_names": []}
    old_flow = {"version": "0.1.0", "step": 4, "config": {}, "data": data, "latent_norm": {"shift": [0], "scale": [1]}}
    old_autoencoder = {"kind": "kl_autoencoder", "step": 2, "config": {}, "data": data, "param_groups": {}}
    for name, values in (("flow", old_flow), ("autoencoder", old_autoencoder)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text(json.dumps({**values, "optimizer_param_groups": [{"lr": 1}]}))
        state = ckpt.read_state(tmp_path / name, name)
        assert state.kind == name and state.data.num_classes == 10 and state.param_groups == {"optimizer": [{"lr": 1}]}


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    directory = tmp_path / "step_00000001"
    directory.mkdir()
    (directory / "state.json").write_text("{not json")
    (directory / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LatentFMError, match="state.json"):
        ckpt.read_state(directory)
    with pytest.raises(LatentFMError, match="model.safetensors"):
        ckpt.read_tensors(directory, "model")


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path):
    write_bytes_atomic(tmp_path / "a.bin", b"1")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("partial")
        raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("done")
    assert (tmp_path / "d" / "x").read_text() == "done"


def test_atomic_outputs_have_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "f.bin", b"x")
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_grid_layout_and_uint8_conversion():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 0.0, 1.0)])
    array = to_uint8(images)
    assert array.shape == (3, 2, 2) and array[0, 0, 0] == 0 and array[1, 0, 0] == 128 and array[2, 0, 0] == 255
    grid = make_grid(array, columns=2, padding=1)
    assert grid.shape == (7, 7) and grid[1, 4] == 128 and grid[4, 1] == 255 and grid[0, 0] == 0


def test_source_noise_is_per_index():
    whole = source_noise(7, range(0, 6), (2, 3))
    part = source_noise(7, range(3, 6), (2, 3))
    assert torch.equal(whole[3:], part) and not torch.equal(whole[0], whole[1])
    assert derive_seed(1, 2) != derive_seed(2, 1) and 0 <= derive_seed(0) < 2**63
    assert np.isfinite(whole.numpy()).all()
