"""Guidance in a limited interval (Kynkäänniemi et al. 2024) on the Fashion-MNIST recipe and on the peer.

Samples 1,000 images (100 per class, noise seed S) of a latentfm run and of the torchcfm peer's weights at guidance
2 with guidance applied only for t in [LOW, 1], and a few grid shifts, and judges them with the judge of
`benchmarks/judge.py` (FD against the test split, class accuracy). One job at a time on an idle machine.

    python -m benchmarks.guidance_interval_fashion_mnist --run runs/peer_torchcfm/fashion_mnist_v7/latentfm \\
        --peer runs/peer_torchcfm/fashion_mnist_v7/torchcfm.safetensors

Writes benchmarks/results/guidance_interval_fashion_mnist.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.judge import prepare_judge
from benchmarks.peer_torchcfm import RESULTS, peer_samples
from latentfm.atomic import write_bytes_atomic
from latentfm.image_io import quantise
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings

# (solver, NFE, schedule, guidance interval)
LATENTFM_ROWS = [
    ("euler", 8, "uniform", (0.0, 1.0)),
    ("euler", 8, "uniform", (0.125, 1.0)),
    ("euler", 8, "uniform", (0.25, 1.0)),
    ("euler", 8, "uniform", (0.375, 1.0)),
    ("euler", 8, "shift:0.7", (0.0, 1.0)),
    ("euler", 8, "shift:1.5", (0.0, 1.0)),
    ("euler", 4, "uniform", (0.25, 1.0)),
    ("euler", 4, "uniform", (0.5, 1.0)),
    ("midpoint", 4, "uniform", (0.0, 1.0)),
    ("midpoint", 4, "uniform", (0.25, 1.0)),
    ("midpoint", 8, "uniform", (0.25, 1.0)),
]
PEER_INTERVALS = ["all", "0.25,1", "0.375,1", "0.5,1"]


def latentfm_row(pipe: FlowPipeline, row: tuple, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    """uint8 samples of one latentfm row and their seconds."""
    solver, nfe, schedule, interval = row
    settings = SamplerSettings(solver=solver, nfe=nfe, schedule=schedule, cfg=2.0, guidance_interval=interval)
    start = time.perf_counter()
    images, _ = pipe.generate(labels, seed=seed, settings=settings)
    return quantise(images), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run (or checkpoint) of configs/fashion_mnist.yaml")
    parser.add_argument("--peer", required=True, help="the peer's weights from benchmarks/peer_torchcfm.py")
    parser.add_argument("--judge", default="runs/peer", help="directory of the judge (trained there when missing)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (sample i from (seed, i))")
    args = parser.parse_args()
    judge = prepare_judge(Path(args.judge))
    labels = torch.arange(10).repeat_interleave(100)
    pipe, rows = FlowPipeline.from_checkpoint(args.run), []
    for row in LATENTFM_ROWS:
        images, seconds = latentfm_row(pipe, row, labels, args.seed)
        rows.append(
            {
                "model": "latentfm",
                "solver": row[0],
                "nfe": row[1],
                "schedule": row[2],
                "interval": list(row[3]),
                "seconds": seconds,
                **judge(images, labels),
            }
        )
        print(rows[-1], flush=True)
    for interval in PEER_INTERVALS:
        setting = ("euler", 8, 2.0) if interval == "all" else ("euler", 8, 2.0, interval)
        images, seconds = peer_samples(Path(args.peer), setting, args.seed, 100)
        rows.append(
            {
                "model": "torchcfm",
                "solver": "euler",
                "nfe": 8,
                "schedule": "uniform",
                "interval": interval,
                "seconds": seconds,
                **judge(images, labels),
            }
        )
        print(rows[-1], flush=True)
    report = {"run": args.run, "peer": args.peer, "seed": args.seed, "cfg": 2.0, "samples": len(labels), "rows": rows}
    write_bytes_atomic(RESULTS / "guidance_interval_fashion_mnist.json", json.dumps(report, indent=1).encode())
    print("| model | sampler | guidance for | FD | class accuracy | s / 1000 samples |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['model']} | {r['solver']} {r['nfe']} NFE, {r['schedule']} | {r['interval']} | {r['fd']:.3f} | "
            f"{r['accuracy']:.1%} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
