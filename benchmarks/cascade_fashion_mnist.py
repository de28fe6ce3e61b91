"""A cascade against a one-stage model on Fashion-MNIST: a 14×14 class model boosted ×2 by the `upsample` flow,
against the 28×28 class recipe, FD and class accuracy against total sampling time.

Both generate 1,000 images (100 per class, sample i from noise (0, i)) with guidance 2 for t >= 0.25 (the class
recipe's); the cascade passes latents to the upsampler without decoding (``FlowPipeline.upsample`` of
``Latents``, as `latentfm sample --upsample` does). The 14×14 base is the class recipe at data.image_size=14 with
channel multipliers 1, 2 (Pillow's bicubic down-sizing; the upsampler trained on area down-sampling). Judged with
the judge of `benchmarks/judge.py` (FD against the test split, class accuracy). One job at a time.

    latentfm train --config configs/fashion_mnist.yaml data.image_size=14 model.channel_mult=[1,2] \\
        train.out_dir=runs/base14
    python -m benchmarks.cascade_fashion_mnist --base28 runs/peer_torchcfm/fashion_mnist_v7/latentfm \\
        --base14 runs/base14 --upsampler runs/fashion_mnist_upsample --judge runs/peer

Writes benchmarks/results/cascade_fashion_mnist.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks.judge import prepare_judge
from benchmarks.peer_torchcfm import RESULTS
from latentfm.atomic import write_bytes_atomic
from latentfm.image_io import quantise
from latentfm.pipeline import FlowPipeline, Latents
from latentfm.sampling import SamplerSettings
from latentfm.sampling.settings import interval_from_text

GUIDED = dict(cfg=2.0, guidance_interval=interval_from_text("0.25,1"))
ONE_STAGE = [("midpoint", 8), ("midpoint", 4), ("euler", 4), ("euler", 2)]
CASCADES = [(("midpoint", 8), ("euler", 4)), (("midpoint", 4), ("euler", 2)), (("midpoint", 4), ("euler", 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base28", required=True, help="a run of configs/fashion_mnist.yaml")
    parser.add_argument("--base14", required=True, help="the same recipe at data.image_size=14")
    parser.add_argument("--upsampler", required=True, help="a run of configs/fashion_mnist_upsample.yaml")
    parser.add_argument("--judge", default="runs/peer", help="directory of the judge")
    args = parser.parse_args()
    judge = prepare_judge(Path(args.judge))
    base28, base14 = FlowPipeline.from_checkpoint(args.base28), FlowPipeline.from_checkpoint(args.base14)
    upsampler = FlowPipeline.from_checkpoint(args.upsampler)
    labels = torch.arange(10).repeat_interleave(100)
    rows = []
    for solver, nfe in ONE_STAGE:
        start = time.perf_counter()
        images, _ = base28.generate(labels, seed=0, settings=SamplerSettings(solver=solver, nfe=nfe, **GUIDED))
        rows.append(
            {"model": "28×28 class model", "sampler": f"{solver} {nfe}", "seconds": time.perf_counter() - start}
        )
        rows[-1].update(judge(quantise(images), labels))
        print(json.dumps(rows[-1]))
    for (solver, nfe), (up_solver, up_nfe) in CASCADES:
        start = time.perf_counter()
        low, _ = base14.latents(labels, seed=0, settings=SamplerSettings(solver=solver, nfe=nfe, **GUIDED))
        carried = Latents(low, base14.latent_norm, base14.autoencoder_identity or {})
        images, _ = upsampler.upsample(carried, seed=0, settings=SamplerSettings(solver=up_solver, nfe=up_nfe))
        sampler = f"{solver} {nfe} + {up_solver} {up_nfe}"
        rows.append({"model": "14×14 + ×2 flow", "sampler": sampler, "seconds": time.perf_counter() - start})
        rows[-1].update(judge(quantise(images), labels))
        print(json.dumps(rows[-1]))
    report = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}", "rows": rows}
    write_bytes_atomic(RESULTS / "cascade_fashion_mnist.json", json.dumps(report, indent=1).encode())
    lines = ["| model | sampler (NFE) | s per 1,000 | FD | accuracy |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {r['model']} | {r['sampler']} | {r['seconds']:.1f} | {r['fd']:.3f} | {100 * r['accuracy']:.1f}% |"
        for r in rows
    ]
    write_bytes_atomic(RESULTS / "cascade_fashion_mnist.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
