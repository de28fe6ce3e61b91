"""The ``latentfm`` command: train, train-autoencoder, encode, sample and demo.

Every problem a user can fix is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from latentfm.errors import LatentFMError


def _parse_labels(text: str | None, num_classes: int) -> list[int] | None:
    """``"all"``, ``"0,3,7"`` or ``"2-5"`` as a list of class indices; None for unconditional sampling."""
    if num_classes == 0:
        if text not in (None, "all"):
            raise LatentFMError("--labels: this checkpoint is unconditional; leave --labels out")
        return None
    if text in (None, "all"):
        return list(range(num_classes))
    labels: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            labels.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise LatentFMError(f"--labels {text!r}: use 'all', a list like 0,3,7 or a range like 2-5") from None
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise LatentFMError(f"--labels: {bad[0]} is not a class of this checkpoint (0..{num_classes - 1})")
    return labels


def cmd_train(args: argparse.Namespace) -> None:
    """Train a flow model from a YAML config plus overrides."""
    from latentfm.config import load_config
    from latentfm.training.distributed import teardown_distributed
    from latentfm.training.trainer import Trainer

    config = load_config(args.config, args.overrides)
    try:
        checkpoint = Trainer(config).run()
        print(f"checkpoint: {checkpoint}")
    finally:
        teardown_distributed()


def cmd_train_autoencoder(args: argparse.Namespace) -> None:
    """Train a KL autoencoder from a YAML config plus overrides, then report its test PSNR."""
    from latentfm.atomic import write_bytes_atomic
    from latentfm.autoencoders.kl import load_kl_autoencoder
    from latentfm.config import AutoencoderRunConfig, load_config
    from latentfm.data import load_data_config
    from latentfm.metrics.reconstruction import reconstruction_psnr
    from latentfm.training.autoencoder_trainer import AutoencoderTrainer
    from latentfm.training.distributed import teardown_distributed

    config = load_config(args.config, args.overrides, cls=AutoencoderRunConfig)
    try:
        trainer = AutoencoderTrainer(config)
        checkpoint = trainer.run()
        print(f"checkpoint: {checkpoint}")
        if trainer.dist.is_main and args.eval_split != "none":
            data = load_data_config(config.data, args.eval_split)
            autoencoder = load_kl_autoencoder(checkpoint).to(trainer.device)
            psnr = reconstruction_psnr(autoencoder, data, device=trainer.device, progress=True)
            report = {"checkpoint": str(checkpoint), "split": args.eval_split, "images": len(data), "psnr_db": psnr}
            write_bytes_atomic(trainer.run_dir / "eval.json", json.dumps(report, indent=1).encode())
            print(f"{args.eval_split} PSNR (8-bit, EMA weights, {len(data)} images): {psnr:.2f} dB")
    finally:
        teardown_distributed()


def cmd_encode(args: argparse.Namespace) -> None:
    """Encode a config's dataset with its autoencoder into a latent cache (resumable; shards across torchrun ranks)."""
    from latentfm.config import load_config
    from latentfm.data.latent_cache import build_cache
    from latentfm.training.distributed import teardown_distributed

    config = load_config(args.config, args.overrides)
    try:
        manifest, written = build_cache(
            config, args.out, args.hflip, args.dtype, args.shard_size, args.batch_size, args.device
        )
        if manifest is not None:
            done = f"{written} new shards on this rank" if written else "already complete, nothing encoded"
            print(
                f"latent cache {args.out}: {manifest['dataset']['count']} images, latents "
                f"{manifest['latent_shape']} {manifest['dtype']}, hflip={manifest['hflip']} ({done})"
            )
    finally:
        teardown_distributed()


