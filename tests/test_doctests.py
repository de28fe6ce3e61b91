"""Every ``>>>`` example in latentfm's docstrings runs and passes (examples that need a user's files, such as a
trained run, are marked ``# doctest: +SKIP``)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "latentfm"
MODULES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed"


def test_examples_exist_where_the_guide_promises_them():
    examples = {name: doctest.DocTestFinder().find(importlib.import_module(name)) for name in MODULES}
    counted = {name: sum(len(test.examples) for test in tests) for name, tests in examples.items()}
    for name in ("latentfm.sampling.sample", "latentfm.flow.couplings", "latentfm.errors", "latentfm.flow.objective"):
        assert counted[name] > 0, f"{name} lost its docstring examples"
