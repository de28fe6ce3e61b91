"""The one-call objective, its couplings (minibatch OT, global across ranks) and the tasks."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

from latentfm.config import TaskConfig, load_config
from latentfm.errors import LatentFMError
from latentfm.flow import FlowObjective, build_coupling, minibatch_ot_pairing
from latentfm.flow.couplings import ot_coupling
from latentfm.flow.paths import CosinePath
from latentfm.tasks import TrainingBatch, build_task
from latentfm.training.trainer import Trainer

from ..conftest import TINY


def brute_force_cost(x0: torch.Tensor, x1: torch.Tensor) -> float:
    """The least summed squared distance over every one-to-one matching."""
    costs = torch.cdist(x1.flatten(1).double(), x0.flatten(1).double()).square()
    n = len(x0)
    return min(float(sum(costs[i, p[i]] for i in range(n))) for p in itertools.permutations(range(n)))


def test_ot_pairing_is_the_optimal_matching():
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        x0, x1 = torch.randn(6, 2, 2, generator=generator), torch.randn(6, 2, 2, generator=generator) + 1
        paired = minibatch_ot_pairing(x0, x1)
        assert sorted(paired.flatten(1).tolist()) == sorted(x0.flatten(1).tolist())  # a permutation of x0's rows
        cost = float((paired.double() - x1.double()).square().sum())
        assert cost == pytest.approx(brute_force_cost(x0, x1), rel=1e-12)
        assert cost <= float((x0.double() - x1.double()).square().sum())


def test_ot_pairing_refuses_unequal_batches():
    with pytest.raises(LatentFMError, match="one shape"):
        minibatch_ot_pairing(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(LatentFMError, match="flow.coupling='sinkhorn'"):
        build_coupling("sinkhorn")


def test_ot_with_labels_pairs_inside_each_class():
    generator = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(12, 3, generator=generator), torch.randn(12, 3, generator=generator)
    labels = torch.tensor([0, 1, 2] * 4)
    paired = ot_coupling(x0, x1, labels, slice(None))
    for label in range(3):
        rows = labels == label
        # each class's source is its own rows of x0, re-ordered optimally among themselves
        assert sorted(paired[rows].tolist()) == sorted(x0[rows].tolist())
        assert torch.allclose(paired[rows], minibatch_ot_pairing(x0[rows], x1[rows]))


def test_objective_draws_the_global_batch_and_keeps_the_rank_slice():
    objective = FlowObjective(path=CosinePath())
    x1 = torch.randn(8, 1, 2, 2)
    whole = objective(x1, torch.Generator().manual_seed(3))
    part = objective(x1[4:], torch.Generator().manual_seed(3), global_size=8, part=slice(4, 8))
    assert torch.equal(part.x0, whole.x0[4:]) and torch.equal(part.t, whole.t[4:])
    x_t, u_t = CosinePath().sample(whole.x0, x1, whole.t)
    assert torch.equal(whole.x_t, x_t) and torch.equal(whole.u_t, u_t)


OT_RANKS = """
import sys, torch
from latentfm.distributed import setup_distributed, teardown_distributed
from latentfm.flow.couplings import ot_coupling
info = setup_distributed("cpu")
generator = torch.Generator().manual_seed(0)
x0, x1 = torch.randn(16, 1, 3, 3, generator=generator), torch.randn(16, 1, 3, 3, generator=generator)
labels = torch.arange(16) % 3
part = slice(8 * info.rank, 8 * (info.rank + 1))
torch.save(ot_coupling(x0, x1[part], labels[part], part), sys.argv[1] + f"/rank{info.rank}.pt")
teardown_distributed()
"""


def test_two_ranks_pair_exactly_as_one_process(tmp_path):
    script = tmp_path / "ot_ranks.py"
    script.write_text(OT_RANKS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(
        [*command, str(tmp_path)], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    generator = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(16, 1, 3, 3, generator=generator), torch.randn(16, 1, 3, 3, generator=generator)
    one_process = ot_coupling(x0, x1, torch.arange(16) % 3, slice(None))
    two_ranks = torch.cat([torch.load(tmp_path / f"rank{r}.pt") for r in range(2)])
    assert torch.equal(one_process, two_ranks)


def test_training_with_ot_coupling_lowers_the_pairing_cost_and_resumes(tmp_path):
    config = load_config(None, [*TINY, "flow.coupling=ot", f"train.out_dir={tmp_path / 'run'}"])
    trainer = Trainer(config)
    batch = trainer.training_batch(0)
    x1, noise = batch.x1, torch.Generator().manual_seed(5)
    paired = trainer.objective(x1, noise, trainer.task.coupling_groups(batch))
    independent = FlowObjective()(x1, torch.Generator().manual_seed(5))
    assert torch.equal(paired.t, independent.t)
    assert (paired.x0 - x1).square().sum() < (independent.x0 - x1).square().sum()
    trainer.run()
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_the_class_task_is_the_default_and_unknown_tasks_are_refused():
    assert load_config(None).task.kind == "class"
    labels = torch.tensor([1, 2])
    batch = TrainingBatch(torch.zeros(2, 1, 2, 2), labels)
    assert torch.equal(build_task().training_condition(batch, encode=None).labels, labels)
    with pytest.raises(LatentFMError, match="task.kind='colorize' is unknown"):
        build_task(TaskConfig(kind="colorize"))
