"""A full disk or a read-only output: one line naming the file, exit 2, no partial file left, earlier outputs and
checkpoints intact, and a training run resumes from its last complete checkpoint once there is space. Faults are
injected (ENOSPC in the middle of a write) everywhere; where the machine lets the tests mount a small tmpfs
(root on Linux), they also fill a real one and write to a read-only one."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from latentfm import checkpoint as ckpt
from latentfm.cli import main
from latentfm.config import load_config
from latentfm.training.trainer import Trainer

from ..conftest import TINY

RUN = ["train", "--config", "configs/digits.yaml", *TINY, "train.checkpoint_every=2"]


def leftovers(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.tmp"))


def last_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("disk") / "run"
    assert main([*RUN, "train.steps=2", f"train.out_dir={run}"]) == 0
    return run


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_ones_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    run, save_file = tmp_path / "run", ckpt.save_file

    def full_from_step_4(tensors, path, *args, **kwargs):
        if "step_00000004" in str(path):
            Path(path).write_bytes(b"half a tensor")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", full_from_step_4)
    assert main([*RUN, "train.steps=6", f"train.out_dir={run}"]) == 2
    error = last_line(capsys)
    assert "cannot write checkpoint" in error and "step_00000004" in error and "No space left" in error
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002"]
    assert leftovers(run) == [] and not (run / "checkpoints" / "step_00000004").exists()
    monkeypatch.setattr(ckpt, "save_file", save_file)
    assert main([*RUN, "train.steps=6", f"train.out_dir={run}"]) == 0  # space again: it resumes from step 2
    straight = Trainer(
        load_config(
            "configs/digits.yaml",
            [*TINY[:], "train.checkpoint_every=2", "train.steps=6", f"train.out_dir={tmp_path / 'straight'}"],
        )
    ).run()
    resumed = ckpt.resolve_checkpoint(run)
    for name in ("model", "ema"):
        a, b = ckpt.read_tensors(resumed, name), ckpt.read_tensors(straight, name)
        assert all(torch.equal(a[key], b[key]) for key in a), name


def test_a_full_disk_while_writing_samples_leaves_the_old_ones(tmp_path, capsys, monkeypatch, trained_run):
    out = tmp_path / "out"
    args = ["sample", "--checkpoint", str(trained_run), "--labels", "0", "--n", "1", "--out", str(out)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_bytes = Path.write_bytes

    def full(self, data):
        write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    assert main([*args, "--seed", "7"]) == 2
    monkeypatch.undo()
    error = last_line(capsys)
    assert "No space left on device" in error and str(out) in error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and leftovers(out) == []


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    try:
        return subprocess.run(command, capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs (``request.param`` are its mount options); skipped where mounting is not allowed."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        path = tmp_path / name
        if not mount_tmpfs(path, options):
            pytest.skip("this machine does not let the tests mount a tmpfs (needs root); the injected faults cover it")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_a_real_full_tmpfs_and_a_read_only_one(tmpfs, capsys, trained_run):
    small = tmpfs("small", "size=96k")
    run = small / "run"
    assert main([*RUN, "model.hidden_size=64", "train.steps=6", f"train.out_dir={run}"]) == 2
    error = last_line(capsys)
    assert "No space left on device" in error
    assert all(ckpt.is_complete(p) for p in (run / "checkpoints").glob("step_*")) and leftovers(small) == []
    read_only = tmpfs("read_only", "ro,size=64k")
    args = ["sample", "--checkpoint", str(trained_run), "--labels", "0", "--n", "1"]
    assert main([*args, "--out", str(read_only / "out")]) == 2
    assert "Read-only file system" in last_line(capsys)
