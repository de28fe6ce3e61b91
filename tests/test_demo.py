"""The main job end to end: a shortened `latentfm demo` must already give recognisable digits."""

import json

import numpy as np

from latentfm.cli import main

SHORT_STEPS = 1000  # the full demo trains 3000 steps; see BENCHMARKS.md for its figures


def test_demo_writes_outputs_and_generated_digits_are_recognisable(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", str(SHORT_STEPS)]) == 0
    arrays = np.load(out / "samples.npz")
    assert arrays["images"].shape == (500, 8, 8) and arrays["images"].dtype == np.uint8
    assert np.bincount(arrays["labels"]).tolist() == [50] * 10
    assert (out / "samples.png").stat().st_size > 1000
    report = json.loads((out / "report.json").read_text())
    assert report["nfe"] == 8 and report["train_steps"] == SHORT_STEPS
    assert report["classifier_accuracy_real_test"] >= 0.95
    assert report["class_accuracy_generated"] >= 0.90, report
    assert str(out / "samples.png") in capsys.readouterr().out
