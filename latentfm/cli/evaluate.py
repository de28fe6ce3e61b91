"""Commands that measure: ``train-classifier``, ``stats`` and ``eval``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from latentfm.cli.options import (
    DATASET_HELP,
    FEATURES_HELP,
    add_checkpoint,
    add_device,
    add_output_dir,
    add_sampler_arguments,
    dataset_config,
    device,
    model_directory,
    non_negative_int,
    output_file,
    positive_int,
    sampler_settings,
)
from latentfm.errors import LatentFMError


def cmd_train_classifier(args: argparse.Namespace) -> None:
    """Train the in-project classifier on a dataset's training split (its features give a dataset-specific
    Fréchet distance, its predictions the class accuracy of samples); report its accuracy on the test split."""
    from latentfm.data import load_data_config
    from latentfm.metrics.classifier import accuracy, save_classifier, train_classifier

    data_config = dataset_config(args.dataset, "train", args.image_size)
    if args.test_split and data_config.dataset in ("folder", "npz"):
        raise LatentFMError(f"--dataset {args.dataset} has no test split: add --no-test-split")
    train = load_data_config(data_config)
    if train.labels is None:
        raise LatentFMError(f"--dataset {args.dataset} has no labels: a classifier needs one class per image")
    start = time.perf_counter()
    images, labels = train.batch(torch.arange(len(train)))
    model = train_classifier(
        images,
        labels,
        train.num_classes,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=device(args.device),
        progress=True,
    )
    minutes = (time.perf_counter() - start) / 60
    report = {
        "dataset": args.dataset,
        "train_fingerprint": train.fingerprint(),
        "train_images": len(train),
        "epochs": args.epochs,
        "seed": args.seed,
        "minutes": round(minutes, 2),
    }
    if args.test_split:
        test = load_data_config(data_config, "test")
        report["test_accuracy"] = accuracy(model.cpu(), *test.batch(torch.arange(len(test))))
        print(f"test accuracy on {len(test)} images: {100 * report['test_accuracy']:.2f}%")
    save_classifier(model.cpu(), args.out, report)
    print(f"wrote {args.out} ({minutes:.1f} min)")


def cmd_stats(args: argparse.Namespace) -> None:
    """Feature statistics of real images (mean, covariance, a sample of features) with the protocol recorded,
    for `latentfm eval --reference`."""
    from latentfm.data import load_data_config
    from latentfm.evaluation import reference_statistics
    from latentfm.metrics.features import load_features

    if args.keep_features < 1:
        raise LatentFMError(f"--keep-features {args.keep_features}: keep at least 1 feature")
    data_config = dataset_config(args.dataset, args.split, args.image_size)
    data = load_data_config(data_config)
    extractor = load_features(args.features, device(args.device))
    source = {"dataset": args.dataset, "split": data_config.split, "image_size": data_config.image_size}
    reference = reference_statistics(
        data,
        extractor,
        source,
        args.keep_features,
        args.seed,
        progress=True,
        workers=data_config.workers if args.workers is None else args.workers,
    )
    reference.save(args.out)
    print(f"wrote {args.out}: {reference.count} images, {extractor.kind} features ({extractor.dim}-d)")


def cmd_eval(args: argparse.Namespace) -> None:
    """Generate samples from a checkpoint (sharded across torchrun ranks, resumable), compute FD, KID,
    precision/recall and class accuracy against reference statistics, measure latency, write OUT/report.json
    and OUT/report.md."""
    from latentfm.distributed import teardown_distributed
    from latentfm.evaluation import EvalSettings, Evaluation
    from latentfm.pipeline import recipe_sampler

    checkpoint = model_directory(args)
    settings = EvalSettings(
        checkpoint=checkpoint,
        reference=args.reference,
        features=args.features,
        sampler=sampler_settings(args, recipe_sampler(checkpoint)),
        classifier=args.classifier,
        refiner=args.refiner,
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        keep_features=args.keep_features,
        latency_batch=args.latency_batch,
        latency_repeats=args.latency_repeats,
    )
    try:
        report = Evaluation(settings, args.out, args.device).run()
        if report is not None:
            print(Path(args.out, "report.md").read_text())
    finally:
        teardown_distributed()


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The parsers of this family."""
    classifier = commands.add_parser(
        "train-classifier",
        help="train the in-project judge/feature classifier",
        description=cmd_train_classifier.__doc__,
    )
    classifier.add_argument("--dataset", required=True, help=DATASET_HELP)
    classifier.add_argument(
        "--out", type=output_file, required=True, help="weights file to write (.safetensors, plus .json sidecars)"
    )
    classifier.add_argument("--image-size", type=positive_int, default=None, help="resize images to this square size")
    classifier.add_argument("--epochs", type=positive_int, default=10, help="training epochs (default 10)")
    classifier.add_argument("--batch-size", type=positive_int, default=128, help="batch size (default 128)")
    classifier.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    classifier.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of initialisation, order and augmentation"
    )
    classifier.add_argument(
        "--test-split", action=argparse.BooleanOptionalAction, default=True, help="report test accuracy (default on)"
    )
    add_device(classifier)
    classifier.set_defaults(run=cmd_train_classifier)

    stats = commands.add_parser(
        "stats", help="reference feature statistics of real images", description=cmd_stats.__doc__
    )
    stats.add_argument("--dataset", required=True, help=DATASET_HELP)
    stats.add_argument("--split", default="train", help="train (default), test or all")
    stats.add_argument("--features", required=True, help=FEATURES_HELP)
    stats.add_argument("--out", type=output_file, required=True, help="statistics file to write (.npz)")
    stats.add_argument("--image-size", type=positive_int, default=None, help="resize images to this square size")
    stats.add_argument("--keep-features", type=positive_int, default=10_000, help="features kept for KID and P/R")
    stats.add_argument("--seed", type=non_negative_int, default=0, help="seed choosing the kept features")
    stats.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="processes decoding images (default: none for arrays, else cores - 1)",
    )
    add_device(stats)
    stats.set_defaults(run=cmd_stats)

    evaluate = commands.add_parser(
        "eval", help="FD, KID, precision/recall, accuracy, latency", description=cmd_eval.__doc__
    )
    add_checkpoint(evaluate)
    evaluate.add_argument("--reference", required=True, help="statistics file from `latentfm stats`")
    evaluate.add_argument("--features", required=True, help=FEATURES_HELP + "; must match the reference's")
    evaluate.add_argument("--classifier", default=None, help="classifier for class accuracy with Inception features")
    evaluate.add_argument(
        "--n", "--num-samples", dest="n", type=positive_int, default=50_000, metavar="TOTAL", help="samples to generate"
    )
    add_sampler_arguments(evaluate)
    evaluate.add_argument(
        "--shard-size", type=positive_int, default=1000, help="samples per resumable shard (default 1000)"
    )
    evaluate.add_argument("--keep-features", type=positive_int, default=10_000, help="features kept for KID and P/R")
    evaluate.add_argument(
        "--latency-batch", type=positive_int, default=64, help="batch size of the latency measurement"
    )
    evaluate.add_argument("--latency-repeats", type=positive_int, default=5, help="timed repeats after 2 warm-up runs")
    add_device(evaluate, "; under torchrun, this rank's GPU")
    add_output_dir(evaluate, help="output directory (an unfinished one is resumed)")
    evaluate.set_defaults(run=cmd_eval)
