"""Fashion-MNIST under the evaluation protocol, with the in-project classifier's features:

1. `latentfm train-classifier --dataset fashion_mnist` (skipped when the weights exist),
2. `latentfm stats` of the 60,000 training and 10,000 test images,
3. the floor: FD, KID and precision/recall of the real test images against the real training images,
4. `latentfm eval` of a checkpoint (default: the pixel-space foundation model) for each solver:NFE setting, once
   with --n samples for the metrics and once with --timing-n samples for the time per 1,000 samples and the
   latency (run this on an otherwise idle machine: the timings are only as quiet as the machine).

    python benchmarks/evaluation_fashion_mnist.py                      # 10,000 samples per setting, guidance 2
    python benchmarks/evaluation_fashion_mnist.py --settings euler:8 --n 2000

Everything resumes (evaluations keep their shards). Writes benchmarks/results/evaluation_fashion_mnist/
summary.json, summary.md and fd_vs_nfe.png; prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latentfm import cli
from latentfm.atomic import write_bytes_atomic
from latentfm.bench.plot import save_line_chart
from latentfm.evaluation import distribution_metrics
from latentfm.metrics.reference import load_reference

RESULTS = Path(__file__).parent / "results" / "evaluation_fashion_mnist"
WORK = Path("runs/evaluation_fashion_mnist")


def run(*args: str) -> None:
    """One latentfm command; stop on failure."""
    if cli.main(list(args)) != 0:
        raise SystemExit(f"latentfm {' '.join(args)} failed")


def real_floor(train_path: Path, test_path: Path) -> dict[str, float]:
    """The metrics of the real test images against the real training images (the best a model can hope for)."""
    train, test = load_reference(train_path), load_reference(test_path)
    return distribution_metrics(train, test.mu, test.sigma, test.features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/fashion_mnist", help="the model to evaluate")
    parser.add_argument("--settings", default="euler:2,euler:4,euler:8,euler:16,midpoint:8,heun:8")
    parser.add_argument("--cfg", default="2", help="guidance weight")
    parser.add_argument("--n", default="10000", help="samples per setting (the size of the real test set)")
    parser.add_argument("--timing-n", default="1000", help="samples of a separate run that times generation alone")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    classifier = WORK / "classifier.safetensors"
    minutes = {}
    if not classifier.is_file():
        start = time.perf_counter()
        run("train-classifier", "--dataset", "fashion_mnist", "--out", str(classifier), "--device", args.device)
        minutes["classifier"] = (time.perf_counter() - start) / 60
    for split in ("train", "test"):
        stats = WORK / f"{split}.npz"
        if not stats.is_file():
            start = time.perf_counter()
            run(
                "stats",
                "--dataset",
                "fashion_mnist",
                "--split",
                split,
                "--features",
                str(classifier),
                "--out",
                str(stats),
                "--device",
                args.device,
            )
            minutes[f"stats_{split}"] = (time.perf_counter() - start) / 60
    summary = {
        "classifier": json.loads(classifier.with_suffix(".report.json").read_text()),
        "floor": real_floor(WORK / "train.npz", WORK / "test.npz"),
        "minutes": minutes,
        "rows": [],
    }
    for setting in args.settings.split(","):
        solver, nfe = setting.split(":")
        row = {"solver": solver}
        for part, n in (("quality", args.n), ("timing", args.timing_n)):
            out = WORK / f"{Path(args.checkpoint).name}_{solver}_{nfe}_cfg{args.cfg}" / part
            run(
                "eval",
                "--checkpoint",
                args.checkpoint,
                "--reference",
                str(WORK / "train.npz"),
                "--features",
                str(classifier),
                "--n",
                n,
                "--solver",
                solver,
                "--nfe",
                nfe,
                "--cfg",
                args.cfg,
                "--out",
                str(out),
                "--device",
                args.device,
            )
            row[part] = json.loads((out / "report.json").read_text())
        quality, timing = row.pop("quality"), row.pop("timing")
        row.update(
            nfe=quality["nfe"],
            metrics=quality["metrics"],
            machine=timing["machine"],
            latency=timing["latency"],
            generation_s_per_1000=timing["generation_s_per_1000"],
        )
        summary["rows"].append(row)
    write_bytes_atomic(RESULTS / "summary.json", json.dumps(summary, indent=1).encode())
    write_bytes_atomic(RESULTS / "summary.md", markdown(summary, args).encode())
    series: dict[str, list[tuple[float, float]]] = {}
    for row in summary["rows"]:
        series.setdefault(row["solver"], []).append((row["nfe"], row["metrics"]["fd"]))
    series["real test (floor)"] = [
        (min(p[0] for s in series.values() for p in s), summary["floor"]["fd"]),
        (max(p[0] for s in series.values() for p in s), summary["floor"]["fd"]),
    ]
    save_line_chart(series, RESULTS / "fd_vs_nfe.png", f"FD to real train ({args.checkpoint})", "NFE", "FD")
    print((RESULTS / "summary.md").read_text())


def markdown(summary: dict, args: argparse.Namespace) -> str:
    """The table for BENCHMARKS.md."""
    floor = summary["floor"]
    lines = [
        "| samples | solver | NFE | FD | KID ×10³ | precision | recall | class accuracy | s / 1000 samples |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| real test (10,000) | | | {floor['fd']:.3f} | {1000 * floor['kid']:.2f} | {floor['precision']:.3f} | "
        f"{floor['recall']:.3f} | {100 * summary['classifier']['test_accuracy']:.1f}% | |",
    ]
    for row in summary["rows"]:
        m = row["metrics"]
        lines.append(
            f"| {args.checkpoint}, guidance {args.cfg} | {row['solver']} | {row['nfe']} | {m['fd']:.3f} | "
            f"{1000 * m['kid']:.2f} | {m['precision']:.3f} | {m['recall']:.3f} | {100 * m['accuracy']:.1f}% | "
            f"{row['generation_s_per_1000']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
