"""Shared fixtures and helpers: tiny digits configs (flow and KL autoencoder) that train in seconds; running the
command under torchrun; comparing the tensors of two runs' checkpoints."""

import os
import subprocess
import sys

import pytest
import torch

from latentfm import checkpoint as ckpt
from latentfm.config import load_config

TINY = [
    "data.dataset=digits",
    "train.device=cpu",
    "model.patch_size=2",
    "model.hidden_size=32",
    "model.depth=2",
    "model.num_heads=2",
    "train.batch_size=32",
    "train.steps=6",
    "train.log_every=2",
    "train.checkpoint_every=0",
    "train.ema_decay=0.9",
    "optim.lr=1e-3",
    "optim.warmup_steps=2",
    "sample.nfe=2",
    "train.sample_per_class=2",
]

# A tiny KL autoencoder on digits (factor 2, 2 latent channels).
TINY_AE = [
    "data.dataset=digits",
    "data.hflip=true",
    "model.channels=8",
    "model.channel_mult=[1,2]",
    "model.groups=4",
    "model.latent_channels=2",
    "train.device=cpu",
    "train.batch_size=16",
    "train.steps=6",
    "train.log_every=2",
    "train.checkpoint_every=0",
    "train.ema_decay=0.9",
    "optim.lr=1e-3",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides for a tiny class-conditional digits run writing into ``tmp_path/run``."""
    return [*TINY, f"train.out_dir={tmp_path / 'run'}"]


@pytest.fixture
def tiny_config(tiny_overrides):
    """The tiny config itself."""
    return load_config(None, tiny_overrides)


def run_torchrun(*args: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """``latentfm ARGS`` under torchrun with ``ranks`` processes of one thread each (gloo on the CPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    command += ["-m", "latentfm.cli", "--", *args]  # "--": torchrun would take --n for one of its own options
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def weights(run_dir, name):
    """The tensors ``name`` (model, ema, optimizer, ...) of the newest checkpoint in ``run_dir``."""
    return ckpt.read_tensors(ckpt.resolve_checkpoint(run_dir), name)


def assert_same_tensors(a, b, exact=True):
    """Two tensor dicts hold the same keys and equal (or, with ``exact=False``, close) tensors."""
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)
