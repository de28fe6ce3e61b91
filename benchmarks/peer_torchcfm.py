"""latentfm's CPU recipe against torchcfm's example class-conditional UNet, at equal wall-clock on one machine.

1. latentfm: `latentfm train --config CONFIG train.out_dir=RUN [overrides]` as a user runs it (a subprocess with
   default threads), timed from start to exit.
2. The peer, as a new user trains torchcfm 1.0.7's example: `UNetModelWrapper(dim=(1, 28, 28), num_channels=32,
   num_res_blocks=1, class_cond=True, num_classes=11, attention_resolutions="14")`, labels dropped to the null id
   10 with probability 0.1, `ConditionalFlowMatcher(sigma=0)`, Adam 2e-4, gradient clipping 1.0, batch 128, data in
   [-1, 1] reshuffled every epoch, raw weights, default threads; it trains until its wall-clock (data loading
   included) reaches latentfm's.
3. Both sample 1,000 images (100 per class) from the same noise (sample i from seed (S, i), class i // 100) for
   each setting and noise seed: latentfm through `latentfm sample --checkpoint RUN --labels all --n 100 ...`, the
   peer through `latentfm.sampling.sample` (the same solvers) with guidance in one batched call.
4. The judge of `benchmarks/judge.py` (the in-project classifier trained on the real training split) gives the
   Fréchet distance against the test split's statistics and the class accuracy.

torchcfm is a benchmark-only extra: `pip install --no-deps torchcfm==1.0.7 pot` (its package import needs POT;
nothing else it declares is used). Fashion-MNIST needs `apt-get install dataset-fashion-mnist`.

    python -m benchmarks.peer_torchcfm   # Fashion-MNIST; Euler 8 NFE guidance 2 at seeds 0,1,2, the rest at 0
    python -m benchmarks.digits28_folder --out runs/digits28           # a second dataset, latentfm alone:
    python -m benchmarks.peer_torchcfm --name digits28 --skip-peer --dataset runs/digits28/train.yaml \\
        --reference runs/digits28/test.yaml --reference-split train --judge runs/peer_digits28 --seeds 0 \\
        --other-seeds '' data.dataset=folder data.path=runs/digits28/train data.channels=1 data.hflip=false

Finished runs and samples are reused. Writes benchmarks/results/peer_torchcfm_NAME.json, .md and the two sample
grids (Euler 8 NFE, guidance 2, seed 0, ten per class).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from benchmarks.judge import Judge, prepare_judge, run_cli
from latentfm.atomic import atomic_file, write_bytes_atomic
from latentfm.checkpoint import list_checkpoints
from latentfm.cli import dataset_config
from latentfm.condition import Condition
from latentfm.data import load_data_config
from latentfm.image_io import make_grid, quantise, save_png
from latentfm.sampling import GuidedVelocity, SamplerSettings, interval_from_text, interval_text, sample
from latentfm.seeding import source_noise

RESULTS = Path(__file__).parent / "results"
# (solver, NFE, guidance[, guidance interval]); without an interval the system's own: the peer guides everywhere,
# latentfm as its recipe says.
PEER_SETTINGS = [("euler", 8, 1.0), ("euler", 8, 2.0), ("midpoint", 8, 1.0), ("midpoint", 8, 2.0)]
PEER_SETTINGS += [("euler", 8, 2.0, "0.25,1")]
LATENTFM_SETTINGS = PEER_SETTINGS[:4] + [("euler", 8, 2.0, "all"), ("euler", 4, 2.0), ("midpoint", 4, 2.0)]
LATENTFM_SETTINGS += [("default", None, None)]
NULL_LABEL = 10
HEADLINE = ("euler", 8, 2.0)


def peer_model() -> torch.nn.Module:
    """torchcfm's example class-conditional UNet for 28×28 grey images (1.1M parameters)."""
    from torchcfm.models.unet.unet import UNetModelWrapper

    return UNetModelWrapper(
        dim=(1, 28, 28), num_channels=32, num_res_blocks=1, class_cond=True, num_classes=11, attention_resolutions="14"
    )


