"""The command line: --help everywhere, one-line errors with exit code 2, train then sample."""

import json
import subprocess
import sys

import numpy as np
import pytest

from latentfm.cli import build_parser, main

from .conftest import TINY

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
        (["sample", "--checkpoint", "nowhere", "--out", "x"], "nowhere is neither a checkpoint"),
    ],
)
def test_errors_are_one_line_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


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


def test_sample_defaults_to_the_checkpoints_sample_section(trained_run, tmp_path):
    from latentfm.checkpoint import read_state, resolve_checkpoint
    from latentfm.config import config_from_dict
    from latentfm.sampling import settings_from_section

    recipe = settings_from_section(config_from_dict(read_state(resolve_checkpoint(trained_run)).config).sample)
    assert (recipe.solver, recipe.budget, recipe.cfg) == ("heun", 2, 2.0)  # configs/digits.yaml with TINY's nfe
    assert main(["sample", "--checkpoint", str(trained_run), "--n", "2", "--out", str(tmp_path / "a")]) == 0
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert (stats["solver"], stats["nfe"], stats["cfg"]) == (recipe.solver, recipe.budget, recipe.cfg)
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
    assert (stats["solver"], stats["nfe"], stats["cfg"]) == ("euler", 3, 1.0)


def test_guidance_interval_comes_from_the_recipe_or_the_command_line(trained_run, tmp_path, capsys):
    from latentfm.config import load_config
    from latentfm.sampling import settings_from_section

    recipe = load_config("configs/digits.yaml", ["sample.guidance_interval=[0.25, 1.0]"]).sample
    assert settings_from_section(recipe).guidance_interval == (0.25, 1.0)
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
    assert json.loads((tmp_path / "late" / "stats.json").read_text())["guidance_interval"] == "0.5,1"
    assert json.loads((tmp_path / "all" / "stats.json").read_text())["guidance_interval"] == "all"
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
