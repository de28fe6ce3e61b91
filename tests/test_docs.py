"""The public API lines of README.md and ARCHITECTURE.md run as written: every ```python block is executed, in
order, in a directory whose ``runs/`` holds tiny runs under the names the blocks load (trained on digits in
seconds, with the task each name stands for)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from latentfm.config import load_config
from latentfm.training.fewstep_trainer import FewStepTrainer, fewstep_config
from latentfm.training.trainer import Trainer

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "ARCHITECTURE.md")
# The run names the documents load, and the task overrides of the tiny run that stands for each.
RUNS = {
    "digits": [],
    "fashion_mnist": [],
    "fashion_mnist_inpaint": ["task.kind=inpaint", "flow.coupling=independent"],
    "fashion_mnist_semantic": ["task.kind=semantic", "task.map_dropout=0.2"],
}
TUNED = {"fashion_mnist_fewstep": "fashion_mnist"}  # a few-step run and the run it tunes


def python_blocks(document: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every ```python block of ``document``."""
    text = (ROOT / document).read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


BLOCKS = [(document, line, code) for document in DOCUMENTS for line, code in python_blocks(document)]


@pytest.fixture(scope="module")
def runs_directory(tmp_path_factory):
    """A directory with ``runs/NAME`` for every name in ``RUNS``."""
    root = tmp_path_factory.mktemp("docs")
    for name, task in RUNS.items():
        overrides = [*TINY, *task, "train.steps=4", f"train.out_dir={root / 'runs' / name}"]
        Trainer(load_config(None, overrides)).run()
    for name, teacher in TUNED.items():
        overrides = [
            "train.steps=2",
            "train.batch_size=32",
            "train.device=cpu",
            f"train.out_dir={root / 'runs' / name}",
        ]
        FewStepTrainer(fewstep_config(root / "runs" / teacher, "configs/fashion_mnist_fewstep.yaml", overrides)).run()
    return root


def test_the_documents_have_python_blocks():
    assert len(BLOCKS) >= 4, "README.md lost its Python examples"


@pytest.mark.parametrize(("document", "line", "code"), BLOCKS, ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_python_block_runs_as_written(document, line, code, runs_directory, monkeypatch):
    loaded = set(re.findall(r'from_checkpoint\("runs/([\w.]+)"\)', code))
    known = set(RUNS) | set(TUNED)
    assert loaded <= known, f"{document}:{line} loads {sorted(loaded - known)}: add a tiny run to RUNS or TUNED"
    monkeypatch.chdir(runs_directory)
    exec(compile(code, f"{document}:{line}", "exec"), {"__name__": "__docs__"})
