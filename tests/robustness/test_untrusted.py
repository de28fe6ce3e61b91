"""Untrusted files: a crafted pickle (a .pth, a .pt, or one hidden in a checkpoint directory) is refused without
running its code; a safetensors header that lies about its tensors' shapes or dtypes is refused, whether or not
the checkpoint's state.json records the forged file's size."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from latentfm.autoencoders.taesd import load_tiny_autoencoder
from latentfm.cli import main
from latentfm.config import load_config
from latentfm.errors import LatentFMError
from latentfm.metrics.inception import load_inception
from latentfm.pipeline import FlowPipeline
from latentfm.training.trainer import Trainer

from ..conftest import TINY


class Payload:
    """Unpickling this creates ``marker``: proof that the file's code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted(path, marker) -> None:
    with open(path, "wb") as handle:
        pickle.dump({"0.weight": Payload(str(marker))}, handle)


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_a_crafted_pickle_is_refused_without_running_its_code(tmp_path, suffix):
    marker, weights = tmp_path / "ran", tmp_path / f"evil{suffix}"
    crafted(weights, marker)
    with pytest.raises(LatentFMError, match="cannot read TAESD encoder weights"):
        load_tiny_autoencoder(weights, weights)
    with pytest.raises(LatentFMError, match="is not the FID InceptionV3 weights file"):
        load_inception(weights)
    assert not marker.exists()
    with open(weights, "rb") as handle:  # the file is a real attack: plain unpickling runs it
        pickle.load(handle)
    assert marker.exists()


def test_a_pickle_hidden_in_a_checkpoint_directory_is_never_loaded(tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "ran"
    Trainer(load_config(None, [*TINY, "train.steps=2", f"train.out_dir={run}"])).run()
    checkpoint = next((run / "checkpoints").iterdir())
    for name in ("model.pt", "optimizer.pth", "ema.bin", "state.pkl"):
        crafted(checkpoint / name, marker)
    FlowPipeline.from_checkpoint(run)
    args = ["sample", "--checkpoint", str(run), "--labels", "0", "--n", "1", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    Trainer(load_config(None, [*TINY, "train.steps=3", f"train.out_dir={run}"])).run()  # resumes from it
    assert not marker.exists()


def rewrite_header(weights, change) -> None:
    """Rewrite the JSON header of a safetensors file: ``change(entry)`` edits the first tensor's entry."""
    data = weights.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    change(header[next(key for key in header if key != "__metadata__")])
    text = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])


def record_size(checkpoint, name) -> None:
    """Make the checkpoint's state.json record the file's new size, as a careful forger would."""
    state = json.loads((checkpoint / "state.json").read_text())
    state["files"][name] = (checkpoint / name).stat().st_size
    (checkpoint / "state.json").write_text(json.dumps(state))


def bigger_shape(entry) -> None:
    entry["shape"] = [dim * 1000 for dim in entry["shape"]]  # more bytes than the file holds


def wider_dtype(entry) -> None:
    entry["dtype"] = "F64"  # twice the bytes the file holds


def integer_dtype(entry) -> None:
    entry["dtype"] = "I32"  # the same bytes, read as integers


@pytest.mark.parametrize("change", [bigger_shape, wider_dtype, integer_dtype])
@pytest.mark.parametrize("forged_size", [False, True])
def test_a_safetensors_header_that_lies_is_refused(tmp_path, capsys, change, forged_size):
    run = tmp_path / "run"
    Trainer(load_config(None, [*TINY, "train.steps=2", f"train.out_dir={run}"])).run()
    checkpoint = next((run / "checkpoints").iterdir())
    rewrite_header(checkpoint / "ema.safetensors", change)
    if forged_size:
        record_size(checkpoint, "ema.safetensors")
    args = ["sample", "--checkpoint", str(run), "--labels", "0", "--n", "1", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "ema.safetensors" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()
    with pytest.raises(LatentFMError):
        FlowPipeline.from_checkpoint(run)
    assert torch.__version__  # torch stayed importable and nothing else ran


def test_names_from_data_never_choose_where_files_go(tmp_path):
    """Class names are labels, not paths (Fashion-MNIST's "T-shirt/top" holds a slash): no output path is made
    from them, nor from image file names; only train.out_dir and --out choose where files go."""
    folder = tmp_path / "data"
    for name in ("..hidden class", "-dash", "ünï cödé", "T-shirt%2Ftop"):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / name / f"..{i} -x.png")
    run, out = tmp_path / "run", tmp_path / "out"
    overrides = ["data.dataset=folder", f"data.path={folder}", *TINY[1:], "train.batch_size=8", "train.steps=2"]
    Trainer(load_config(None, [*overrides, f"train.out_dir={run}"])).run()
    checkpoint = next((run / "checkpoints").iterdir())
    state = json.loads((checkpoint / "state.json").read_text())
    state["data"]["class_names"] = ["../../outside", "/etc/passwd", "..", "a/b"]  # a crafted checkpoint
    (checkpoint / "state.json").write_text(json.dumps(state))
    before = {p for p in tmp_path.parent.rglob("*")}
    assert main(["sample", "--checkpoint", str(run), "--labels", "all", "--n", "1", "--out", str(out)]) == 0
    created = {p for p in tmp_path.parent.rglob("*")} - before
    assert created and all(p == out or out in p.parents for p in created)
