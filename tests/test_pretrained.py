"""Models by name (pretrained.py) and ``latentfm export`` (export.py): the exported directory round-trips
bit-identically, damaged exports and unknown names are one line, Hub ids load from the local cache offline, and the
built-in models generate right after installing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from latentfm.cli import main
from latentfm.config import load_config
from latentfm.errors import LatentFMError
from latentfm.export import export_model
from latentfm.pipeline import FlowPipeline
from latentfm.pretrained import builtin_models, model_directory, read_card
from latentfm.training.trainer import Trainer

from .conftest import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny class-conditional digits run."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    Trainer(load_config(None, [*TINY, "train.steps=3", f"train.out_dir={out}"])).run()
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_model(run, tmp_path_factory.mktemp("export") / "tiny-digits", data_license="CC-BY-4.0")


def test_the_export_generates_bit_identically_to_the_run(run, exported):
    labels = torch.arange(10)
    expected, _ = FlowPipeline.from_checkpoint(run).generate(labels, seed=5)
    loaded = FlowPipeline.from_pretrained(exported)
    images, stats = loaded.generate(labels, seed=5)
    assert torch.equal(images, expected) and stats.nfe == 2
    assert loaded.sampler == FlowPipeline.from_checkpoint(run).sampler and loaded.class_names[3] == "3"


def test_the_export_holds_what_generating_needs_and_a_card(exported):
    assert sorted(path.name for path in exported.iterdir()) == [
        "README.md",
        "ema.safetensors",
        "samples.png",
        "state.json",
    ]
    card = read_card(exported)
    assert card.metadata["library_name"] == "latentfm" and len(card.weights_sha256) == 64
    text = (exported / "README.md").read_text()
    assert "latentfm sample --model tiny-digits" in text and "Training data licence: CC-BY-4.0" in text
    size = (exported / "ema.safetensors").stat().st_size
    assert json.loads((exported / "state.json").read_text())["files"] == {"ema.safetensors": size}


def test_pipe_to_moves_without_reloading(exported):
    pipe = FlowPipeline.from_pretrained(exported)
    moved = pipe.to("cpu")
    assert moved.model is pipe.model and moved.device == torch.device("cpu")


def test_a_damaged_export_is_refused(exported, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(exported, altered)
    weights = bytearray((altered / "ema.safetensors").read_bytes())
    weights[-1] ^= 1  # same size, one bit
    (altered / "ema.safetensors").write_bytes(bytes(weights))
    with pytest.raises(LatentFMError, match="does not match the SHA-256 in .*README.md"):
        FlowPipeline.from_pretrained(altered)
    (altered / "ema.safetensors").unlink()
    with pytest.raises(LatentFMError, match="ema.safetensors is missing"):
        FlowPipeline.from_pretrained(altered)


def test_an_unknown_name_lists_the_built_in_ones():
    with pytest.raises(LatentFMError, match="unknown model 'fashion': built-in models are digits, fashion-mnist"):
        model_directory("fashion")


def test_a_hub_id_loads_from_the_local_cache_offline(exported, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub", reason="Hub ids need the hub extra: pip install 'latentfm[hub]'")
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-digits" / "snapshots" / ("0" * 40)
    shutil.copytree(exported, snapshot)
    (cache / "models--someone--tiny-digits" / "refs").mkdir()
    (cache / "models--someone--tiny-digits" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _reload_hub_constants(monkeypatch)
    images, _ = FlowPipeline.from_pretrained("someone/tiny-digits").generate(torch.arange(2), seed=5)
    expected, _ = FlowPipeline.from_pretrained(exported).generate(torch.arange(2), seed=5)
    assert torch.equal(images, expected)
    with pytest.raises(LatentFMError, match="'someone/absent' is not in the local Hugging Face cache"):
        model_directory("someone/absent")


def _reload_hub_constants(monkeypatch):
    """huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when imported: point its constants at the test's."""
    import os

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.environ["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_export_and_models_commands(run, tmp_path, capsys):
    assert main(["export", str(run), "--out", str(tmp_path / "m"), "--license", "mit"]) == 0
    assert "wrote" in capsys.readouterr().out and read_card(tmp_path / "m").metadata["license"] == "mit"
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in builtin_models())
    assert main(["sample", "--model", "nowhere-model", "--out", str(tmp_path / "s")]) == 2
    assert "unknown model 'nowhere-model'" in capsys.readouterr().err and not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["digits", "fashion-mnist"])
def test_a_built_in_model_samples_by_class_name(name, tmp_path):
    pipe = FlowPipeline.from_pretrained(name)
    labels = "Sneaker,Bag" if name == "fashion-mnist" else "3,7"
    assert main(["sample", "--model", name, "--labels", labels, "--n", "8", "--out", str(tmp_path)]) == 0
    arrays = np.load(tmp_path / "samples.npz")
    expected = [7, 8] if name == "fashion-mnist" else [3, 7]
    assert arrays["labels"].tolist() == [label for label in expected for _ in range(8)]
    assert arrays["images"].shape[0] == 16 and arrays["images"].std() > 10
    assert pipe.class_names and read_card(model_directory(name)).weights_sha256
