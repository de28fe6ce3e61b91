"""Image folders read lazily: the index, its fingerprint and cache, channel and size decisions, batches read by
worker processes (equal to reading in the main process, errors in one line), and training, encoding and
evaluation from a folder exactly as from one process: resumed with workers, 2 ranks, 2 "nodes"."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from latentfm.cli import main
from latentfm.config import load_config
from latentfm.data import BatchRequest, ImageData, load_dataset, read_batches
from latentfm.data import folder as folder_module
from latentfm.data.folder import open_folder
from latentfm.errors import LatentFMError
from latentfm.training.trainer import Trainer

from ..conftest import TINY, assert_same_tensors, run_torchrun, weights


def write_digits_folder(root, count: int = 200) -> None:
    """The first ``count`` built-in digits as 8x8 grey PNGs, one folder per class."""
    digits = load_dataset("digits", split="all")
    for row in range(count):
        label = int(digits.labels[row])
        path = root / f"class_{label}" / f"{row:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[row, 0].numpy()).save(path)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_folder")
    write_digits_folder(root)
    return root


def folder_overrides(root, *extra: str) -> list[str]:
    return [*TINY, "data.dataset=folder", f"data.path={root}", "data.channels=1", *extra]


# --- the index and its fingerprint ----------------------------------------------------------------------


def test_loading_reads_names_not_images(tmp_path):
    Image.new("L", (4, 4), 10).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image at all")
    data = load_dataset("folder", str(tmp_path))
    assert len(data) == 2 and data.image_shape == (1, 4, 4)  # the corrupt file is met only when read
    assert data.index.sizes.tolist() == [(tmp_path / "a.png").stat().st_size, 19]


def test_fingerprint_refuses_changed_list_label_and_size(tmp_path):
    for name in ("x/a.png", "x/b.png", "y/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("L", (4, 4), 10).save(tmp_path / name)
    fingerprint = lambda **kw: load_dataset("folder", str(tmp_path), **kw).fingerprint()  # noqa: E731
    base = fingerprint()
    assert fingerprint() == base and fingerprint(image_size=8) != base  # how images load is part of it
    Image.new("L", (4, 4), 10).save(tmp_path / "x" / "a.png")  # rewritten, same bytes
    assert fingerprint() == base
    os.rename(tmp_path / "x" / "b.png", tmp_path / "y" / "b.png")  # another label
    assert fingerprint() != base
    os.rename(tmp_path / "y" / "b.png", tmp_path / "x" / "b.png")
    assert fingerprint() == base
    Image.new("L", (4, 4), 10).save(tmp_path / "x" / "d.png")  # one more file
    assert fingerprint() != base
    (tmp_path / "x" / "d.png").unlink()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (4, 4), dtype=np.uint8)).save(tmp_path / "x" / "a.png")
    assert fingerprint() != base  # replaced by a file of another size
    content = fingerprint(fingerprint="content")
    data = np.asarray(Image.open(tmp_path / "x" / "a.png")).copy()
    data[0, 0] ^= 1  # same size, other bytes: only the content hash sees it
    before = fingerprint()
    Image.fromarray(data).save(tmp_path / "x" / "a.png")
    if (tmp_path / "x" / "a.png").stat().st_size == load_dataset("folder", str(tmp_path)).index.sizes[0]:
        assert fingerprint() == before
    assert fingerprint(fingerprint="content") != content


def test_index_file_is_reused_and_a_changed_folder_refused(tmp_path):
    root, index_file = tmp_path / "images", tmp_path / "run" / "data_index.npz"
    root.mkdir()
    Image.new("L", (4, 4), 10).save(root / "a.png")
    first = open_folder(str(root), "train", index_file)
    written = index_file.stat().st_mtime_ns
    again = open_folder(str(root), "train", index_file, refuse_change=True)
    assert index_file.stat().st_mtime_ns == written and again.files.tolist() == first.files.tolist()
    Image.new("L", (4, 4), 10).save(root / "b.png")
    with pytest.raises(LatentFMError, match=r"changed since .*data_index.npz was written \(files: 1 added \(b.png\)"):
        open_folder(str(root), "train", index_file, refuse_change=True)
    assert len(open_folder(str(root), "train", index_file)) == 2  # a new run rebuilds it


def test_channels_decided_from_a_sample_and_a_colour_file_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "CHANNEL_SAMPLE", 2)  # the first and the last file
    Image.new("L", (4, 4), 10).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4), (200, 0, 0)).save(tmp_path / "b.png")
    Image.new("L", (4, 4), 10).save(tmp_path / "c.png")
    data = load_dataset("folder", str(tmp_path))
    assert data.image_shape == (1, 4, 4) and "1-channel" in data.notes[0]
    with pytest.raises(LatentFMError, match=r"b\.png is in colour.*data\.channels=3"):
        data.read([1])
    assert load_dataset("folder", str(tmp_path), channels=1).read([1]).images.shape == (1, 1, 4, 4)
    assert load_dataset("folder", str(tmp_path), channels=3).read([0, 1]).images.shape == (2, 3, 4, 4)


# --- worker processes -------------------------------------------------------------------------------------


def test_workers_read_what_the_main_process_reads(digits_folder):
    data = load_dataset("folder", str(digits_folder), channels=1, image_size=12)
    requests = [BatchRequest(torch.randperm(200)[:32], torch.rand(32) < 0.5) for _ in range(5)]
    here = list(read_batches(data, requests, workers=0))
    there = list(read_batches(data, requests, workers=2))
    for a, b in zip(here, there, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_a_worker_error_is_one_line(tmp_path):
    Image.new("L", (4, 4), 10).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = load_dataset("folder", str(tmp_path))
    with pytest.raises(LatentFMError) as error:
        list(read_batches(data, [BatchRequest(torch.tensor([0])), BatchRequest(torch.tensor([1]))], workers=1))
    assert "b.png" in str(error.value) and "\n" not in str(error.value)


class DiesWhenRead(ImageData):
    """In-memory data whose worker kills itself, as the out-of-memory killer would."""

    def read(self, indices, flips=None):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_worker_stops_the_run_in_one_line():
    data = DiesWhenRead(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), None, 0, [])
    with pytest.raises(LatentFMError, match=r"a data loader worker died .*data.workers=0"):
        list(read_batches(data, [BatchRequest(torch.tensor([0]))], workers=1))


def test_cli_refuses_a_worker_error_with_exit_2(digits_folder, tmp_path, capsys):
    broken = tmp_path / "broken"
    write_digits_folder(broken, 40)
    last = sorted((broken / "class_9").iterdir())[-1]  # not the first file, which is read in the main process
    last.write_bytes(b"truncated")
    config = tmp_path / "c.yaml"
    config.write_text("")
    args = folder_overrides(broken, "data.workers=1", "train.batch_size=8", f"train.out_dir={tmp_path / 'run'}")
    assert main(["train", "--config", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {last}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- exactness --------------------------------------------------------------------------------------------


def test_resume_with_workers_is_bit_identical(digits_folder, tmp_path):
    common = folder_overrides(digits_folder, "data.workers=2", "data.hflip=true", "train.steps=8")
    Trainer(load_config(None, [*common, f"train.out_dir={tmp_path / 'straight'}"])).run()
    split = load_config(None, [*common, f"train.out_dir={tmp_path / 'split'}"])
    Trainer(split).run(until_step=3)
    resumed = Trainer(split)
    assert resumed.step == 3
    resumed.run()
    in_process = folder_overrides(digits_folder, "data.workers=0", "data.hflip=true", "train.steps=8")
    Trainer(load_config(None, [*in_process, f"train.out_dir={tmp_path / 'main'}"])).run()
    for name in ("model", "ema", "optimizer"):
        assert_same_tensors(weights(tmp_path / "straight", name), weights(tmp_path / "split", name))
        assert_same_tensors(weights(tmp_path / "straight", name), weights(tmp_path / "main", name))


def test_resume_refuses_a_changed_folder(tmp_path):
    root = tmp_path / "images"
    write_digits_folder(root, 64)
    overrides = folder_overrides(root, "train.steps=4", f"train.out_dir={tmp_path / 'run'}")
    Trainer(load_config(None, overrides)).run(until_step=2)
    (root / "class_3" / os.listdir(root / "class_3")[0]).unlink()
    with pytest.raises(LatentFMError, match=r"changed since .*data_index.npz was written \(files: 1 removed"):
        Trainer(load_config(None, overrides))


def test_two_ranks_with_workers_equal_one_process(digits_folder, tmp_path):
    common = folder_overrides(digits_folder, "model.class_dropout=0.0", "train.steps=3", "data.workers=1")
    Trainer(load_config(None, [*common, f"train.out_dir={tmp_path / 'one'}"])).run()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = run_torchrun("train", "--config", str(empty), *common, f"train.out_dir={tmp_path / 'two'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_tensors(weights(tmp_path / "one", "model"), weights(tmp_path / "two", "model"), exact=False)


def run_two_nodes(*args: str) -> None:
    """``latentfm ARGS`` as two torchrun "nodes" of one process each on this machine (c10d rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    command += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=latentfm-test"]
    command += ["-m", "latentfm.cli", "--", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    nodes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-2000:]


def test_two_nodes_train_encode_and_evaluate_like_one_process(digits_folder, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    train = folder_overrides(digits_folder, "model.class_dropout=0.0", "train.steps=3", "data.workers=1")
    run_two_nodes("train", "--config", str(empty), *train, f"train.out_dir={tmp_path / 'two'}")
    Trainer(load_config(None, [*train, f"train.out_dir={tmp_path / 'one'}"])).run()
    assert_same_tensors(weights(tmp_path / "one", "model"), weights(tmp_path / "two", "model"), exact=False)

    config = tmp_path / "folder.yaml"
    config.write_text(f"data:\n  dataset: folder\n  path: {digits_folder}\n  channels: 1\n  workers: 1\n")
    encode = ["encode", "--config", str(config), "--device", "cpu", "--shard-size", "64"]
    run_two_nodes(*encode, "--out", str(tmp_path / "cache_two"))
    assert main([*encode, "--out", str(tmp_path / "cache_one")]) == 0
    for name in ("manifest.json", "labels.npy", *(f"shard_{i:05d}.npy" for i in range(4))):
        assert (tmp_path / "cache_one" / name).read_bytes() == (tmp_path / "cache_two" / name).read_bytes(), name

    classifier, reference = tmp_path / "classifier.safetensors", tmp_path / "reference.npz"
    assert main(["train-classifier", "--dataset", "digits", "--out", str(classifier), "--epochs", "1"]) == 0
    stats = ["stats", "--dataset", f"folder:{digits_folder}", "--features", str(classifier), "--out", str(reference)]
    assert main([*stats, "--workers", "1"]) == 0
    evaluate = ["eval", "--checkpoint", str(tmp_path / "one"), "--reference", str(reference), "--n", "40"]
    evaluate += ["--features", str(classifier), "--nfe", "2", "--shard-size", "20", "--device", "cpu"]
    evaluate += ["--latency-repeats", "1"]
    run_two_nodes(*evaluate, "--out", str(tmp_path / "eval_two"))
    assert main([*evaluate, "--out", str(tmp_path / "eval_one")]) == 0
    for name in ("00000000.npz", "00000020.npz"):
        one, two = np.load(tmp_path / "eval_one" / "shards" / name), np.load(tmp_path / "eval_two" / "shards" / name)
        np.testing.assert_array_equal(one["features"], two["features"])
