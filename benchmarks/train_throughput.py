"""Images/s of latentfm's Trainer against a bare PyTorch loop: DiT-S/2 on 32x32x4 inputs, same model,
batch, optimizer, gradient clipping and EMA, in one process, alternating timed blocks.

    python benchmarks/train_throughput.py                       # CPU: batch 16
    python benchmarks/train_throughput.py --batch 256 --device cuda

Prints a Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time

import torch

from latentfm.condition import Condition
from latentfm.config import load_config
from latentfm.data import ImageData
from latentfm.flow import LinearPath, flow_matching_loss
from latentfm.training.ema import EMA
from latentfm.training.trainer import Trainer


def make_trainer(batch: int, device: str, out_dir: str) -> Trainer:
    """A Trainer for DiT-S/2 on random 4x32x32 'latents' with 1000 classes (identity autoencoder)."""
    generator = torch.Generator().manual_seed(0)
    data = ImageData(
        images=torch.randint(0, 256, (max(4 * batch, 1024), 4, 32, 32), dtype=torch.uint8, generator=generator),
        labels=torch.randint(0, 1000, (max(4 * batch, 1024),), generator=generator),
        num_classes=1000,
        class_names=[str(i) for i in range(1000)],
    )
    overrides = [
        f"train.batch_size={batch}",
        f"train.device={device}",
        f"train.out_dir={out_dir}",
        "model.size=DiT-S/2",
        "autoencoder.normalize=none",
        "train.steps=1000000",
        "train.log_every=50",
    ]
    return Trainer(load_config(None, overrides), data=data)


def bare_loop(trainer: Trainer):
    """A hand-written step on the same model copy, batch size, AdamW settings, clipping and EMA."""
    optim, device, dtype = trainer.config.optim, trainer.device, trainer.autocast_dtype
    model = copy.deepcopy(trainer.model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=optim.lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        fused=device.type == "cuda",
    )
    ema, path = EMA(model, trainer.config.train.ema_decay), LinearPath()
    images, labels = trainer.latents.batch(torch.arange(trainer.config.train.batch_size), device=device)
    state = {"step": 0}

    def step() -> torch.Tensor:
        x0, t = torch.randn_like(images), torch.rand(len(images), device=device)
        x_t, target = path.sample(x0, images, t)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            predicted = model(x_t, t, Condition(labels=labels))
        loss = flow_matching_loss(predicted, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, state["step"])
        state["step"] += 1
        return loss.detach()

    return step


def timed_block(step, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps, synchronising the device at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    total = torch.zeros((), device=device)
    for _ in range(steps):
        total += step()
    float(total)  # one host sync per block, as the trainer does once per log interval
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks per contender (alternating)")
    parser.add_argument("--steps", type=int, default=5, help="steps per block")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = make_trainer(args.batch, args.device, out_dir)
        bare = bare_loop(trainer)
        device = trainer.device

        def trainer_step() -> torch.Tensor:
            return trainer.train_step()["loss"]

        for step in (trainer_step, bare):  # warm-up
            timed_block(step, 2, device)
        times = {"trainer": [], "bare": []}
        for _ in range(args.blocks):
            times["trainer"].append(timed_block(trainer_step, args.steps, device))
            times["bare"].append(timed_block(bare, args.steps, device))
    trainer_s, bare_s = statistics.median(times["trainer"]), statistics.median(times["bare"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    precision = trainer.autocast_dtype or torch.float32
    print(f"device={name} threads={torch.get_num_threads()} batch={args.batch} precision={precision}")
    print("| machine | batch | bare loop img/s | trainer img/s | trainer overhead |")
    print(
        f"| {name} | {args.batch} | {args.batch / bare_s:.1f} | {args.batch / trainer_s:.1f} "
        f"| {100 * (trainer_s / bare_s - 1):+.1f}% |"
    )


if __name__ == "__main__":
    main()
