"""Commands that train or prepare training: ``train``, ``train-refiner``, ``train-fewstep``,
``train-autoencoder``, ``encode`` and ``demo``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentfm.cli.options import add_device, add_output_dir, non_negative_int, positive_int


def _train(make_trainer: Callable[[], Any]) -> None:
    """Run the trainer ``make_trainer`` builds, print its last checkpoint and leave the process group."""
    from latentfm.distributed import teardown_distributed

    try:
        print(f"checkpoint: {make_trainer().run()}")
    finally:
        teardown_distributed()


def cmd_train(args: argparse.Namespace) -> None:
    """Train a flow model from a YAML config plus overrides."""
    from latentfm.config import load_config
    from latentfm.evaluation import training_evaluation
    from latentfm.training.trainer import Trainer

    config = load_config(args.config, args.overrides)
    _train(lambda: Trainer(config, make_evaluation=training_evaluation(config.eval)))


def cmd_train_refiner(args: argparse.Namespace) -> None:
    """Train FlowTurbo's velocity refiner for a trained flow model (the teacher, frozen): its data, task and model
    come from the teacher's checkpoint, the refiner, optim, train and sample sections from the config."""
    from latentfm.training.refiner_trainer import RefinerTrainer, refiner_config

    config = refiner_config(args.teacher, args.config, args.overrides)
    _train(lambda: RefinerTrainer(config))


def cmd_train_fewstep(args: argparse.Namespace) -> None:
    """Tune a trained flow model (the teacher) to sample in 1-4 steps (``--solver fewstep``): its data, task and
    model come from the teacher's checkpoint, the fewstep, optim, train and sample sections from the config."""
    from latentfm.training.fewstep_trainer import FewStepTrainer, fewstep_config

    config = fewstep_config(args.teacher, args.config, args.overrides)
    _train(lambda: FewStepTrainer(config))


def cmd_train_autoencoder(args: argparse.Namespace) -> None:
    """Train a KL autoencoder from a YAML config plus overrides, then report its test PSNR."""
    from latentfm.config import AutoencoderRunConfig, load_config
    from latentfm.distributed import teardown_distributed
    from latentfm.training.autoencoder_trainer import AutoencoderTrainer

    config = load_config(args.config, args.overrides, cls=AutoencoderRunConfig)
    try:
        trainer = AutoencoderTrainer(config)
        checkpoint = trainer.run()
        print(f"checkpoint: {checkpoint}")
        if trainer.dist.is_main and args.eval_split != "none":
            report = trainer.evaluate_reconstruction(checkpoint, args.eval_split)
            print(f"{args.eval_split} PSNR (8-bit, EMA weights, {report['images']} images): {report['psnr_db']:.2f} dB")
    finally:
        teardown_distributed()


def cmd_encode(args: argparse.Namespace) -> None:
    """Encode a config's dataset with its autoencoder into a latent cache (resumable; shards across torchrun ranks)."""
    from latentfm.config import load_config
    from latentfm.data.latent_cache_writer import build_cache
    from latentfm.distributed import teardown_distributed

    config = load_config(args.config, args.overrides)
    try:
        manifest, written = build_cache(
            config,
            args.out,
            args.hflip,
            args.dtype,
            args.shard_size,
            args.batch_size,
            args.device,
            args.downsample,
            args.pixel_upsample,
        )
        if manifest is not None:
            done = f"{written} new shards on this rank" if written else "already complete, nothing encoded"
            print(
                f"latent cache {args.out}: {manifest['dataset']['count']} images, latents "
                f"{manifest['latent_shape']} {manifest['dtype']}, hflip={manifest['hflip']} ({done})"
            )
    finally:
        teardown_distributed()


def cmd_demo(args: argparse.Namespace) -> None:
    """Train a class-conditional model on the built-in digits, sample 50 per class and judge them."""
    from latentfm.demo import run_demo

    run_demo(Path(args.out), steps=args.steps, per_class=args.per_class, seed=args.seed)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The parsers of this family."""
    train = commands.add_parser("train", help="train a flow model from a config", description=cmd_train.__doc__)
    train.add_argument("--config", required=True, help="YAML config file, e.g. configs/digits.yaml")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="overrides such as train.steps=100")
    train.set_defaults(run=cmd_train)

    for name, summary, run, recipe in (
        ("train-refiner", "train a FlowTurbo velocity refiner for a flow model", cmd_train_refiner, "refiner"),
        ("train-fewstep", "tune a flow model to sample in one to four steps", cmd_train_fewstep, "fewstep"),
    ):
        against = commands.add_parser(name, help=summary, description=run.__doc__)
        against.add_argument("--teacher", required=True, help="the flow model's run or checkpoint directory")
        against.add_argument("--config", required=True, help=f"YAML config, e.g. configs/fashion_mnist_{recipe}.yaml")
        against.add_argument("overrides", nargs="*", metavar="key=value", help="overrides such as train.steps=100")
        against.set_defaults(run=run)

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
    add_output_dir(encode, help="cache directory (created; an unfinished one is resumed)")
    encode.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also store latents of left-right flipped images (default: the config's data.hflip)",
    )
    encode.add_argument(
        "--downsample",
        type=positive_int,
        default=1,
        metavar="F",
        help="encode the images down-sampled F times by area: the low-resolution inputs of an upsample task "
        "(data.low_latent_cache); default 1",
    )
    encode.add_argument(
        "--pixel-upsample",
        action="store_true",
        help="with --downsample F: bring them back to full size bicubically before encoding "
        "(the condition of task.upsample_mode: pixel)",
    )
    encode.add_argument("--dtype", default="float32", help="stored dtype: float32 (default) or float16")
    encode.add_argument("--shard-size", type=positive_int, default=4096, help="images per shard file (default 4096)")
    encode.add_argument(
        "--batch-size", type=positive_int, default=256, help="images per autoencoder call (default 256)"
    )
    add_device(encode)
    encode.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides such as data.split=test")
    encode.set_defaults(run=cmd_encode)

    demo = commands.add_parser(
        "demo", help="train on built-in digits and sample (CPU, minutes)", description=cmd_demo.__doc__
    )
    add_output_dir(demo, "out/demo")
    demo.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the recipe's)")
    demo.add_argument("--per-class", type=positive_int, default=50, help="samples per class (default 50)")
    demo.add_argument("--seed", type=non_negative_int, default=0, help="seed of training and sampling")
    demo.set_defaults(run=cmd_demo)
