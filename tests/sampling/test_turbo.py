"""FlowTurbo: turbo programs and their NFE, the refiner step, compiled steps, the refiner and its training."""

from __future__ import annotations

import json

import pytest
import torch

from latentfm import checkpoint as ckpt
from latentfm.cli import main
from latentfm.config import load_config
from latentfm.errors import LatentFMError
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings, sample
from latentfm.sampling.schedules import time_grid
from latentfm.sampling.solvers import integrate, rules_nfe, rules_refiner_calls, turbo_rules
from latentfm.training.refiner_trainer import RefinerTrainer, refiner_config
from latentfm.training.trainer import Trainer

from ..conftest import TINY, assert_same_tensors, run_torchrun, weights


def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -x + torch.sin(3 * t)[:, None]


@pytest.mark.parametrize("n,m,k", [(1, 5, 3), (2, 0, 0), (0, 3, 2), (0, 0, 2), (3, 1, 0)])
def test_turbo_programs_spend_2n_plus_m_teacher_calls_and_2k_refiner_calls(n, m, k):
    rules = turbo_rules(f"H{n}P{m}R{k}")
    assert rules_nfe(rules) == 2 * n + m + (n == 0) and rules_refiner_calls(rules) == 2 * k
    x, stats = sample(field, torch.randn(3, 2), settings=SamplerSettings(turbo=f"H{n}P{m}R{k}"), refine=lambda *a: a[2])
    assert stats.nfe == 2 * n + m + (n == 0) and stats.refiner_calls == 2 * k and stats.steps == n + m + k


def test_a_refiner_that_returns_the_true_velocity_makes_refine_steps_heun_steps():
    x0, times = torch.randn(4, 3), torch.linspace(0, 1, 5).tolist()
    exact = lambda x, t, v: field(x, t)  # noqa: E731
    turbo, stats = sample(field, x0, settings=SamplerSettings(turbo="H1P0R3"), refine=exact)
    torch.testing.assert_close(turbo, integrate(field, x0, times, ["heun"] * 4))
    assert stats.nfe == 2
    pc, _ = sample(field, x0, settings=SamplerSettings(turbo="H1P3R0", schedule="shift:2"))
    torch.testing.assert_close(pc, integrate(field, x0, time_grid("shift:2", 4).tolist(), ["heun"] + ["pc"] * 3))


@pytest.mark.parametrize(
    "program,message",
    [
        ("H1P2", "write H{n}P{m}R{k}"),
        ("H0P0R0", "1 <= n + m + k <= 1000"),
        ("H999P2R0", "<= 1000"),
        ("h1p1r1", "write H"),
    ],
)
def test_bad_turbo_programs_are_one_line(program, message):
    with pytest.raises(LatentFMError, match=message.replace("{", r"\{").replace("}", r"\}").replace("+", r"\+")):
        SamplerSettings(turbo=program)


def test_turbo_replaces_the_solver_and_budget():
    with pytest.raises(LatentFMError, match="give no nfe, steps or options"):
        SamplerSettings(turbo="H1P1R1", nfe=8)
    recipe = SamplerSettings(solver="euler", nfe=8, cfg=2.0)
    turbo = recipe.with_given(turbo="H1P2R1")
    assert turbo.turbo == "H1P2R1" and turbo.nfe is None and turbo.cfg == 2.0
    assert turbo.with_given(solver="heun").turbo is None
    with pytest.raises(LatentFMError, match="need a velocity refiner"):
        sample(field, torch.zeros(1, 1), settings=SamplerSettings(turbo="H1P0R1"))