def train_latentfm(config: str, overrides: list[str], run: Path) -> float:
    """Seconds `latentfm train` took from start to exit (it must start from an empty run directory)."""
    if run.exists():
        raise SystemExit(f"{run} exists but has no timing record: remove it to retrain")
    start = time.perf_counter()
    command = [sys.executable, "-m", "latentfm.cli", "train", "--config", config, f"train.out_dir={run}", *overrides]
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def train_peer(dataset: str, seconds: float, out: Path, seed: int = 0) -> dict[str, float]:
    """Train the peer until ``seconds`` of wall-clock have passed; raw weights to ``out``; steps and images/s."""
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    start = time.perf_counter()
    torch.manual_seed(seed)
    data = load_data_config(dataset_config(dataset))
    images, labels = data.images.float() / 127.5 - 1.0, data.labels
    model = peer_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    matcher = ConditionalFlowMatcher(sigma=0.0)
    steps, order, position, train_start = 0, torch.randperm(len(images)), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if position + 128 > len(order):
            order, position = torch.randperm(len(images)), 0
        batch = order[position : position + 128]
        position += 128
        x1, y = images[batch], labels[batch]
        y = torch.where(torch.rand(len(y)) < 0.1, torch.full_like(y, NULL_LABEL), y)
        t, xt, ut = matcher.sample_location_and_conditional_flow(torch.randn_like(x1), x1)
        loss = torch.mean((model(t, xt, y) - ut) ** 2)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps += 1
    elapsed = time.perf_counter() - start
    with atomic_file(out) as tmp:
        save_file(model.state_dict(), str(tmp))
    return {"seconds": elapsed, "steps": steps, "images_per_s": steps * 128 / (time.perf_counter() - train_start)}


def peer_samples(weights: Path, setting: tuple, seed: int, per_class: int) -> tuple[torch.Tensor, float]:
    """``per_class`` uint8 samples of the peer per class (sample i from noise (seed, i)) and their seconds."""
    solver, nfe, cfg, *interval = setting
    interval = interval_from_text(interval[0]) if interval else None
    model = peer_model().eval().requires_grad_(False)
    model.load_state_dict(load_file(str(weights)))
    labels = torch.arange(10).repeat_interleave(per_class)
    start, parts = time.perf_counter(), []
    with torch.no_grad():
        for first in range(0, len(labels), 256):
            batch = labels[first : first + 256]
            velocity = GuidedVelocity(
                lambda x, t, cond: model(t, x, y=cond.labels),
                Condition(labels=batch),
                cfg,
                Condition(labels=torch.full_like(batch, NULL_LABEL)),
                interval,
            )
            x0 = source_noise(seed, range(first, first + len(batch)), (1, 28, 28))
            parts.append(sample(velocity, x0, SamplerSettings(solver, nfe=nfe))[0])
    seconds = time.perf_counter() - start
    return quantise(torch.cat(parts)), seconds


def latentfm_samples(setting: tuple, seed: int, run: Path, out: Path, per_class: int):
    """``per_class`` uint8 samples per class through `latentfm sample` (solver "default": the checkpoint's own
    sampler), their labels and the command's stats."""
    solver, nfe, cfg, *interval = setting
    if not (out / "stats.json").is_file():
        options = [] if solver == "default" else ["--solver", solver, "--nfe", str(nfe), "--cfg", str(cfg)]
        options += ["--guidance-interval", interval[0]] if interval else []
        labels = ["--labels", "all", "--n", str(per_class)]
        run_cli("sample", "--checkpoint", str(run), *labels, *options, "--seed", str(seed), "--out", str(out))
    arrays = np.load(out / "samples.npz")
    images = torch.from_numpy(arrays["images"])
    images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
    stats = json.loads((out / "stats.json").read_text())
    return images, torch.from_numpy(arrays["labels"]), stats


