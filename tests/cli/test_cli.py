"""The command line: --help everywhere, one-line errors with exit code 2, train then sample."""

import argparse
import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from latentfm.cli import build_parser, main

from ..conftest import TINY

COMMANDS = [
    "train",
    "train-autoencoder",
    "encode",
    "sample",
    "inpaint",
    "search-schedule",
    "bench",
    "train-classifier",
    "stats",
    "eval",
    "demo",
    "info",
]


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "latentfm.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: latentfm" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
        (["train", "--config", "configs/digits.yaml", "train.stepz=3"], "unknown config key train.stepz"),
        (["train", "--config", "configs/digits.yaml", "data.dataset=cifar"], "cifar"),
        (
            ["sample", "--checkpoint", "nowhere", "--out", "x"],
            "unknown model 'nowhere': built-in models are digits, fashion-mnist",
        ),
    ],
)
def test_errors_are_one_line_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["sample", "--checkpoint", "x", "--out", "o", "--device", "tpu"], "'tpu' is not a device"),
        (["sample", "--checkpoint", "x", "--out", "o", "--batch-size", "0"], "--batch-size: 0 must be at least 1"),
        (["sample", "--checkpoint", "x", "--out", "o", "--seed", "-1"], "--seed: -1 must be at least 0"),
        (["eval", "--checkpoint", "x", "--reference", "r", "--features", "f", "--out", "o", "--n", "0"], "--n"),
        (["sample", "--checkpoint", "x", "--out", "pyproject.toml"], "pyproject.toml is a file: give a directory"),
        (["sample", "--checkpoint", "x", "--out", "pyproject.toml/a/b"], "pyproject.toml is a file"),
        (["stats", "--dataset", "digits", "--features", "f", "--out", "tests"], "tests is a directory"),
    ],
)
def test_bad_flags_are_refused_by_the_parser(args, message, capsys):
    """argparse's own refusal: exit 2, the usage line and one error line naming the flag."""
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err.strip().splitlines()[-1]


def test_every_command_shows_an_example_that_parses(capsys):
    from latentfm.cli.app import EXAMPLES, _commands

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = {name for name, _ in _commands(subparsers)}
    assert names == set(EXAMPLES)
    for name, example in EXAMPLES.items():
        args = parser.parse_args(shlex.split(example)[1:])
        assert args.run is not None or name == "bench", example
    with pytest.raises(SystemExit):
        parser.parse_args(["sample", "--help"])
    assert "example:\n  latentfm sample" in capsys.readouterr().out


def test_quiet_turns_progress_bars_off(trained_run, tmp_path):
    args = ["sample", "--checkpoint", str(trained_run), "--n", "2", "--nfe", "2", "--out", str(tmp_path)]
    quiet, loud = run_cli("--quiet", *args), run_cli(*args)
    assert quiet.returncode == loud.returncode == 0
    assert "generating" not in quiet.stderr and "generating" in loud.stderr


def test_version_and_a_missing_gpu_named_by_its_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("latentfm 0.")
    if not torch.cuda.is_available():
        assert main(["sample", "--checkpoint", "x", "--out", "o", "--device", "cuda"]) == 2
        assert "--device cuda: CUDA is not available here" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--config", "configs/digits.yaml", *TINY, f"train.out_dir={run_dir}"]) == 0
    return run_dir


