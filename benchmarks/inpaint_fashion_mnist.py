"""Inpainting on Fashion-MNIST: the trained `inpaint` task against two baselines, on the first 1,000 test images.

Masks: a centred 20x20 box (51% of the 28x28 image) and free-form strokes (``latentfm.data.masks.stroke_mask``
drawn until at least U(0.3, 0.5) of the image is covered; image i draws from seed (1, i)). Methods:

- mean fill: the hole filled with the mean training image;
- blend: a class model of equal size (configs/fashion_mnist.yaml) with the training-free blend: the known region
  of x_t is kept on the path through the original, x_t = (1 - t) x0 + t x1, at every solver evaluation
  (RePaint/SD3-inpaint style; in velocity form: the known region moves with x1 - x0);
- task: the `inpaint` recipe (configs/fashion_mnist_inpaint.yaml) through ``FlowPipeline.inpaint``.

Both flows use the null label (no class given) unless a row says "true labels" (then guidance 2 for t >= 0.25,
the class recipe's). Every completion keeps the known pixels exactly. Judged with the judge of
`benchmarks/judge.py`: 8-bit PSNR against the originals (whole image), FD of the completions' features against
the originals' features, class accuracy against the true labels. Sample i of every flow starts from noise (0, i).

    python -m benchmarks.inpaint_fashion_mnist --task runs/fashion_mnist_inpaint \\
        --class-model runs/peer_torchcfm/fashion_mnist_v7/latentfm --judge runs/peer

Writes benchmarks/results/inpaint_fashion_mnist.json and .md and a picture of the first completions. One job at a
time on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.judge import Judge, prepare_judge
from benchmarks.peer_torchcfm import RESULTS
from latentfm.atomic import write_bytes_atomic
from latentfm.data import load_dataset
from latentfm.data.arrays import DEFAULT_IDX_PATH
from latentfm.data.masks import stroke_mask
from latentfm.image_io import make_grid, quantise, save_png
from latentfm.metrics import FeatureStats, frechet_distance, psnr_8bit
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings, sample
from latentfm.sampling.settings import interval_from_text

COUNT = 1000
GUIDED = dict(cfg=2.0, guidance_interval=interval_from_text("0.25,1"))


def box_masks(count: int) -> torch.Tensor:
    """The centred 20x20 box of every image: ``[count, 1, 28, 28]``."""
    masks = torch.zeros(count, 1, 28, 28)
    masks[:, :, 4:24, 4:24] = 1
    return masks


def stroke_masks(count: int) -> torch.Tensor:
    """Free-form masks covering at least U(0.3, 0.5) of each image, image i from seed (1, i)."""
    masks = []
    for index in range(count):
        generator = torch.Generator().manual_seed(1_000_000 + index)
        fraction = 0.3 + 0.2 * torch.rand((), generator=generator).item()
        masks.append(stroke_mask(28, fraction, generator))
    return torch.stack(masks)[:, None]


def blend_completions(
    pipe: FlowPipeline, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None, settings
) -> torch.Tensor:
    """Training-free inpainting with a class model: the known region follows the path through the original."""
    parts = []
    for start in range(0, len(images), 250):
        x1, mask = images[start : start + 250], masks[start : start + 250]
        batch_labels = None if labels is None else labels[start : start + 250]
        x0 = pipe.source(len(x1), seed=0, first_index=start)
        guided = pipe.velocity(batch_labels, settings.cfg, settings.guidance_interval, n=len(x1))
        velocity = lambda x, t, guided=guided, x0=x0, x1=x1, mask=mask: mask * guided(x, t) + (1 - mask) * (x1 - x0)  # noqa: E731
        z, _ = sample(velocity, x0, settings=settings)
        parts.append(mask * pipe.decode(z) + (1 - mask) * x1)
    return torch.cat(parts)


def judge_completions(judge: Judge, originals: torch.Tensor, completions: torch.Tensor, labels: torch.Tensor):
    """PSNR, FD against the originals' features, and class accuracy of float completions."""
    stats = {}
    for name, images in (("original", originals), ("completion", completions)):
        features, predicted = judge.features(quantise(images))
        stats[name] = FeatureStats()
        stats[name].update(features.numpy().astype(np.float64))
        if name == "completion":
            accuracy = (predicted == labels).float().mean().item()
    fd = frechet_distance(
        stats["completion"].mean, stats["completion"].cov, stats["original"].mean, stats["original"].cov
    )
    return {"psnr_db": psnr_8bit(originals, completions).mean().item(), "fd": fd, "accuracy": accuracy}


