"""Faults: a finished run is left alone; SIGTERM and SIGINT save and exit 143 and 130; SIGKILL at random moments
loses no more than the steps since the last checkpoint, and the resumed run ends bit-identical to an
uninterrupted one (a fast version of benchmarks/faults.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latentfm import checkpoint as ckpt
from latentfm.config import load_config
from latentfm.training.trainer import Trainer

from ..conftest import TINY

FAULTY = [*TINY, "train.steps=60", "train.checkpoint_every=3", "train.log_every=1", "model.class_dropout=0.1"]
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")  # every run of a comparison on the same thread count


def train_command(run: Path, *extra: str) -> list[str]:
    """``latentfm train`` of the faulty recipe into ``run`` (an empty config file beside it, overrides after)."""
    config = run.parent / "empty.yaml"
    config.write_text("")
    return [
        sys.executable,
        "-m",
        "latentfm.cli",
        "train",
        "--config",
        str(config),
        *FAULTY,
        f"train.out_dir={run}",
        *extra,
    ]


def start(run: Path) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(run), env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def finish(run: Path) -> int:
    """Run (or resume) the faulty recipe to its end; the exit code."""
    return subprocess.run(train_command(run), env=ONE_THREAD, capture_output=True).returncode


def logged(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def wait_for_steps(run: Path, process: subprocess.Popen, steps: int, timeout: float = 120) -> None:
    """Until ``metrics.jsonl`` logs ``steps`` more steps (one line per step here) or the process ends."""
    deadline, target = time.monotonic() + timeout, logged(run) + steps
    while time.monotonic() < deadline and process.poll() is None and logged(run) < target:
        time.sleep(0.002)


def final_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    directory = ckpt.resolve_checkpoint(run)
    return {name: ckpt.read_tensors(directory, name) for name in ("model", "ema")}


def assert_identical(a: dict, b: dict) -> None:
    for name in a:
        assert a[name].keys() == b[name].keys()
        assert all(torch.equal(a[name][key], b[name][key]) for key in a[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("straight") / "run"
    assert finish(run) == 0
    return final_weights(run)


def test_rerunning_a_finished_run_leaves_its_files_alone(tmp_path):
    run = tmp_path / "run"
    config = load_config(None, [*TINY, "train.steps=4", "train.checkpoint_every=2", f"train.out_dir={run}"])
    last = Trainer(config).run()
    before = {path: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()}
    assert Trainer(config).run() == last
    assert subprocess.run(train_command(run, "train.steps=4", "train.checkpoint_every=2")).returncode == 0
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_save_a_checkpoint_and_the_run_resumes_exactly(tmp_path, uninterrupted, signum, code):
    run = tmp_path / "run"
    process = start(run)
    wait_for_steps(run, process, 4)
    process.send_signal(signum)
    assert process.wait(timeout=120) == code, process.stderr.read()[-2000:]
    saved = ckpt.read_state(ckpt.resolve_checkpoint(run)).step
    assert 4 <= saved < 60
    assert finish(run) == 0
    assert_identical(final_weights(run), uninterrupted)


def test_sigkill_at_random_moments_then_rerunning_ends_bit_identical(tmp_path, uninterrupted):
    run, draw = tmp_path / "run", random.Random(0)
    for _ in range(3):
        process = start(run)
        wait_for_steps(run, process, draw.randint(1, 15))  # killed mid-step, mid-checkpoint or mid-log
        process.kill()
        process.wait(timeout=60)
        assert not [p for p in (run / "checkpoints").glob("step_*") if not (p / "state.json").is_file()]
    assert ckpt.read_state(ckpt.resolve_checkpoint(run)).step < 60  # killed before the end
    assert finish(run) == 0
    assert_identical(final_weights(run), uninterrupted)


def test_a_non_finite_step_is_skipped_counted_and_too_many_stop_the_run(tmp_path, monkeypatch):
    from latentfm.errors import LatentFMError
    from latentfm.training import trainer as trainer_module

    poisoned: set[int] = set()
    loss = trainer_module.flow_matching_loss

    def flow_matching_loss(*args, **kwargs):
        value = loss(*args, **kwargs)
        return value * float("nan") if current.step in poisoned else value

    monkeypatch.setattr(trainer_module, "flow_matching_loss", flow_matching_loss)
    overrides = [*TINY, "train.steps=4", "train.checkpoint_every=2", f"train.out_dir={tmp_path / 'run'}"]
    current = Trainer(load_config(None, overrides))
    current.run(until_step=2)
    before = {
        name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in current.checkpoint_modules().items()
    }
    optimizer_before = {k: v.clone() for k, v in current.optimizer.state_dict()["state"][0].items()}
    poisoned.add(2)
    current.train_step()
    for name, module in current.checkpoint_modules().items():
        assert all(torch.equal(before[name][k], v) for k, v in module.state_dict().items()), name
    assert all(torch.equal(optimizer_before[k], v) for k, v in current.optimizer.state_dict()["state"][0].items())
    assert current.skipped_steps == 1 and current.step == 3
    current.run()
    assert ckpt.read_state(ckpt.resolve_checkpoint(tmp_path / "run")).skipped_steps == 1
    assert Trainer(load_config(None, [*overrides, "train.steps=6"])).skipped_steps == 1  # a resume keeps the count
    current = Trainer(load_config(None, [*overrides, "train.steps=10", "train.max_nonfinite_steps=3"]))
    poisoned.update(range(4, 10))
    with pytest.raises(LatentFMError, match="3 training steps in a row had a non-finite loss"):
        current.run()
    assert ckpt.read_state(ckpt.resolve_checkpoint(tmp_path / "run")).step == 6  # the last good checkpoint stays


def test_a_folder_of_grey_images_trains_a_one_channel_model_and_says_so(tmp_path, capsys):
    from PIL import Image

    from latentfm.data import load_dataset

    folder = tmp_path / "grey"
    folder.mkdir()
    for i in range(4):
        Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), mode="L").save(folder / f"{i}.png")
    data = load_dataset("folder", str(folder))
    assert data.image_shape[0] == 1 and "images in" in data.notes[0] and "1-channel" in data.notes[0]
    Image.fromarray((torch.rand(8, 8, 3) * 255).byte().numpy(), mode="RGB").save(folder / "colour.png")
    assert load_dataset("folder", str(folder)).image_shape[0] == 3
    assert load_dataset("folder", str(folder), channels=1).notes == []
    overrides = ["data.dataset=folder", f"data.path={folder}", *TINY[1:], "train.batch_size=4", "train.steps=1"]
    (folder / "colour.png").unlink()
    Trainer(load_config(None, [*overrides, f"train.out_dir={tmp_path / 'run'}"])).run()
    assert "1-channel model" in capsys.readouterr().out


def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')  # a killed run's lines
    Trainer(load_config(None, [*TINY, "train.steps=4", "train.log_every=1", f"train.out_dir={run}"])).run()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