def test_sample_writes_grid_and_arrays_deterministically(trained_run, tmp_path):
    args = ["sample", "--checkpoint", str(trained_run), "--labels", "1,3-4", "--n", "5", "--nfe", "4", "--cfg", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--batch-size", "3"]) == 0
    first, second = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    assert first["images"].shape == (15, 8, 8) and first["images"].dtype == np.uint8
    assert first["labels"].tolist() == [1] * 5 + [3] * 5 + [4] * 5
    assert np.array_equal(first["images"], second["images"])  # same seed, any batch size
    assert (tmp_path / "a" / "samples.png").stat().st_size > 100
    assert '"nfe": 4' in (tmp_path / "a" / "stats.json").read_text()


def test_sample_writes_one_png_per_image_and_an_adm_batch(trained_run, tmp_path):
    args = ["sample", "--checkpoint", str(trained_run), "--labels", "2,5", "--n", "3", "--nfe", "2", "--out"]
    assert main([*args, str(tmp_path), "--png-folder", "--adm-npz"]) == 0
    images = np.load(tmp_path / "samples.npz")["images"]
    pngs = sorted((tmp_path / "images").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(6)]
    assert np.array_equal(np.asarray(Image.open(pngs[4])), images[4])
    adm = np.load(tmp_path / "samples_adm.npz")
    assert adm["arr_0"].shape == (6, 8, 8, 3) and adm["arr_0"].dtype == np.uint8
    assert np.array_equal(adm["arr_0"][..., 1], images) and adm["arr_1"].tolist() == [2, 2, 2, 5, 5, 5]


def test_sample_defaults_to_the_checkpoints_sample_section(trained_run, tmp_path):
    from latentfm.checkpoint import read_state, resolve_checkpoint
    from latentfm.config import config_from_dict

    recipe = config_from_dict(read_state(resolve_checkpoint(trained_run)).config).sample
    assert (recipe.solver, recipe.budget, recipe.cfg) == ("heun", 2, 2.0)  # configs/digits.yaml with TINY's nfe
    assert main(["sample", "--checkpoint", str(trained_run), "--n", "2", "--out", str(tmp_path / "a")]) == 0
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert (stats["solver"], stats["nfe"], stats["sampler"]["cfg"]) == (recipe.solver, recipe.budget, recipe.cfg)
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(trained_run),
                "--n",
                "2",
                "--solver",
                "euler",
                "--nfe",
                "3",
                "--cfg",
                "1",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert (stats["solver"], stats["nfe"], stats["sampler"]["cfg"]) == ("euler", 3, 1.0)


def test_guidance_interval_comes_from_the_recipe_or_the_command_line(trained_run, tmp_path, capsys):
    from latentfm.config import load_config

    recipe = load_config("configs/digits.yaml", ["sample.guidance_interval=[0.25, 1.0]"]).sample
    assert recipe.guidance_interval == (0.25, 1.0)
    base = ["sample", "--checkpoint", str(trained_run), "--n", "3", "--solver", "euler", "--nfe", "4", "--cfg", "3"]
    for name, flags in [
        ("recipe", []),
        ("all", ["--guidance-interval", "all"]),
        ("late", ["--guidance-interval", "0.5,1"]),
    ]:
        assert main([*base, *flags, "--out", str(tmp_path / name)]) == 0
    images = {name: np.load(tmp_path / name / "samples.npz")["images"] for name in ("recipe", "all", "late")}
    assert np.array_equal(images["recipe"], images["all"])  # configs/digits.yaml guides everywhere
    assert not np.array_equal(images["all"], images["late"])
    assert json.loads((tmp_path / "late" / "stats.json").read_text())["sampler"]["guidance_interval"] == [0.5, 1.0]
    assert json.loads((tmp_path / "all" / "stats.json").read_text())["sampler"]["guidance_interval"] == [0.0, 1.0]
    capsys.readouterr()
    for bad, message in [("0.9,0.1", "guidance_interval=(0.9, 0.1)"), ("late", "give LOW,HIGH")]:
        assert main([*base, "--guidance-interval", bad, "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_sample_rejects_bad_labels(trained_run, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(trained_run), "--labels", "12", "--out", str(tmp_path)]) == 2
    assert "not a class" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(trained_run), "--labels", "x", "--out", str(tmp_path)]) == 2
    assert main(["sample", "--checkpoint", str(trained_run), "--nfe", "1", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nfe", "0"], "--nfe 0: must be at least 1"),
        (["--cfg", "strong"], "--cfg strong: expected a number"),
        (["--turbo", "H1P2R1", "--steps", "3"], "--turbo H1P2R1 is a whole sampler: drop --steps"),
    ],
)
def test_a_bad_sampler_flag_is_one_line_and_writes_nothing(trained_run, tmp_path, capsys, flags, message):
    assert main(["sample", "--checkpoint", str(trained_run), *flags, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"latentfm: error: {message}" and not (tmp_path / "out").exists()


def test_info_tells_what_a_run_holds(trained_run, capsys):
    assert main(["info", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "flow checkpoint at step 6" in out and "task: class" in out and "classes: 10 (0, 1, 2" in out
    assert "checkpoints in" in out and "step_00000006" in out and "ema.safetensors (" in out
    assert main(["info", str(trained_run / "nowhere")]) == 2