def setting_name(solver: str, nfe: int | None, cfg: float | None, interval: str | None = None) -> str:
    """How a setting reads in the table."""
    if solver == "default":
        return "default"
    limited = interval not in (None, "all") and cfg != 1.0
    return f"{solver} {nfe} NFE, guidance {cfg:g}" + (f" for t in [{interval}]" if limited else "")


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, smallest and largest of a figure over seeds."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def save_class_grid(images: torch.Tensor, per_class: int, path: Path) -> None:
    """The first ten samples of each class, one row per class, as a PNG."""
    grid = images.reshape(10, per_class, *images.shape[1:])[:, :10].reshape(-1, *images.shape[1:])
    array = grid.permute(0, 2, 3, 1).numpy()
    array = array[..., 0] if array.shape[-1] == 1 else array
    save_png(make_grid(array, columns=min(10, per_class), upscale=2), path)


def measure(system: str, setting: tuple, seed: int, work: Path, models: dict[str, Path], judge: Judge, per_class: int):
    """FD, accuracy and seconds per 1,000 samples of one system, setting and noise seed; kept in
    ``work/measurements.json`` so that a rerun measures only what is missing."""
    cache_path = work / "measurements.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    key = f"{system}/{'_'.join(map(str, (*setting, seed)))}"
    if key in cache:
        return cache[key]
    if system == "latentfm":
        out = work / "samples" / key
        images, labels, stats = latentfm_samples(setting, seed, models[system], out, per_class)
        sampler = stats.get("sampler", stats)  # stats.json of latentfm sample: the settings under "sampler"
        interval = sampler.get("guidance_interval")
        interval = interval_text(tuple(interval)) if isinstance(interval, list) else interval
        used = setting_name(stats["solver"], stats["nfe"], sampler["cfg"], interval)
        seconds = stats["seconds"]
        used = f"default: {used}" if setting[0] == "default" else used
    else:
        images, seconds = peer_samples(models[system], setting, seed, per_class)
        labels, used = torch.arange(10).repeat_interleave(per_class), setting_name(*setting)
    if setting == HEADLINE:
        save_class_grid(images, per_class, work / f"{system}_grid_seed{seed}.png")
    cache[key] = {"setting": used, "seed": seed, "seconds_per_1000": 1000 * seconds / len(images)}
    cache[key].update(judge(images, labels))
    write_bytes_atomic(cache_path, json.dumps(cache, indent=1).encode())
    print(system, cache[key], flush=True)
    return cache[key]


def judge_all(work: Path, models: dict[str, Path], judge: Judge, seeds: dict[tuple, list[int]], per_class: int):
    """Every (system, setting) row in ``seeds``: FD and accuracy per noise seed with their mean and range, and the
    sampling seconds."""
    rows = {}
    for system, settings in (("latentfm", LATENTFM_SETTINGS), ("torchcfm", PEER_SETTINGS)):
        if system not in models:
            continue
        for setting in (s for s in settings if s in seeds):
            per_seed = [measure(system, setting, seed, work, models, judge, per_class) for seed in seeds[setting]]
            rows[f"{system}: {'_'.join(map(str, setting))}"] = {
                "system": system,
                "setting": per_seed[0]["setting"],
                "per_seed": per_seed,
                **{key: summarise([r[key] for r in per_seed]) for key in ("fd", "accuracy", "seconds_per_1000")},
            }
    return rows


def real_floor(judge: Judge, dataset: str, per_class: int) -> dict[str, float]:
    """The judge's figures of real training images (the first ``per_class`` of each class): the floor of FD at this
    sample size, and the accuracy real data earns."""
    data = load_data_config(dataset_config(dataset))
    chosen = torch.cat([torch.nonzero(data.labels == c).flatten()[:per_class] for c in range(10)])
    return judge(data.images[chosen], data.labels[chosen])