def test_compiled_steps_match_eager_steps_and_fall_back_with_one_line(monkeypatch, capsys):
    x0 = torch.randn(4, 3)
    eager, _ = sample(field, x0, settings=SamplerSettings(turbo="H1P2R1"), refine=lambda x, t, v: v)
    compiled, stats = sample(
        field, x0, settings=SamplerSettings(turbo="H1P2R1", compile="default"), refine=lambda x, t, v: v
    )
    torch.testing.assert_close(compiled, eager)
    assert stats.nfe == 4 and stats.refiner_calls == 2

    from latentfm.sampling import solvers

    def unavailable(function, mode=None):
        def fail(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler")

        return fail

    monkeypatch.setattr(torch, "compile", unavailable)
    monkeypatch.setattr(solvers, "_COMPILED", {})
    fallback, _ = sample(field, x0, settings=SamplerSettings(solver="heun", nfe=4, compile="default"))
    torch.testing.assert_close(fallback, sample(field, x0, SamplerSettings("heun", nfe=4))[0])
    assert capsys.readouterr().err.count("torch.compile is unavailable here") == 1
    with pytest.raises(LatentFMError, match="not a torch.compile mode"):
        SamplerSettings(compile="fast")


# -- the refiner and its training --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny class-conditional digits DiT."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    Trainer(load_config(None, [*TINY, "train.steps=4", f"train.out_dir={run}"])).run()
    return run


REFINER = ["refiner.hidden_size=16", "refiner.num_heads=2", "train.steps=4", "train.batch_size=32", "train.device=cpu"]
REFINER += ["train.checkpoint_every=0", "sample.turbo=H1P1R2", "train.sample_per_class=1", "train.ema_decay=0.9"]


@pytest.fixture(scope="module")
def refiner_run(teacher, tmp_path_factory):
    run = tmp_path_factory.mktemp("refiner") / "run"
    RefinerTrainer(refiner_config(teacher, None, [*REFINER, "train.sample_every=4", f"train.out_dir={run}"])).run()
    return run


def test_a_refiner_trains_against_its_teacher_and_records_it(teacher, refiner_run):
    state = ckpt.read_state(ckpt.resolve_checkpoint(refiner_run), "refiner")
    pipe = FlowPipeline.from_checkpoint(teacher)
    assert state.teacher["weights_sha256"] == ckpt.weights_sha256(pipe.model)
    assert state.config["model"] == load_config(None, TINY).__dict__["model"].__dict__  # the teacher's data and model
    refined = pipe.with_refiner(refiner_run)
    teacher_size = sum(p.numel() for p in pipe.model.parameters())
    assert sum(p.numel() for p in refined.refiner.parameters()) < 0.3 * teacher_size
    images, stats = refined.generate(torch.arange(3), seed=1, settings=SamplerSettings(turbo="H1P1R2", cfg=2.0))
    assert images.shape == (3, 1, 8, 8) and stats.nfe == 3 and stats.refiner_calls == 4
    assert stats.network_passes == 6 and stats.refiner_passes == 8  # guided: two passes per call
    assert (refiner_run / "samples" / "step_00000004.png").is_file()


def test_label_dropout_is_the_same_for_input_velocity_target_and_refiner(teacher, tmp_path):
    config = refiner_config(teacher, None, [*REFINER, "refiner.label_dropout=0.5", f"train.out_dir={tmp_path}"])
    trainer = RefinerTrainer(config)
    seen = []
    teacher_velocity, refiner = trainer.teacher.model_velocity, trainer.train_model.forward
    trainer.teacher.model_velocity = lambda x, t, cond: seen.append(cond.labels) or teacher_velocity(x, t, cond)
    trainer.train_model.forward = lambda x, t, v, cond: seen.append(cond.labels) or refiner(x, t, v, cond)
    trainer.train_step()
    assert len(seen) == 3 and torch.equal(seen[0], seen[1]) and torch.equal(seen[0], seen[2])
    assert 0 < (seen[0] == 10).sum() < len(seen[0])  # some labels dropped (null label 10), not all


def test_refiner_resume_is_exact(teacher, tmp_path):
    whole = refiner_config(teacher, None, [*REFINER, f"train.out_dir={tmp_path / 'whole'}"])
    RefinerTrainer(whole).run()
    parts = refiner_config(teacher, None, [*REFINER, f"train.out_dir={tmp_path / 'parts'}"])
    RefinerTrainer(parts).run(until_step=2)
    RefinerTrainer(parts).run()
    for name in ("model", "ema"):
        a = ckpt.read_tensors(ckpt.resolve_checkpoint(tmp_path / "whole"), name)
        b = ckpt.read_tensors(ckpt.resolve_checkpoint(tmp_path / "parts"), name)
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_turbo_sampling_from_the_command_line(teacher, refiner_run, tmp_path, capsys):
    args = ["sample", "--checkpoint", str(teacher), "--labels", "0,1", "--n", "2", "--seed", "1"]
    assert main([*args, "--refiner", str(refiner_run), "--turbo", "H1P1R2", "--out", str(tmp_path / "a")]) == 0
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["nfe"] == 3 and stats["refiner_calls"] == 4 and stats["solver"] == "H1P1R2"
    assert main([*args, "--turbo", "H1P1R2", "--nfe", "8", "--out", str(tmp_path / "b")]) == 2
    assert "--turbo H1P1R2 is a whole sampler: drop --nfe" in capsys.readouterr().err
    assert main([*args, "--turbo", "H1P1R2", "--out", str(tmp_path / "c")]) == 2
    assert "refine steps need a velocity refiner" in capsys.readouterr().err
    assert main([*args, "--turbo", "H2P1R0", "--out", str(tmp_path / "d")]) == 0  # no refiner steps: none needed
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_refiner_of_other_teacher_weights_is_refused(refiner_run, tmp_path, capsys):
    other = tmp_path / "other"
    Trainer(load_config(None, [*TINY, "train.steps=4", "train.seed=1", f"train.out_dir={other}"])).run()
    args = ["sample", "--checkpoint", str(other), "--refiner", str(refiner_run), "--turbo", "H1P1R2"]
    assert main([*args, "--labels", "0", "--n", "1", "--out", str(tmp_path / "out")]) == 2
    assert "was trained for other weights" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(refiner_run), "--n", "1", "--out", str(tmp_path / "x")]) == 2
    assert "is a checkpoint of kind 'refiner', expected 'flow'" in capsys.readouterr().err