def run_rows(task: FlowPipeline, classes: FlowPipeline, judge: Judge, mean_image: torch.Tensor, mask_kind: str):
    """Every method on one kind of mask; returns rows and the first completions of each method."""
    data = load_dataset("idx", DEFAULT_IDX_PATH, "test")
    images, labels = data.batch(torch.arange(COUNT))
    masks = box_masks(COUNT) if mask_kind == "box" else stroke_masks(COUNT)
    rows, pictures = [], {"original": images[:8], "masked": images[:8] * (1 - masks[:8]) + masks[:8]}
    methods = [
        ("mean fill", None, None, None),
        ("blend, class model", classes, SamplerSettings(solver="midpoint", nfe=8), None),
        ("blend, class model, true labels", classes, SamplerSettings(solver="midpoint", nfe=8, **GUIDED), labels),
        ("task", task, SamplerSettings(solver="midpoint", nfe=8), None),
        ("task, midpoint 4 NFE", task, SamplerSettings(solver="midpoint", nfe=4), None),
        ("task, true labels", task, SamplerSettings(solver="midpoint", nfe=8, **GUIDED), labels),
    ]
    for name, pipe, settings, given in methods:
        start, nfe = time.perf_counter(), 0
        if pipe is None:
            completions = masks * mean_image + (1 - masks) * images
        elif pipe is classes:
            completions, nfe = blend_completions(pipe, images, masks, given, settings), settings.budget
        else:
            completions, stats = pipe.inpaint(images, masks, n=1, labels=given, seed=0, settings=settings)
            nfe = stats.nfe
        seconds = time.perf_counter() - start
        row = {"masks": mask_kind, "method": name, "nfe": nfe, "ms_per_image": 1000 * seconds / COUNT}
        rows.append({**row, **judge_completions(judge, images, completions, labels)})
        pictures[name] = completions[:8]
        print(json.dumps(rows[-1]))
    coverage = masks.mean().item()
    return rows, pictures, coverage


def markdown(report: dict) -> str:
    lines = [
        f"Masks: {', '.join(f'{k} ({100 * v:.0f}% of the pixels)' for k, v in report['coverage'].items())}.",
        "",
        "| masks | method | NFE | PSNR dB | FD | accuracy | ms / image |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['masks']} | {r['method']} | {r['nfe']} | {r['psnr_db']:.2f} | {r['fd']:.3f} | "
            f"{100 * r['accuracy']:.1f}% | {r['ms_per_image']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="a run of configs/fashion_mnist_inpaint.yaml")
    parser.add_argument("--class-model", required=True, help="a run of configs/fashion_mnist.yaml (equal size)")
    parser.add_argument("--judge", default="runs/peer", help="directory of the judge (trained there when missing)")
    args = parser.parse_args()
    judge = prepare_judge(Path(args.judge))
    task, classes = FlowPipeline.from_checkpoint(args.task), FlowPipeline.from_checkpoint(args.class_model)
    train = load_dataset("idx", DEFAULT_IDX_PATH, "train")
    mean_image = train.batch(torch.arange(len(train)))[0].mean(0, keepdim=True)
    report = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}", "rows": []}
    report["coverage"], grids = {}, []
    for mask_kind in ("box", "stroke"):
        rows, pictures, report["coverage"][mask_kind] = run_rows(task, classes, judge, mean_image, mask_kind)
        report["rows"] += rows
        grids.append(torch.cat(list(pictures.values())))
    report["picture_rows"] = list(pictures)
    write_bytes_atomic(RESULTS / "inpaint_fashion_mnist.json", json.dumps(report, indent=1).encode())
    write_bytes_atomic(RESULTS / "inpaint_fashion_mnist.md", markdown(report).encode())
    tiles = quantise(torch.cat(grids)).permute(0, 2, 3, 1).numpy()[..., 0]
    save_png(make_grid(tiles, columns=8, upscale=2), RESULTS / "inpaint_fashion_mnist.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