def markdown(report: dict) -> str:
    """The report as a Markdown table."""
    lines = [
        f"machine: {report['machine']}; {report['threads']} threads; noise seeds {report['seeds']}",
        f"latentfm: {report['latentfm']['seconds'] / 60:.1f} min of `latentfm train`",
        *(
            [f"torchcfm: {peer['seconds'] / 60:.1f} min, {peer['steps']} steps, {peer['images_per_s']:.0f} images/s"]
            if (peer := report.get("torchcfm"))
            else []
        ),
        "",
        "| system | sampler | FD (mean, range) | class accuracy (mean, range) | s / 1000 samples |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| real training images | | {report['real']['fd']:.2f} | {report['real']['accuracy']:.1%} | |",
    ]
    for row in report["rows"].values():
        fd, acc, sec = row["fd"], row["accuracy"], row["seconds_per_1000"]
        lines.append(
            f"| {row['system']} | {row['setting']} | {fd['mean']:.2f} ({fd['min']:.2f}-{fd['max']:.2f}) | "
            f"{acc['mean']:.1%} ({acc['min']:.1%}-{acc['max']:.1%}) | {sec['mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="fashion_mnist", help="name of the comparison (work and result files)")
    parser.add_argument("--config", default="configs/fashion_mnist.yaml", help="latentfm recipe")
    parser.add_argument("--dataset", default="fashion_mnist", help="training data of the peer and the judge")
    parser.add_argument("--reference", default="fashion_mnist", help="dataset of the FD statistics")
    parser.add_argument("--reference-split", default="test", help="its split (default test)")
    parser.add_argument("--judge", default="runs/peer", help="directory of the judge (trained there when missing)")
    parser.add_argument("--seeds", default="0,1,2", help="noise seeds of Euler 8 NFE, guidance 2")
    parser.add_argument("--other-seeds", default="0", help="noise seeds of the other settings ('' for none)")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class and setting (default 100)")
    parser.add_argument("--skip-peer", action="store_true", help="measure latentfm alone")
    parser.add_argument("overrides", nargs="*", help="overrides of the latentfm recipe, e.g. data.path=DIR")
    args = parser.parse_args()
    work = Path("runs/peer_torchcfm") / args.name
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "training.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    run, peer = work / "latentfm", work / "torchcfm.safetensors"
    if "latentfm" not in record:
        record["latentfm"] = {"seconds": train_latentfm(args.config, args.overrides, run)}
        write_bytes_atomic(record_path, json.dumps(record, indent=1).encode())
    if not list_checkpoints(run):
        raise SystemExit(f"{run} holds no checkpoint")
    models = {"latentfm": run} if args.skip_peer else {"latentfm": run, "torchcfm": peer}
    if "torchcfm" in models and "torchcfm" not in record:
        record["torchcfm"] = train_peer(args.dataset, record["latentfm"]["seconds"], peer)
        write_bytes_atomic(record_path, json.dumps(record, indent=1).encode())
    judge = prepare_judge(Path(args.judge), args.dataset, args.reference, args.reference_split)
    headline, others = [int(s) for s in args.seeds.split(",")], [int(s) for s in args.other_seeds.split(",") if s]
    seeds = {setting: others for setting in LATENTFM_SETTINGS + PEER_SETTINGS if others}
    seeds.update({setting: headline for setting in LATENTFM_SETTINGS + PEER_SETTINGS if setting[:3] == HEADLINE})
    report = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "seeds": {"euler 8 NFE, guidance 2": headline, "other settings": others},
        **record,
        "samples_per_setting": 10 * args.per_class,
        "real": real_floor(judge, args.dataset, args.per_class),
        "rows": judge_all(work, models, judge, seeds, args.per_class),
    }
    stem = RESULTS / f"peer_torchcfm_{args.name}"
    write_bytes_atomic(stem.with_suffix(".json"), json.dumps(report, indent=1).encode())
    write_bytes_atomic(stem.with_suffix(".md"), markdown(report).encode())
    for system in models:
        grid = work / f"{system}_grid_seed{headline[0]}.png"
        if not grid.is_file():  # its row came from a seeded measurements.json without the grid
            print(f"no sample grid of {system}: copy {grid.name} into {work} with its measurements")
            continue
        write_bytes_atomic(RESULTS / f"peer_torchcfm_{args.name}_{system}.png", grid.read_bytes())
    print(markdown(report))


if __name__ == "__main__":
    main()
