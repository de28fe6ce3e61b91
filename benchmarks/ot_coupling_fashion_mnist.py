"""Minibatch OT against the independent coupling on Fashion-MNIST: `configs/fashion_mnist.yaml` trained twice with
the same seed and steps, once with `flow.coupling=independent` and once with `flow.coupling=ot`, then judged.

For each run: training images/s (median of the logged windows; run it alone on the machine), and at Euler and
midpoint with 2, 4 and 8 NFE (guidance from the recipe's `sample` section), the Fréchet distance and class
accuracy of 1,000 EMA samples (100 per class, noise seed 0) under `benchmarks/judge.py`'s classifier. Also a
straightness figure per run: along 256 trajectories (Euler, 64 steps, no guidance) the mean over steps of
|v(x_t, t) - (x_1 - x_0)|² divided by the mean |x_1 - x_0|², zero for perfectly straight paths (rectified
flow's measure, Liu et al. 2022).

    python -m benchmarks.ot_coupling_fashion_mnist                                   # trains both (~45 min)
    python -m benchmarks.ot_coupling_fashion_mnist --independent-run runs/peer_torchcfm/fashion_mnist/latentfm

`--independent-run` reuses a finished run of the same recipe (checked: same config but for out_dir). Finished
runs in runs/ot_coupling are reused. Writes benchmarks/results/ot_coupling_fashion_mnist.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.judge import prepare_judge, run_cli
from latentfm.atomic import write_bytes_atomic
from latentfm.checkpoint import read_state, resolve_checkpoint
from latentfm.errors import first_difference
from latentfm.image_io import quantise
from latentfm.pipeline import FlowPipeline

RESULTS = Path(__file__).parent / "results" / "ot_coupling_fashion_mnist.json"
WORK = Path("runs/ot_coupling")
SETTINGS = [(solver, nfe) for solver in ("euler", "midpoint") for nfe in (2, 4, 8)]


def train(coupling: str, reuse: Path | None) -> tuple[Path, float | None]:
    """The run of the recipe with ``coupling`` (trained unless it exists) and its wall-clock minutes."""
    run = reuse or WORK / coupling
    if (run / "checkpoints").is_dir():
        return run, None
    start = time.perf_counter()
    run_cli("train", "--config", "configs/fashion_mnist.yaml", f"train.out_dir={run}", f"flow.coupling={coupling}")
    return run, (time.perf_counter() - start) / 60


def check_same_recipe(a: Path, b: Path) -> None:
    """Refuse two runs whose configs differ anywhere but in the coupling and the output directory."""
    configs = [read_state(resolve_checkpoint(run)).config for run in (a, b)]
    difference = first_difference(*configs, ignore=["flow.coupling", "train.out_dir"])
    if difference is not None:
        raise SystemExit(f"{a} and {b} differ in {difference.key}: {difference.old!r} against {difference.new!r}")


def images_per_s(run: Path) -> float:
    """The median images/s of a run's logged windows."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in records if "images_per_s" in r)


@torch.no_grad()
def straightness(pipe: FlowPipeline, n: int = 256, steps: int = 64) -> float:
    """Mean over Euler steps of |v - (x_1 - x_0)|², over the mean |x_1 - x_0|² (0: straight trajectories)."""
    x0 = pipe.source(n, seed=1)
    velocity = pipe.velocity(pipe.cycled_labels(n))
    x, velocities = x0, []
    for i in range(steps):
        t = torch.full((n,), i / steps)
        v = velocity(x, t)
        velocities.append(v)
        x = x + v / steps
    chord = x - x0
    deviation = torch.stack([(v - chord).square().flatten(1).sum(1) for v in velocities]).mean()
    return float(deviation / chord.square().flatten(1).sum(1).mean())


def judge_run(run: Path, judge, labels: torch.Tensor) -> dict:
    """FD, accuracy and seconds at every setting, and the straightness, of a run's EMA weights."""
    pipe = FlowPipeline.from_checkpoint(run)
    row = {"straightness": straightness(pipe), "cfg": pipe.sampler.cfg}
    for solver, nfe in SETTINGS:
        start = time.perf_counter()
        images, stats = pipe.generate(labels, seed=0, settings=pipe.sampler.with_(solver=solver, nfe=nfe))
        seconds = time.perf_counter() - start
        row[f"{solver}_{nfe}"] = {**judge(quantise(images), labels), "nfe": stats.nfe, "seconds": seconds}
        print(run, solver, nfe, row[f"{solver}_{nfe}"], flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--independent-run", type=Path, default=None, help="a finished run of the recipe to reuse")
    args = parser.parse_args()
    judge = prepare_judge(Path("runs/peer"))
    labels = torch.arange(10).repeat_interleave(100)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    runs = {
        coupling: train(coupling, args.independent_run if coupling == "independent" else None)
        for coupling in ("independent", "ot")
    }
    check_same_recipe(runs["independent"][0], runs["ot"][0])
    for coupling, (run, minutes) in runs.items():
        row = {"run": str(run), "images_per_s": images_per_s(run), **judge_run(run, judge, labels)}
        if minutes is not None:
            row["train_minutes"] = minutes
        results[coupling] = row
        write_bytes_atomic(RESULTS, json.dumps(results, indent=1).encode())
    print("| coupling | images/s | straightness | " + " | ".join(f"{s} {n}: FD, acc." for s, n in SETTINGS) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in SETTINGS) + " |")
    for coupling, row in results.items():
        cells = [f"{row[f'{s}_{n}']['fd']:.2f}, {row[f'{s}_{n}']['accuracy']:.1%}" for s, n in SETTINGS]
        print(f"| {coupling} | {row['images_per_s']:.0f} | {row['straightness']:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
