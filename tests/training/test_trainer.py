"""The trainer: exact resume, checkpoints, logs, sample grids, DDP with 2 processes on gloo."""

import json

import pytest
import torch

from latentfm import checkpoint as ckpt
from latentfm.config import load_config
from latentfm.errors import LatentFMError
from latentfm.pipeline import FlowPipeline
from latentfm.training.loop import learning_rate
from latentfm.training.trainer import Trainer

from ..conftest import TINY, assert_same_tensors, run_torchrun, weights


def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path):
    straight = load_config(None, [*TINY, f"train.out_dir={tmp_path / 'straight'}", "train.steps=8"])
    Trainer(straight).run()
    split = load_config(None, [*TINY, f"train.out_dir={tmp_path / 'split'}", "train.steps=8"])
    Trainer(split).run(until_step=3)
    resumed = Trainer(split)
    assert resumed.step == 3
    resumed.run()
    for name in ("model", "ema", "optimizer"):
        assert_same_tensors(weights(tmp_path / "straight", name), weights(tmp_path / "split", name))
    moved = weights(tmp_path / "straight", "model")
    assert any(v.abs().sum() > 0 for k, v in moved.items() if "adaLN" in k)  # training did something


def test_run_writes_log_samples_and_a_loadable_checkpoint(tiny_config, tmp_path):
    tiny_config.train.sample_every = 6
    directory = Trainer(tiny_config).run()
    assert directory.name == "step_00000006"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6] and all(r["loss"] > 0 for r in records)
    assert (tmp_path / "run" / "samples" / "step_00000006.png").stat().st_size > 100
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    state = ckpt.read_state(directory)
    assert (
        state.kind == "flow"
        and state.step == 6
        and state.data.num_classes == 10
        and len(state.latent_norm["scale"]) == 1
    )
    pipe = FlowPipeline.from_checkpoint(tmp_path / "run")
    images, stats = pipe.generate(torch.tensor([0, 1, 2]), seed=3, settings=pipe.sampler.with_(nfe=4, solver="euler"))
    assert images.shape == (3, 1, 8, 8) and stats.nfe == 4
    assert images.min() >= -1 and images.max() <= 1


def test_resume_refuses_a_different_config(tiny_overrides):
    Trainer(load_config(None, tiny_overrides)).run(until_step=2)
    with pytest.raises(LatentFMError, match="model.depth"):
        Trainer(load_config(None, [*tiny_overrides, "model.depth=3"]))
    Trainer(load_config(None, [*tiny_overrides, "train.steps=4"]))  # extending a run is allowed


def test_keeps_only_the_newest_checkpoints(tiny_config, tmp_path):
    tiny_config.train.checkpoint_every = 1
    tiny_config.train.keep_checkpoints = 2
    Trainer(tiny_config).run()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_00000005", "step_00000006"]


def test_learning_rate_warmup_and_cosine(tiny_config):
    tiny_config.optim.warmup_steps, tiny_config.optim.schedule, tiny_config.train.steps = 4, "cosine", 14
    rates = [learning_rate(tiny_config.optim, tiny_config.train.steps, step) for step in range(14)]
    assert rates[0] == pytest.approx(tiny_config.optim.lr / 4) and rates[3] == pytest.approx(tiny_config.optim.lr)
    assert rates[4] == pytest.approx(tiny_config.optim.lr) and rates[-1] < 0.05 * tiny_config.optim.lr
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))


def test_bf16_autocast_step_runs(tiny_config):
    tiny_config.train.precision = "bf16"
    trainer = Trainer(tiny_config)
    loss = trainer.train_step()["loss"]
    assert torch.isfinite(loss)


def test_batch_larger_than_dataset_is_an_error(tiny_config):
    tiny_config.train.batch_size = 4096
    with pytest.raises(LatentFMError, match="exceeds"):
        Trainer(tiny_config)


@pytest.mark.parametrize(
    "task", [[], ["task.kind=inpaint"], ["task.kind=semantic"]], ids=["class", "inpaint", "semantic"]
)
def test_two_process_ddp_matches_one_process(task, tmp_path):
    """torchrun with 2 gloo ranks and batch 16 each equals one process with batch 32 (label dropout off); the
    inpainting masks of each sample are the same whichever rank draws them."""
    common = [*TINY, *task, "model.class_dropout=0.0", "train.steps=3"]
    Trainer(load_config(None, [*common, f"train.out_dir={tmp_path / 'one'}"])).run()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = run_torchrun("train", "--config", str(empty), *common, f"train.out_dir={tmp_path / 'two'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_tensors(weights(tmp_path / "one", "model"), weights(tmp_path / "two", "model"), exact=False)


def test_an_adaptive_sampler_in_the_sample_section_draws_training_grids(tmp_path):
    """0.1 accepted ``sample.solver: dopri5`` and then failed at the first grid."""
    run = tmp_path / "run"
    adaptive = ["sample.solver=dopri5", "sample.nfe=null"]  # dopri5 takes no budget; TINY gives sample.nfe=2
    config = load_config(None, [*TINY, *adaptive, "train.steps=2", "train.sample_every=2", f"train.out_dir={run}"])
    Trainer(config).run()
    assert (run / "samples" / "step_00000002.png").is_file()
    assert FlowPipeline.from_checkpoint(run).sampler.adaptive
