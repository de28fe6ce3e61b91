"""Super-resolution ×2 on Fashion-MNIST (14×14 → 28×28): the `upsample` flow against bicubic up-sampling and a
regression model of the same size trained on the same pairs for the same wall-clock (the paper's comparison).

Inputs: the first 1,000 test images down-sampled by area averaging (the task's own rule). The regression model is
the flow recipe's UNet (the same network, its condition convolution included) given the bilinearly up-sampled
input as both x and condition at t = 0 and trained with L2 to predict the residual to the original; AdamW,
warm-up and cosine decay, EMA and batch as the flow recipe, on the same training images, until its wall-clock
reaches the flow's training time (`--seconds`; the cosine horizon is fitted to that budget after 20 timed steps).
Judged with the judge of `benchmarks/judge.py`: 8-bit PSNR and SSIM against the originals, FD of the outputs'
features against the originals' features, class accuracy. The flow's sample i starts from noise (0, i).

    python -m benchmarks.upsample_fashion_mnist --flow runs/fashion_mnist_upsample --seconds 1330 \\
        --work runs/upsample_regression --judge runs/peer

Writes benchmarks/results/upsample_fashion_mnist.json and .md and a picture. One job at a time on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from benchmarks.inpaint_fashion_mnist import judge_completions
from benchmarks.judge import prepare_judge
from benchmarks.peer_torchcfm import RESULTS
from latentfm.atomic import write_bytes_atomic
from latentfm.checkpoint import read_state, resolve_checkpoint
from latentfm.condition import Condition
from latentfm.config import config_from_dict
from latentfm.data import load_dataset
from latentfm.data.arrays import DEFAULT_IDX_PATH
from latentfm.image_io import make_grid, quantise, save_png
from latentfm.metrics import ssim_8bit
from latentfm.models.build import build_model
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings

COUNT = 1000


def bilinear(low: torch.Tensor) -> torch.Tensor:
    """14×14 to 28×28 as the flow's condition does."""
    return F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)


def regression_model(flow_run: Path) -> torch.nn.Module:
    """The flow recipe's network (same shapes, same condition input), freshly initialised (seed 0)."""
    state = read_state(resolve_checkpoint(flow_run), "flow")
    channels, size = state.data.latent_shape[0], state.data.latent_shape[1]
    torch.manual_seed(0)
    return build_model(config_from_dict(state.config).model, channels, size, 0, concat_channels=channels)


def predict(model: torch.nn.Module, up: torch.Tensor) -> torch.Tensor:
    """The regression model's output for up-sampled inputs (the flow's condition): a residual on them."""
    return up + model(up, torch.zeros(len(up)), Condition(concat=up))


def train_regression(flow_run: Path, seconds: float, out: Path, pairs: Callable, count: int) -> dict:
    """Train the regression model for ``seconds`` of wall-clock on ``pairs(indices)`` = (up-sampled input,
    target) of ``count`` training items; save its EMA weights to ``out``."""
    model = regression_model(flow_run)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    start, step, horizon, order = time.perf_counter(), 0, None, torch.empty(0, dtype=torch.long)
    while time.perf_counter() - start < seconds:
        if len(order) < 128:
            order = torch.randperm(count, generator=generator)
        indices, order = order[:128], order[128:]
        up, target = pairs(indices)
        lr = 1e-3 * min(1.0, (step + 1) / 100)
        if horizon is not None and step >= 100:
            progress = min(1.0, (step - 100) / max(1, horizon - 100))
            lr = 5e-5 + 0.5 * (1e-3 - 5e-5) * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = F.mse_loss(predict(model, up), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        step += 1
        if step == 20:
            horizon = int(seconds / ((time.perf_counter() - start) / 20))
        if step % 100 == 0:
            print(f"regression step {step}: loss {loss.item():.4f}, {time.perf_counter() - start:.0f}s")
    save_file(ema.state_dict(), str(out))
    return {"steps": step, "seconds": round(time.perf_counter() - start, 1), "final_loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", required=True, help="a run of configs/fashion_mnist_upsample.yaml")
    parser.add_argument("--seconds", type=float, required=True, help="the flow's training wall-clock")
    parser.add_argument("--work", default="runs/upsample_regression", help="where the regression weights go")
    parser.add_argument("--judge", default="runs/peer", help="directory of the judge (trained there when missing)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    weights, report = work / "regression.safetensors", {"rows": []}
    if not weights.is_file():
        train = load_dataset("idx", DEFAULT_IDX_PATH, "train")

        def pairs(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            images = train.batch(indices)[0]
            return bilinear(F.avg_pool2d(images, 2)), images

        report["regression_training"] = train_regression(Path(args.flow), args.seconds, weights, pairs, len(train))
        write_bytes_atomic(work / "training.json", json.dumps(report["regression_training"]).encode())
    else:
        report["regression_training"] = json.loads((work / "training.json").read_text())
    judge = prepare_judge(Path(args.judge))
    images, labels = load_dataset("idx", DEFAULT_IDX_PATH, "test").batch(torch.arange(COUNT))
    low = F.avg_pool2d(images, 2)
    regression = regression_model(Path(args.flow)).eval().requires_grad_(False)
    regression.load_state_dict(load_file(str(weights)))
    pipe = FlowPipeline.from_checkpoint(args.flow)
    methods = [("bicubic", None), ("bilinear (the flow's condition)", None), ("regression", None)]
    methods += [(f"flow, euler {nfe} NFE", nfe) for nfe in (1, 2, 4, 8)] + [("flow, midpoint 8 NFE", "midpoint")]
    pictures = {"original": images[:10], "input": F.interpolate(low[:10], scale_factor=2, mode="nearest")}
    for name, nfe in methods:
        start, used = time.perf_counter(), 0
        if name == "bicubic":
            outputs = F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1)
        elif name.startswith("bilinear"):
            outputs = bilinear(low)
        elif name == "regression":
            with torch.no_grad():
                parts = [predict(regression, bilinear(part)) for part in low.split(250)]
                outputs, used = torch.cat(parts).clamp(-1, 1), 1
        else:
            solver = "midpoint" if nfe == "midpoint" else "euler"
            settings = SamplerSettings(solver=solver, nfe=8 if nfe == "midpoint" else nfe)
            outputs, stats = pipe.upsample(low, seed=0, settings=settings)
            used = stats.nfe
        seconds = time.perf_counter() - start
        row = {"method": name, "nfe": used, "ms_per_image": 1000 * seconds / COUNT}
        row.update(judge_completions(judge, images, outputs, labels), ssim=ssim_8bit(images, outputs).mean().item())
        report["rows"].append(row)
        pictures[name] = outputs[:10]
        print(json.dumps(row))
    report["machine"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    report["picture_rows"] = list(pictures)
    write_bytes_atomic(RESULTS / "upsample_fashion_mnist.json", json.dumps(report, indent=1).encode())
    lines = [
        "| method | NFE | PSNR dB | SSIM | FD | accuracy | ms / image |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['method']} | {r['nfe']} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | {r['fd']:.3f} | "
            f"{100 * r['accuracy']:.1f}% | {r['ms_per_image']:.2f} |"
        )
    write_bytes_atomic(RESULTS / "upsample_fashion_mnist.md", ("\n".join(lines) + "\n").encode())
    tiles = quantise(torch.cat(list(pictures.values()))).permute(0, 2, 3, 1).numpy()[..., 0]
    save_png(make_grid(tiles, columns=10, upscale=2), RESULTS / "upsample_fashion_mnist.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
