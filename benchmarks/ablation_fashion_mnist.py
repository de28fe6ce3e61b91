"""Why the DiT recipe lost to the peer: short Fashion-MNIST runs that change one thing at a time.

Every variant is `configs/fashion_mnist.yaml` plus overrides, trained for --steps steps (batch 128, seed 0) on the
CPU, then judged on 1,000 EMA samples (100 per class, Euler 8 NFE, guidance 2, noise seed 0) by the classifier of
`benchmarks/judge.py` (FD against the test split, class accuracy). Variants marked `raw` are also judged with
their raw weights. Images/s is the median of the run's logged windows.

    python benchmarks/ablation_fashion_mnist.py                      # all variants, 300 steps each
    python benchmarks/ablation_fashion_mnist.py --variants unet,dit_v3 --steps 500

Finished runs are reused. Writes benchmarks/results/ablation_fashion_mnist.json and prints a Markdown table.
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
from latentfm.image_io import quantise
from latentfm.pipeline import FlowPipeline

RESULTS = Path(__file__).parent / "results" / "ablation_fashion_mnist.json"
WORK = Path("runs/ablation_fashion_mnist")
DIT_V3 = [  # the committed recipe before the UNet (v3): patch-4 DiT on globally standardised pixels
    "model.arch=dit",
    "model.patch_size=4",
    "model.hidden_size=192",
    "model.depth=6",
    "model.num_heads=3",
    "autoencoder.normalize=global",
    "optim.lr=1.2e-3",
    "optim.warmup_steps=200",
    "train.ema_decay=0.998",
]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "dit_v3": ("the v3 DiT recipe (patch 4, normalize: global)", DIT_V3),
    "dit_v3_none": (
        "v3 DiT on plain [-1, 1] pixels",
        DIT_V3[:-4] + ["optim.lr=1.2e-3", "optim.warmup_steps=200", "train.ema_decay=0.998"],
    ),
    "unet": ("the UNet recipe (configs/fashion_mnist.yaml)", []),
    "unet_global": ("UNet recipe, normalize: global", ["autoencoder.normalize=global"]),
    "unet_peer_optim": (
        "UNet recipe, the peer's optimisation (lr 2e-4 constant, no warm-up)",
        ["optim.lr=2e-4", "optim.schedule=constant", "optim.warmup_steps=0"],
    ),
    "unet_logit_normal": ("UNet recipe, logit-normal t", ["flow.t_sampler=logit_normal"]),
}
JUDGE_RAW = {"unet", "unet_peer_optim"}


def median_images_per_s(run: Path) -> float:
    """The median images/s of a run's logged windows."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in records if "images_per_s" in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    judge = prepare_judge(Path("runs/peer"))
    labels = torch.arange(10).repeat_interleave(100)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in args.variants.split(","):
        what, overrides = VARIANTS[name]
        run = WORK / f"{name}_{args.steps}"
        start = time.perf_counter()
        run_cli(
            "train",
            "--config",
            "configs/fashion_mnist.yaml",
            f"train.out_dir={run}",
            f"train.steps={args.steps}",
            "train.sample_every=0",
            f"train.checkpoint_every={args.steps}",
            *overrides,
        )
        row = {
            "what": what,
            "steps": args.steps,
            "train_minutes": (time.perf_counter() - start) / 60,
            "images_per_s": median_images_per_s(run),
        }
        for weights in ("ema", "raw") if name in JUDGE_RAW else ("ema",):
            pipe = FlowPipeline.from_checkpoint(run, use_ema=weights == "ema")
            images, _ = pipe.generate(labels, seed=0, settings=pipe.sampler.with_(solver="euler", nfe=8, cfg=2.0))
            row[weights] = judge(quantise(images), labels)
        results[f"{name}_{args.steps}"] = row
        write_bytes_atomic(RESULTS, json.dumps(results, indent=1).encode())
        print(name, row, flush=True)
    print("| variant | steps | images/s | FD (EMA) | accuracy (EMA) | FD (raw) | accuracy (raw) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results.values():
        raw = row.get("raw", {"fd": float("nan"), "accuracy": float("nan")})
        print(
            f"| {row['what']} | {row['steps']} | {row['images_per_s']:.0f} | {row['ema']['fd']:.2f} | "
            f"{row['ema']['accuracy']:.1%} | {raw['fd']:.2f} | {raw['accuracy']:.1%} |"
        )


if __name__ == "__main__":
    main()
