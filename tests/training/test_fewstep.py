"""Few-step tuning (``latentfm train-fewstep``): its two objectives, its checkpoint and teacher, resume and
torchrun, sampling it with ``--solver fewstep``, and the inputs it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentfm import checkpoint as ckpt
from latentfm.cli import main
from latentfm.condition import Condition
from latentfm.config import load_config
from latentfm.errors import LatentFMError
from latentfm.models.dit import DiT
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings, sample
from latentfm.training.fewstep_trainer import FewStepTrainer, fewstep_config
from latentfm.training.trainer import Trainer

from ..conftest import TINY, assert_same_tensors, run_torchrun, weights

FEWSTEP = ["train.steps=4", "train.batch_size=32", "train.device=cpu", "train.checkpoint_every=0"]
FEWSTEP += ["train.sample_per_class=1", "train.ema_decay=0.9", "sample.solver=fewstep", "sample.nfe=2"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny class-conditional digits DiT."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    Trainer(load_config(None, [*TINY, "train.steps=4", f"train.out_dir={run}"])).run()
    return run


def tuned(teacher, out, objective="consistency", *extra):
    return FewStepTrainer(fewstep_config(teacher, None, [*FEWSTEP, f"fewstep.objective={objective}", *extra, out]))


@pytest.mark.parametrize("objective", ["consistency", "shortcut"])
def test_a_tuned_model_records_its_teacher_and_samples_in_one_and_two_steps(teacher, tmp_path, objective):
    run = tmp_path / "run"
    tuned(teacher, f"train.out_dir={run}", objective, "train.sample_every=4").run()
    state = ckpt.read_state(ckpt.resolve_checkpoint(run), "fewstep")
    teacher_pipe = FlowPipeline.from_checkpoint(teacher)
    assert state.teacher["weights_sha256"] == ckpt.weights_sha256(teacher_pipe.model)
    assert state.config["model"]["step_input"] == (objective == "shortcut")
    pipe = FlowPipeline.from_pretrained(run)
    assert pipe.fewstep_nfe == 8 and pipe.sampler.solver == "fewstep"
    for nfe in (1, 2, 4):
        images, stats = pipe.generate(torch.arange(3), seed=1, settings=pipe.sampler.with_(nfe=nfe, cfg=2.0))
        assert images.shape == (3, 1, 8, 8) and stats.nfe == nfe and stats.network_passes == 2 * nfe
    assert (run / "samples" / "step_00000004.png").is_file()


def test_the_consistency_target_is_flow_matching_at_gap_one_and_the_own_velocity_as_it_falls(teacher, tmp_path):
    trainer = tuned(teacher, f"train.out_dir={tmp_path}", "consistency", "fewstep.gap_start=1", "fewstep.gap_end=1")
    cond, flow = trainer.path_batch()
    x, t, target = trainer._consistency_pairs(cond, flow.x_t, flow.t, flow.u_t)
    assert torch.equal(x, flow.x_t) and torch.equal(target, flow.u_t)
    trainer.config.fewstep.gap_start = trainer.config.fewstep.gap_end = 0.25
    _, _, target = trainer._consistency_pairs(cond, flow.x_t, flow.t, flow.u_t)
    r = flow.t + 0.25 * (1 - flow.t)
    own = trainer.model(flow.x_t + (r - flow.t)[:, None, None, None] * flow.u_t, r, cond).detach()
    torch.testing.assert_close(target, 0.25 * flow.u_t + 0.75 * own)


def test_the_gap_falls_geometrically_over_the_run(teacher, tmp_path):
    trainer = tuned(
        teacher, f"train.out_dir={tmp_path}", "consistency", "fewstep.gap_start=0.5", "fewstep.gap_end=0.05"
    )
    gaps = []
    for step in range(4):
        trainer.step = step
        gaps.append(trainer.gap())
    assert gaps[0] == pytest.approx(0.5) and gaps[-1] == pytest.approx(0.05)
    assert gaps[1] / gaps[0] == pytest.approx(gaps[2] / gaps[1])


def test_shortcut_rows_jump_from_their_grid_and_the_others_keep_flow_matching(teacher, tmp_path):
    trainer = tuned(teacher, f"train.out_dir={tmp_path}", "shortcut", "fewstep.shortcut_fraction=0.5")
    cond, flow = trainer.path_batch()
    draws = torch.rand(len(flow.t), 2, generator=torch.Generator().manual_seed(0))
    x, t, target, jumped = trainer._shortcut_pairs(cond, flow.x_t, flow.t, flow.u_t, draws)
    jumping = draws[:, 0] < 0.5
    assert 0 < jumping.sum() < len(jumping)
    steady = ~jumping
    assert torch.equal(x[steady], flow.x_t[steady]) and torch.equal(target[steady], flow.u_t[steady])
    assert (jumped.step[steady] == 0).all() and torch.equal(t[steady], flow.t[steady])
    jumps = jumped.step[jumping]
    assert ((jumps >= 1 / 64) & (jumps <= 1)).all() and torch.equal(torch.log2(jumps), torch.log2(jumps).round())
    starts = t[jumping]
    assert torch.allclose(starts / jumps, (starts / jumps).round()) and (starts + jumps <= 1 + 1e-6).all()


def test_labels_are_dropped_alike_for_the_network_and_its_target(teacher, tmp_path):
    trainer = tuned(teacher, f"train.out_dir={tmp_path}", "consistency", "model.class_dropout=0.5")
    seen = []
    forward = trainer.model.forward
    trainer.model.forward = lambda x, t, cond: seen.append(cond.labels) or forward(x, t, cond)
    trainer.train_step()
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])
    assert 0 < (seen[0] == 10).sum() < len(seen[0])  # the trainer drops labels (null label 10), not the network
    assert trainer.model.y_embedder.dropout == 0


def test_fewstep_resume_is_exact(teacher, tmp_path):
    tuned(teacher, f"train.out_dir={tmp_path / 'whole'}", "shortcut").run()
    tuned(teacher, f"train.out_dir={tmp_path / 'parts'}", "shortcut").run(until_step=2)
    tuned(teacher, f"train.out_dir={tmp_path / 'parts'}", "shortcut").run()
    for name in ("model", "ema"):
        assert_same_tensors(weights(tmp_path / "whole", name), weights(tmp_path / "parts", name))


def test_two_process_fewstep_tuning_matches_one_process(teacher, tmp_path):
    tuned(teacher, f"train.out_dir={tmp_path / 'one'}", "shortcut").run()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    args = ["train-fewstep", "--teacher", str(teacher), "--config", str(empty), *FEWSTEP]
    result = run_torchrun(*args, "fewstep.objective=shortcut", f"train.out_dir={tmp_path / 'two'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_tensors(weights(tmp_path / "one", "model"), weights(tmp_path / "two", "model"), exact=False)


def test_a_step_input_starts_at_zero_and_then_tells_the_model_its_jump():
    model = DiT(in_channels=1, image_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=3, step_input=True)
    for name, weight in model.named_parameters():  # a trained flow model: every weight nonzero but the new input's
        if not name.startswith("step_embedder.mlp.2"):
            torch.nn.init.normal_(weight, std=0.2)
    plain = DiT(in_channels=1, image_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=3)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("step_")})
    x, t, cond = torch.randn(2, 1, 8, 8), torch.rand(2), Condition(labels=torch.tensor([0, 1]))
    jump = cond.with_step(torch.full((2,), 0.5))
    torch.testing.assert_close(model(x, t, jump), plain(x, t, cond))
    torch.nn.init.normal_(model.step_embedder.mlp[2].weight)
    assert not torch.allclose(model(x, t, jump), model(x, t, cond))
    torch.testing.assert_close(model(x, t, cond), model(x, t, cond.with_step(torch.zeros(2))))  # None: jump 0


def test_the_fewstep_solver_tells_the_velocity_each_jump():
    seen = []

    def velocity(x, t, step=None):
        seen.append((t[0].item(), None if step is None else round(step[0].item(), 6)))
        return torch.ones_like(x)

    x, stats = sample(velocity, torch.zeros(2, 3), SamplerSettings(solver="fewstep", nfe=4))
    assert seen == [(0.0, 0.25), (0.25, 0.25), (0.5, 0.25), (0.75, 0.25)] and stats.nfe == 4
    torch.testing.assert_close(x, torch.ones(2, 3))


def test_fewstep_from_the_command_line_and_what_it_refuses(teacher, tmp_path, capsys):
    config = tmp_path / "fewstep.yaml"
    config.write_text("fewstep:\n  max_nfe: 4\nsample:\n  solver: fewstep\n  nfe: 1\n")
    run = tmp_path / "run"
    args = ["train-fewstep", "--teacher", str(teacher), "--config", str(config), *FEWSTEP[:5]]
    assert main([*args, f"train.out_dir={run}"]) == 0
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(run), "--labels", "0,1", "--n", "2", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["solver"] == "fewstep" and stats["nfe"] == 1 and stats["steps"] == 1
    x = tmp_path / "x"
    sample_args = ["sample", "--labels", "0", "--n", "1", "--out", str(x)]
    refused = [
        ([*sample_args, "--checkpoint", str(run), "--nfe", "8"], "tuned for at most 4 steps"),
        (
            [*sample_args, "--checkpoint", str(teacher), "--solver", "fewstep"],
            "a model tuned by latentfm train-fewstep",
        ),
        (["train-fewstep", "--teacher", str(run), "--config", str(config)], "kind 'fewstep', expected 'flow'"),
        ([*args, "fewstep.objective=meanflow", f"train.out_dir={x}"], "fewstep.objective='meanflow'"),
        ([*args, "fewstep.gap_start=0.1", "fewstep.gap_end=0.2", f"train.out_dir={x}"], "exceeds fewstep.gap_start"),
    ]
    capsys.readouterr()
    for command, message in refused:
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not x.exists()
    config.write_text("task:\n  kind: inpaint\n")
    assert main([*args, f"train.out_dir={tmp_path}/x"]) == 2
    assert "section task is the teacher's" in capsys.readouterr().err


def test_a_refiner_or_autoencoder_is_not_a_teacher(teacher, tmp_path):
    refiner = tmp_path / "refiner"
    refiner_args = ["refiner.hidden_size=16", "refiner.num_heads=2", f"train.out_dir={refiner}", *FEWSTEP[:5]]
    assert main(["train-refiner", "--teacher", str(teacher), "--config", _empty(tmp_path), *refiner_args]) == 0
    with pytest.raises(LatentFMError, match="kind 'refiner', expected 'flow'"):
        fewstep_config(refiner, None)


def _empty(tmp_path) -> str:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return str(path)


@pytest.mark.parametrize("name", ["digits_fewstep", "fashion_mnist_fewstep", "imagenet256_dit_b2_fewstep"])
def test_the_fewstep_recipes_read(teacher, name):
    config = fewstep_config(teacher, Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    assert config.fewstep.teacher == str(teacher) and config.sample.solver == "fewstep"
    assert config.model.depth == 2  # the teacher's model, not the recipe file's


def test_a_tuned_inpainting_model_keeps_its_task(tmp_path):
    teacher = tmp_path / "teacher"
    task = ["task.kind=inpaint", "flow.coupling=independent"]
    Trainer(load_config(None, [*TINY, *task, "train.steps=2", f"train.out_dir={teacher}"])).run()
    tuned(teacher, f"train.out_dir={tmp_path / 'run'}", "shortcut").run()
    pipe = FlowPipeline.from_checkpoint(tmp_path / "run")
    image, mask = torch.rand(1, 8, 8) * 2 - 1, torch.zeros(8, 8)
    mask[2:6, 2:6] = 1
    completions, stats = pipe.inpaint(image, mask, n=2, settings=pipe.sampler.with_(nfe=1))
    assert stats.nfe == 1 and completions.shape == (2, 1, 8, 8)
    assert torch.equal(completions[:, :, mask == 0], image[None].expand(2, -1, -1, -1)[:, :, mask == 0])