def test_train_refiner_command_and_its_config_sections(teacher, tmp_path, capsys):
    config = tmp_path / "refiner.yaml"
    config.write_text("refiner:\n  hidden_size: 16\n  num_heads: 2\ntrain:\n  steps: 2\n  batch_size: 32\n")
    out = f"train.out_dir={tmp_path / 'run'}"
    args = ["train-refiner", "--teacher", str(teacher), "--config", str(config)]
    assert main([*args, "train.device=cpu", "train.checkpoint_every=0", out]) == 0
    assert ckpt.read_state(ckpt.resolve_checkpoint(tmp_path / "run"), "refiner").step == 2
    config.write_text("model:\n  depth: 1\n")
    assert main([*args, out]) == 2
    assert "section model is the teacher's" in capsys.readouterr().err


def test_two_process_refiner_training_matches_one_process(teacher, tmp_path):
    """torchrun with 2 gloo ranks and half the batch each trains the refiner one process trains (labels dropped
    per sample from the global batch's draws, whatever rank holds the sample)."""
    RefinerTrainer(refiner_config(teacher, None, [*REFINER, f"train.out_dir={tmp_path / 'one'}"])).run()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    args = ["train-refiner", "--teacher", str(teacher), "--config", str(empty), *REFINER]
    result = run_torchrun(*args, f"train.out_dir={tmp_path / 'two'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_tensors(weights(tmp_path / "one", "model"), weights(tmp_path / "two", "model"), exact=False)


def test_bench_turbo_measures_programs_on_named_grids(teacher, refiner_run, tmp_path, capsys):
    classifier, reference, out = tmp_path / "clf.safetensors", tmp_path / "ref.npz", tmp_path / "bench"
    assert main(["train-classifier", "--dataset", "digits", "--out", str(classifier), "--epochs", "1"]) == 0
    stats = ["stats", "--dataset", "digits", "--split", "train", "--features", str(classifier), "--out", str(reference)]
    assert main(stats) == 0
    args = ["bench", "turbo", "--checkpoint", str(teacher), "--refiner", str(refiner_run), "--n", "20"]
    args += ["--features", str(classifier), "--reference", str(reference)]
    assert main([*args, "--samplers", "euler:4,H1P1R2,H1P1R2@cosine", "--out", str(out)]) == 0
    rows = {row["sampler"]: row for row in json.loads((out / "turbo.json").read_text())["rows"]}
    assert rows["euler:4"]["nfe"] == 4 and rows["H1P1R2@cosine"]["nfe"] == 3
    assert rows["H1P1R2@cosine"]["refiner_calls"] == 4 and rows["H1P1R2"]["fd"] != rows["H1P1R2@cosine"]["fd"]
    assert (out / "turbo.png").is_file() and "| H1P1R2@cosine | eager | 3 | 4 |" in (out / "turbo.md").read_text()
    assert main([*args, "--samplers", "H1P1R2@karras", "--out", str(tmp_path / "refused")]) == 2
    assert "karras" in capsys.readouterr().err and not (tmp_path / "refused").exists()
