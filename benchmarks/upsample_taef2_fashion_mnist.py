"""Super-resolution ×2 in a real pretrained latent space: the TAEF2 recipe (Fashion-MNIST at 64×64 RGB,
32×32 → 64×64 images, 32×4×4 → 32×8×8 latents) against bicubic up-sampling and a regression model.

Inputs: the first 1,000 test images at 64×64 (the recipe's resize) down-sampled ×2 by area, as the task's
training pairs are. The regression model is the flow recipe's UNet predicting the residual from the flow's
condition (the recipe's up-sampled low-resolution latent) to the high-resolution latent (L2 in normalised latent
space, the same cached pairs, the same wall-clock as the flow's training, the training loop of
`benchmarks/upsample_fashion_mnist.py`). Also listed: TAEF2's own round trip of the originals (what any model in
this latent space can at best give) and the flow's condition decoded.

PSNR and SSIM are measured on the 64×64 RGB outputs against the 64×64 originals. FD and class accuracy use the
in-project judge of `benchmarks/judge.py` (28×28 grey): outputs and originals are brought to grey and to 28×28 by
area averaging first. The flow's sample i starts from noise (0, i). Run in the directory holding the recipe's
caches (its `data.latent_cache` and `data.low_latent_cache` paths are relative):

    python -m benchmarks.upsample_taef2_fashion_mnist --flow runs/fashion_mnist_taef2_upsample --seconds 900 \\
        --work runs/upsample_taef2_regression --judge runs/peer

Writes benchmarks/results/upsample_taef2_fashion_mnist.json and .md and a picture. One job at a time on an idle
machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from benchmarks.inpaint_fashion_mnist import judge_completions
from benchmarks.judge import prepare_judge
from benchmarks.peer_torchcfm import RESULTS
from benchmarks.upsample_fashion_mnist import COUNT, predict, regression_model, train_regression
from latentfm.atomic import write_bytes_atomic
from latentfm.checkpoint import read_state, resolve_checkpoint
from latentfm.config import Config, config_from_dict
from latentfm.data import LatentCache, load_data_config
from latentfm.image_io import make_grid, quantise, save_png
from latentfm.metrics import psnr_8bit, ssim_8bit
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings


def judged(images: torch.Tensor) -> torch.Tensor:
    """64×64 RGB in [-1, 1] as the judge sees Fashion-MNIST: grey, 28×28 by area averaging."""
    return F.interpolate(images.mean(1, keepdim=True), size=(28, 28), mode="area")


def latent_pairs(pipe: FlowPipeline, config: Config) -> tuple:
    """``pairs(indices)`` of the recipe's two caches: (the flow's condition, high latent), normalised."""
    high, low = LatentCache(config.data.latent_cache), LatentCache(config.data.low_latent_cache)
    norm, size = pipe.latent_norm, tuple(pipe.latent_shape[1:])

    def pairs(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        condition = pipe.task.cached_condition(norm.normalize(low.batch(indices)[0]), size)
        return condition, norm.normalize(high.batch(indices)[0])

    return pairs, len(high)


def condition(pipe: FlowPipeline, low: torch.Tensor) -> torch.Tensor:
    """The flow's condition of low-resolution images: their latent brought up in the recipe's mode."""
    return pipe.task.condition_of_images(None, low.to(pipe.device), pipe.encode).concat


def regression_outputs(pipe: FlowPipeline, regression: torch.nn.Module, low: torch.Tensor) -> torch.Tensor:
    """The regression model's high-resolution latent from the flow's condition, decoded."""
    with torch.no_grad():
        outputs = [pipe.decode(predict(regression, condition(pipe, part))) for part in low.split(250)]
    return torch.cat(outputs).clamp(-1, 1)


def condition_outputs(pipe: FlowPipeline, low: torch.Tensor) -> torch.Tensor:
    """The flow's condition decoded."""
    with torch.no_grad():
        return torch.cat([pipe.decode(condition(pipe, part)) for part in low.split(250)]).clamp(-1, 1)


