"""The run directory as one object: its lock, leftovers of killed writes, metrics.jsonl trimmed back to the
starting step, resume refusing another config, checkpoints written once, pruned and read back."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from latentfm import checkpoint as ckpt
from latentfm.config import config_to_dict, load_config
from latentfm.errors import LatentFMError
from latentfm.training.run_dir import RunDirectory

from ..conftest import TINY


def checkpoint_state(config, step: int) -> ckpt.CheckpointState:
    return ckpt.CheckpointState(
        kind="flow", step=step, config=config_to_dict(config), data=ckpt.DataShapes([1, 8, 8], [1, 8, 8])
    )


def write_metrics(run: RunDirectory, *lines: str) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    run.metrics_file.write_text("".join(lines))


def test_a_second_holder_is_refused_and_the_lock_is_released_after(tmp_path):
    run = RunDirectory(tmp_path / "run")
    refused = pytest.raises(LatentFMError, match=re.escape(f"{tmp_path / 'run'} is in use by another latentfm process"))
    with run.exclusive(start_step=0), refused, RunDirectory(tmp_path / "run").exclusive(start_step=0):
        pass
    with RunDirectory(tmp_path / "run").exclusive(start_step=0):  # released on leaving the block
        pass


def test_leftovers_of_killed_writes_are_removed_by_the_main_rank_only(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    (root / ".step_00000004.x1y2.tmp").mkdir(parents=True)
    (root / ".step_00000004.x1y2.tmp" / "model.safetensors").write_bytes(b"half")
    (root / ".state.json.abc.tmp").write_text("{")
    (root / "step_00000002").mkdir()
    with RunDirectory(tmp_path / "run", is_main=False).exclusive(start_step=0):
        assert len(list(root.iterdir())) == 3  # another rank touches nothing
    with RunDirectory(tmp_path / "run").exclusive(start_step=0):
        assert [path.name for path in root.iterdir()] == ["step_00000002"]


def test_metrics_are_cut_back_to_the_starting_step_and_a_torn_line_dropped(tmp_path):
    run = RunDirectory(tmp_path / "run")
    records = [json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in (2, 4, 6)]
    write_metrics(run, records[0], "not json\n", records[1], records[2], '{"step": 8, "lo')
    with run.exclusive(start_step=4):
        assert run.metrics_file.read_text() == records[0] + records[1]
    run.append_metrics({"step": 5, "loss": 0.5})
    assert [json.loads(line)["step"] for line in run.metrics_file.read_text().splitlines()] == [2, 4, 5]


def test_metrics_with_nothing_to_cut_are_not_rewritten(tmp_path):
    run = RunDirectory(tmp_path / "run")
    write_metrics(run, '{"step": 2}\n', '{"step": 4}\n')
    before = os.stat(run.metrics_file)
    with run.exclusive(start_step=4):
        pass
    after = os.stat(run.metrics_file)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_resume_refuses_another_config_and_accepts_a_resumable_change(tmp_path):
    overrides = [*TINY, f"train.out_dir={tmp_path / 'run'}"]
    config = load_config(None, overrides)
    run = RunDirectory(tmp_path / "run")
    assert run.resume_point(config) is None
    for step in (2, 4):
        ckpt.save_checkpoint(run.checkpoint_dir(step), {}, {}, checkpoint_state(config, step))
    assert run.resume_point(load_config(None, [*overrides, "train.steps=10"])) == run.checkpoint_dir(4)
    message = (
        f"{tmp_path / 'run'} holds a run with another config (train.seed: 0 in the checkpoint, 7 now); "
        "choose a new train.out_dir or restore the old value"
    )
    with pytest.raises(LatentFMError) as refused:
        run.resume_point(load_config(None, [*overrides, "train.seed=7"]))
    assert str(refused.value) == message


def test_save_writes_once_prunes_and_load_restores(tmp_path, capsys):
    config = load_config(None, [*TINY, f"train.out_dir={tmp_path / 'run'}"])
    run, module = RunDirectory(tmp_path / "run"), torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    modules, optimizers = {"model": module}, {"optimizer": optimizer}
    for step in (1, 2, 3):
        saved = run.save(step, modules, optimizers, lambda step=step: checkpoint_state(config, step), keep=2)
    assert run.checkpoints() == [run.checkpoint_dir(2), saved] and run.is_finished(3)
    written = os.stat(saved / "model.safetensors").st_mtime_ns
    assert run.save(3, modules, optimizers, lambda: pytest.fail("a complete checkpoint is kept"), keep=2) == saved
    assert os.stat(saved / "model.safetensors").st_mtime_ns == written
    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    state = run.load(saved, {"model": fresh}, {"optimizer": fresh_optimizer})
    assert state.step == 3 and f"resumed from {saved} at step 3" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), fresh.state_dict().values()))
    assert torch.equal(
        fresh_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
