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


def test_sample_rejects_bad_labels(trained_run, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(trained_run), "--labels", "12", "--out", str(tmp_path)]) == 2
    assert "not a class" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(trained_run), "--labels", "x", "--out", str(tmp_path)]) == 2
    assert main(["sample", "--checkpoint", str(trained_run), "--nfe", "1", "--out", str(tmp_path)]) == 2