def round_trip(pipe: FlowPipeline, images: torch.Tensor) -> torch.Tensor:
    """TAEF2's reconstruction of the originals themselves."""
    with torch.no_grad():
        return torch.cat([pipe.decode(pipe.encode(part)) for part in images.split(250)]).clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", required=True, help="a run of configs/fashion_mnist_taef2_upsample.yaml")
    parser.add_argument("--seconds", type=float, required=True, help="the flow's training wall-clock")
    parser.add_argument("--work", default="runs/upsample_taef2_regression", help="where the regression goes")
    parser.add_argument("--judge", default="runs/peer", help="directory of the judge (trained there when missing)")
    args = parser.parse_args()
    torch.manual_seed(0)
    work, flow = Path(args.work), Path(args.flow)
    work.mkdir(parents=True, exist_ok=True)
    pipe = FlowPipeline.from_checkpoint(flow)
    config = config_from_dict(read_state(resolve_checkpoint(flow), "flow").config)
    weights, report = work / "regression.safetensors", {"rows": []}
    if not weights.is_file():
        pairs, count = latent_pairs(pipe, config)
        report["regression_training"] = train_regression(flow, args.seconds, weights, pairs, count)
        write_bytes_atomic(work / "training.json", json.dumps(report["regression_training"]).encode())
    else:
        report["regression_training"] = json.loads((work / "training.json").read_text())
    judge = prepare_judge(Path(args.judge))
    images, labels = load_data_config(config.data, "test").batch(torch.arange(COUNT))
    low = F.avg_pool2d(images, 2)
    regression = regression_model(flow).eval().requires_grad_(False)
    regression.load_state_dict(load_file(str(weights)))
    methods = {
        "bicubic": lambda: F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1),
        "TAEF2 round trip of the original": lambda: round_trip(pipe, images),
        f"the flow's condition ({pipe.task.mode}), decoded": lambda: condition_outputs(pipe, low),
        "regression": lambda: regression_outputs(pipe, regression, low),
    }
    for solver, nfe in (("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("midpoint", 8)):
        settings = SamplerSettings(solver=solver, nfe=nfe)
        methods[f"flow, {solver} {nfe} NFE"] = lambda settings=settings: pipe.upsample(low, settings=settings)[0]
    pictures = {"original": images[:10], "input": F.interpolate(low[:10], scale_factor=2, mode="nearest")}
    for name, method in methods.items():
        start = time.perf_counter()
        outputs = method()
        seconds = time.perf_counter() - start
        nfe = int(name.split()[-2]) if name.startswith("flow") else int(name == "regression")
        row = {"method": name, "nfe": nfe, "ms_per_image": 1000 * seconds / COUNT}
        row.update(judge_completions(judge, judged(images), judged(outputs), labels))
        row.update(psnr_db=psnr_8bit(images, outputs).mean().item(), ssim=ssim_8bit(images, outputs).mean().item())
        report["rows"].append(row)
        pictures[name] = outputs[:10]
        print(json.dumps(row))
    report["machine"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    report["picture_rows"] = list(pictures)
    name = "upsample_taef2_fashion_mnist"
    write_bytes_atomic(RESULTS / f"{name}.json", json.dumps(report, indent=1).encode())
    lines = [
        "| method | NFE | PSNR dB (64² RGB) | SSIM | FD | accuracy | ms / image |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['method']} | {r['nfe']} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | {r['fd']:.3f} | "
            f"{100 * r['accuracy']:.1f}% | {r['ms_per_image']:.2f} |"
        )
    write_bytes_atomic(RESULTS / f"{name}.md", ("\n".join(lines) + "\n").encode())
    tiles = quantise(torch.cat(list(pictures.values()))).permute(0, 2, 3, 1).numpy()
    save_png(make_grid(tiles, columns=10), RESULTS / f"{name}.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