def cmd_sample(args: argparse.Namespace) -> None:
    """Generate images from a checkpoint into OUT/samples.png, OUT/samples.npz and OUT/stats.json."""
    from latentfm.atomic import write_bytes_atomic
    from latentfm.image_io import write_samples
    from latentfm.pipeline import FlowPipeline

    if args.n < 1:
        raise LatentFMError(f"--n {args.n}: must be at least 1")
    pipe = FlowPipeline.from_checkpoint(args.checkpoint, device=_device(args.device))
    labels = _parse_labels(args.labels, pipe.num_classes)
    label_tensor = None if labels is None else torch.tensor(labels).repeat_interleave(args.n)
    start = time.perf_counter()
    images, stats = pipe.generate(
        label_tensor,
        n=args.n,
        seed=args.seed,
        solver=args.solver,
        nfe=None if args.steps else args.nfe,
        steps=args.steps,
        cfg=args.cfg,
        batch_size=args.batch_size,
        progress=True,
    )
    seconds = time.perf_counter() - start
    out = Path(args.out)
    write_samples(out, images, label_tensor, columns=args.n if labels else min(args.n, 16))
    report = {
        "checkpoint": str(args.checkpoint),
        "seed": args.seed,
        "solver": stats.solver,
        "steps": stats.steps,
        "nfe": stats.nfe,
        "cfg": args.cfg,
        "samples": len(images),
        "seconds": round(seconds, 3),
    }
    write_bytes_atomic(out / "stats.json", json.dumps(report, indent=1).encode())
    print(f"wrote {len(images)} samples ({stats.nfe} NFE, {seconds:.1f}s) to {out}/samples.png and samples.npz")


def _device(name: str) -> torch.device:
    from latentfm.training.distributed import resolve_device

    return resolve_device(name)


def cmd_demo(args: argparse.Namespace) -> None:
    """Train a class-conditional model on the built-in digits, sample 50 per class and judge them."""
    from latentfm.demo import run_demo

    run_demo(Path(args.out), steps=args.steps, per_class=args.per_class, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``latentfm`` command."""
    parser = argparse.ArgumentParser(prog="latentfm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a flow model from a config", description=cmd_train.__doc__)
    train.add_argument("--config", required=True, help="YAML config file, e.g. configs/digits.yaml")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="overrides such as train.steps=100")
    train.set_defaults(run=cmd_train)

    train_ae = commands.add_parser(
        "train-autoencoder", help="train a KL autoencoder from a config", description=cmd_train_autoencoder.__doc__
    )
    train_ae.add_argument("--config", required=True, help="YAML config, e.g. configs/fashion_mnist_autoencoder.yaml")
    train_ae.add_argument(
        "--eval-split", default="test", help="split to measure PSNR on after training: test (default), train or none"
    )
    train_ae.add_argument("overrides", nargs="*", metavar="key=value", help="overrides such as train.steps=100")
    train_ae.set_defaults(run=cmd_train_autoencoder)

    encode = commands.add_parser("encode", help="encode a dataset into a latent cache", description=cmd_encode.__doc__)
    encode.add_argument("--config", required=True, help="YAML config whose data and autoencoder sections are used")
    encode.add_argument("--out", required=True, help="cache directory (created; an unfinished one is resumed)")
    encode.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also store latents of left-right flipped images (default: the config's data.hflip)",
    )
    encode.add_argument("--dtype", default="float32", help="stored dtype: float32 (default) or float16")
    encode.add_argument("--shard-size", type=int, default=4096, help="images per shard file (default 4096)")
    encode.add_argument("--batch-size", type=int, default=256, help="images per autoencoder call (default 256)")
    encode.add_argument("--device", default="auto", help="auto, cpu or cuda")
    encode.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides such as data.split=test")
    encode.set_defaults(run=cmd_encode)

    sample = commands.add_parser("sample", help="generate images from a checkpoint", description=cmd_sample.__doc__)
    sample.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (latest)")
    sample.add_argument("--labels", default=None, help="'all' (default), '0,3,7' or '2-5'; one grid row per label")
    sample.add_argument("--n", type=int, default=8, help="samples per label (total when unconditional)")
    sample.add_argument("--solver", default="heun", help="ODE solver: euler or heun (default heun)")
    sample.add_argument("--nfe", type=int, default=8, help="velocity evaluations per sample (default 8)")
    sample.add_argument("--steps", type=int, default=None, help="solver steps (instead of --nfe)")
    sample.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance weight (1 = none)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the source noise")
    sample.add_argument("--batch-size", type=int, default=256, help="samples per model call")
    sample.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sample.add_argument("--out", required=True, help="output directory")
    sample.set_defaults(run=cmd_sample)

    demo = commands.add_parser(
        "demo", help="train on built-in digits and sample (CPU, minutes)", description=cmd_demo.__doc__
    )
    demo.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    demo.add_argument("--per-class", type=int, default=50, help="samples per class (default 50)")
    demo.add_argument("--seed", type=int, default=0, help="seed of training and sampling")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except LatentFMError as error:
        print(f"latentfm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentfm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
