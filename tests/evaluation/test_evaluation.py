"""`latentfm train-classifier`, `stats` and `eval` end to end on the built-in digits: reports, resume, protocol
refusals, torchrun sharding; dataset names on the command line."""

import json

import numpy as np
import pytest

from latentfm.cli import dataset_config, main
from latentfm.data import load_data_config
from latentfm.errors import LatentFMError
from latentfm.metrics.reference import load_reference

from ..conftest import TINY, run_torchrun


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A digits classifier, train/test reference statistics and a tiny trained flow model."""
    root = tmp_path_factory.mktemp("evaluation")
    classifier = root / "clf.safetensors"
    assert (
        main(
            ["train-classifier", "--dataset", "digits", "--out", str(classifier), "--epochs", "6", "--batch-size", "32"]
        )
        == 0
    )
    for split in ("train", "test"):
        out = str(root / f"{split}.npz")
        assert (
            main(["stats", "--dataset", "digits", "--split", split, "--features", str(classifier), "--out", out]) == 0
        )
    run = root / "run"
    assert main(["train", "--config", "configs/digits.yaml", *TINY, "train.steps=20", f"train.out_dir={run}"]) == 0
    return root, classifier, run


def eval_args(setup, out, *extra):
    root, classifier, run = setup
    return [
        "eval",
        "--checkpoint",
        str(run),
        "--reference",
        str(root / "train.npz"),
        "--features",
        str(classifier),
        "--n",
        "150",
        "--shard-size",
        "64",
        "--nfe",
        "4",
        "--cfg",
        "2",
        "--device",
        "cpu",
        "--latency-repeats",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def test_classifier_and_reference_statistics(setup):
    root, classifier, _ = setup
    report = json.loads(classifier.with_suffix(".report.json").read_text())
    assert report["test_accuracy"] > 0.8 and report["train_images"] == 1500
    train, test = load_reference(root / "train.npz"), load_reference(root / "test.npz")
    assert (train.count, test.count) == (1500, 297) and train.features.shape == (1500, train.mu.shape[0])
    assert train.protocol == test.protocol and train.protocol["resolution"] == "1x8x8"
    assert train.source["split"] == "train" and len(train.source["fingerprint"]) == 64


def test_eval_reports_and_resumes_identically(setup, tmp_path):
    out = tmp_path / "eval"
    assert main(eval_args(setup, out)) == 0
    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]
    assert report["nfe"] == 4 and report["settings"]["n"] == 150 and report["protocol"]["generated"] == 150
    assert metrics["fd"] > 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert 0 <= metrics["accuracy"] <= 1 and report["latency"]["with_decode"]["batch_size"] == 64
    assert "| FD |" in (out / "report.md").read_text() and (out / "samples.png").is_file()
    shards = sorted((out / "shards").iterdir())
    assert [p.name for p in shards] == ["00000000.npz", "00000064.npz", "00000128.npz"]
    features = np.load(shards[1])["features"]
    shards[1].unlink()  # as if interrupted
    assert main(eval_args(setup, out, "--batch-size", "50")) == 0  # batch size does not change samples
    again = json.loads((out / "report.json").read_text())["metrics"]
    assert again["fd"] == metrics["fd"] and again["accuracy"] == metrics["accuracy"]
    np.testing.assert_array_equal(np.load(shards[1])["features"], features)


def test_eval_refuses_other_settings_and_other_protocols(setup, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(eval_args(setup, out, "--n", "64")) == 0
    assert main(eval_args(setup, out, "--n", "64", "--nfe", "6")) == 2
    assert "holds an evaluation with sampler.nfe = 4, not 6" in capsys.readouterr().err
    root, _, _ = setup
    other = root / "other_clf.safetensors"
    assert (
        main(
            [
                "train-classifier",
                "--dataset",
                "digits",
                "--out",
                str(other),
                "--epochs",
                "1",
                "--seed",
                "1",
                "--no-test-split",
            ]
        )
        == 0
    )
    assert main([*eval_args(setup, tmp_path / "b")[:-2], "--features", str(other), "--out", str(tmp_path / "b")]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "were made with features_sha256" in message and "latentfm stats" in message


def test_eval_takes_the_sampler_flags_left_out_from_the_checkpoint(setup, tmp_path):
    assert main(eval_args(setup, tmp_path / "e", "--n", "64")) == 0
    sampler = json.loads((tmp_path / "e" / "report.json").read_text())["settings"]["sampler"]
    # configs/digits.yaml samples with heun; the command line gave --nfe 4 and --cfg 2
    assert (sampler["solver"], sampler["nfe"], sampler["cfg"], sampler["schedule"]) == ("heun", 4, 2.0, "uniform")
    assert sampler["guidance_interval"] is None  # configs/digits.yaml guides everywhere
    assert main(eval_args(setup, tmp_path / "f", "--n", "64", "--guidance-interval", "0.5,1")) == 0
    report = json.loads((tmp_path / "f" / "report.json").read_text())
    assert report["settings"]["sampler"]["guidance_interval"] == [0.5, 1.0]
    assert report["metrics"] != json.loads((tmp_path / "e" / "report.json").read_text())["metrics"]
    assert "guidance 2.0 for t in [0.5,1]" in (tmp_path / "f" / "report.md").read_text()


def test_torchrun_shards_equal_one_process(setup, tmp_path):
    single = tmp_path / "one"
    assert main(eval_args(setup, single)) == 0
    result = run_torchrun(*eval_args(setup, tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("00000000.npz", "00000064.npz", "00000128.npz"):
        one, two = np.load(single / "shards" / name), np.load(tmp_path / "two" / "shards" / name)
        np.testing.assert_array_equal(one["features"], two["features"])
        np.testing.assert_array_equal(one["predictions"], two["predictions"])
    reports = [json.loads((d / "report.json").read_text())["metrics"] for d in (single, tmp_path / "two")]
    # Equal features; the float64 metrics may differ in the last bit because torchrun ranks run BLAS with one thread.
    assert reports[0] == pytest.approx(reports[1], rel=1e-12, abs=0)


def test_dataset_names_and_npz_datasets(tmp_path, setup):
    assert dataset_config("fashion_mnist").dataset == "idx"
    assert dataset_config("folder:/x", "test", 32).path == "/x"
    assert dataset_config("configs/digits.yaml", "test").split == "test"
    with pytest.raises(LatentFMError, match="--dataset 'cifar'"):
        dataset_config("cifar")
    _, _, run = setup
    assert main(["sample", "--checkpoint", str(run), "--n", "3", "--nfe", "2", "--out", str(tmp_path / "s")]) == 0
    data = load_data_config(dataset_config(f"npz:{tmp_path / 's' / 'samples.npz'}"))
    assert data.images.shape == (30, 1, 8, 8) and data.labels.tolist()[:4] == [0, 0, 0, 1]


def test_training_logs_fd_and_accuracy_every_n_steps(setup, tmp_path):
    root, classifier, _ = setup
    run = tmp_path / "run"
    evaluation = ["eval.every=3", "eval.samples=20", f"eval.features={classifier}", f"eval.reference={root}/train.npz"]
    assert main(["train", "--config", "configs/digits.yaml", *TINY, *evaluation, f"train.out_dir={run}"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval_fd" in r]
    assert [r["step"] for r in evaluations] == [3, 6]
    assert all(r["eval_fd"] > 0 and 0 <= r["eval_accuracy"] <= 1 and r["eval_nfe"] == 2 for r in evaluations)
    bad = ["train", "--config", "configs/digits.yaml", *TINY, "eval.every=3", f"train.out_dir={tmp_path / 'b'}"]
    assert main(bad) == 2


def test_npz_datasets_refuse_malformed_arrays(tmp_path):
    np.savez(tmp_path / "nchw.npz", images=np.zeros((4, 3, 8, 8), np.uint8))
    np.savez(tmp_path / "labels.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(LatentFMError, match="uint8 NHW or NHWC"):
        load_data_config(dataset_config(f"npz:{tmp_path / 'nchw.npz'}"))
    with pytest.raises(LatentFMError, match=r"\(3,\) labels for 4 images"):
        load_data_config(dataset_config(f"npz:{tmp_path / 'labels.npz'}"))
