"""Semantic maps on Fashion-MNIST: does a generated image follow its map? The `semantic` recipe against a class-only
model as the chance baseline, on the maps of the first 1,000 test images.

The maps come from the images by the recipe's rule (8-bit grey level < 32: background, 32..127: dark, >= 128:
light; ``latentfm.tasks.intensity_maps``). Each model generates one image per map with the image's true label
(sample i from noise (0, i)); the map of each generated image is derived again by the same rule and compared with
the input map: mean IoU over the three classes (``latentfm.metrics.mean_iou``). The judge of `benchmarks/judge.py`
gives the FD against the test split's statistics and the class accuracy. Real test images score mIoU 1 by
construction.

    python -m benchmarks.semantic_fashion_mnist --task runs/fashion_mnist_semantic \\
        --class-model runs/peer_torchcfm/fashion_mnist_v7/latentfm --judge runs/peer

Writes benchmarks/results/semantic_fashion_mnist.json and .md and a picture (maps, generated images). One job at a
time on an idle machine.
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
from latentfm.data import load_dataset
from latentfm.data.arrays import DEFAULT_IDX_PATH
from latentfm.image_io import make_grid, quantise, save_png
from latentfm.metrics import mean_iou
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings
from latentfm.sampling.settings import interval_from_text
from latentfm.tasks import intensity_maps

COUNT = 1000
BANDS = [32, 128]
INTERVAL = interval_from_text("0.25,1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="a run of configs/fashion_mnist_semantic.yaml")
    parser.add_argument("--class-model", required=True, help="a run of configs/fashion_mnist.yaml (equal size)")
    parser.add_argument("--judge", default="runs/peer", help="directory of the judge (trained there when missing)")
    args = parser.parse_args()
    judge = prepare_judge(Path(args.judge))
    task, classes = FlowPipeline.from_checkpoint(args.task), FlowPipeline.from_checkpoint(args.class_model)
    images, labels = load_dataset("idx", DEFAULT_IDX_PATH, "test").batch(torch.arange(COUNT))
    maps = intensity_maps(images, BANDS)
    rows_spec = [
        ("semantic task", task, SamplerSettings(solver="midpoint", nfe=8), maps),
        ("semantic task, guidance 2", task, SamplerSettings(solver="midpoint", nfe=8, cfg=2.0), maps),
        ("semantic task, no map", task, SamplerSettings(solver="midpoint", nfe=8), None),
        ("class model (chance)", classes, classes.sampler, None),
    ]
    report = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}", "rows": []}
    pictures = [(maps[:10].float() / (len(BANDS)) * 2 - 1)]
    for name, pipe, settings, given in rows_spec:
        start = time.perf_counter()
        generated, stats = pipe.generate(labels, seed=0, settings=settings, semantic=given)
        seconds = time.perf_counter() - start
        samples = quantise(generated)
        row = {"model": name, "solver": settings.solver, "nfe": stats.nfe, "cfg": settings.cfg}
        row["miou"] = mean_iou(intensity_maps(generated, BANDS), maps, len(BANDS) + 1)
        row.update(judge(samples, labels), ms_per_image=1000 * seconds / COUNT)
        report["rows"].append(row)
        pictures.append(generated[:10])
        print(json.dumps(row))
    write_bytes_atomic(RESULTS / "semantic_fashion_mnist.json", json.dumps(report, indent=1).encode())
    lines = ["| model | sampler | mIoU | FD | accuracy | ms / image |", "| --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        sampler = f"{r['solver']} {r['nfe']} NFE, guidance {r['cfg']:g}"
        lines.append(
            f"| {r['model']} | {sampler} | {r['miou']:.3f} | {r['fd']:.3f} | {100 * r['accuracy']:.1f}% | "
            f"{r['ms_per_image']:.1f} |"
        )
    write_bytes_atomic(RESULTS / "semantic_fashion_mnist.md", ("\n".join(lines) + "\n").encode())
    tiles = quantise(torch.cat(pictures)).permute(0, 2, 3, 1).numpy()[..., 0]
    save_png(make_grid(tiles, columns=10, upscale=2), RESULTS / "semantic_fashion_mnist.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
