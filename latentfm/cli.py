"""The ``latentfm`` command: it only parses arguments and wires the library together; every result is written
by the module that owns it.

Every problem a user can fix is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from latentfm.errors import LatentFMError, Terminated
from latentfm.sampling.settings import DEFAULT_NFE, GIVEN_FIELDS, interval_text

if TYPE_CHECKING:
    from latentfm.config import DataConfig
    from latentfm.pipeline import Latents
    from latentfm.sampling import SamplerSettings, SampleStats

DESCRIPTION = (
    "Train flow-matching image models in an autoencoder's latent space (or on pixels), sample them fast and "
    "measure them. Run `latentfm COMMAND --help` for a command's options."
)


def _parse_labels(text: str | None, num_classes: int) -> list[int] | None:
    """``"all"``, ``"0,3,7"`` or ``"2-5"`` as a list of class indices; None for unconditional sampling."""
    if num_classes == 0:
        if text not in (None, "all"):
            raise LatentFMError("--labels: this checkpoint is unconditional; leave --labels out")
        return None
    if text in (None, "all"):
        return list(range(num_classes))
    labels: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise LatentFMError(f"--labels {text!r}: use 'all', a list like 0,3,7 or a range like 2-5") from None
        bad = next((label for label in (first, last) if not 0 <= label < num_classes), None)
        if bad is not None:
            raise LatentFMError(f"--labels: {bad} is not a class of this checkpoint (0..{num_classes - 1})")
        if last < first:
            raise LatentFMError(f"--labels {text!r}: the range {part} is empty; write it low-high")
        labels.extend(range(first, last + 1))
    return labels


def dataset_config(spec: str, split: str | None = None, image_size: int | None = None) -> DataConfig:
    """The ``DataConfig`` a command-line ``--dataset`` names: ``digits``, ``fashion_mnist`` (the Debian IDX
    files), ``idx:DIR``, ``folder:DIR``, ``npz:FILE``, or a YAML config file (its ``data`` section)."""
    from latentfm.config import DataConfig, load_config
    from latentfm.data.arrays import DEFAULT_IDX_PATH

    if spec.endswith((".yaml", ".yml")):
        data = load_config(spec).data
    elif spec in ("digits", "fashion_mnist"):
        data = DataConfig(dataset="digits") if spec == "digits" else DataConfig(dataset="idx", path=DEFAULT_IDX_PATH)
    elif spec.partition(":")[0] in ("idx", "folder", "npz") and spec.partition(":")[2]:
        kind, _, path = spec.partition(":")
        data = DataConfig(dataset=kind, path=path)
    else:
        raise LatentFMError(
            f"--dataset {spec!r}: use digits, fashion_mnist, idx:DIR, folder:DIR, npz:FILE or a YAML config"
        )
    data.split = split or data.split
    data.image_size = image_size or data.image_size
    return data


def cmd_train(args: argparse.Namespace) -> None:
    """Train a flow model from a YAML config plus overrides."""
    from latentfm.config import load_config
    from latentfm.distributed import teardown_distributed
    from latentfm.evaluation import training_evaluation
    from latentfm.training.trainer import Trainer

    config = load_config(args.config, args.overrides)
    try:
        checkpoint = Trainer(config, make_evaluation=training_evaluation(config.eval)).run()
        print(f"checkpoint: {checkpoint}")
    finally:
        teardown_distributed()


def cmd_train_refiner(args: argparse.Namespace) -> None:
    """Train FlowTurbo's velocity refiner for a trained flow model (the teacher, frozen): its data, task and model
    come from the teacher's checkpoint, the refiner, optim, train and sample sections from the config."""
    from latentfm.distributed import teardown_distributed
    from latentfm.training.refiner_trainer import RefinerTrainer, refiner_config

    config = refiner_config(args.teacher, args.config, args.overrides)
    try:
        checkpoint = RefinerTrainer(config).run()
        print(f"checkpoint: {checkpoint}")
    finally:
        teardown_distributed()


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


def cmd_sample(args: argparse.Namespace) -> None:
    """Generate images from a checkpoint into OUT/samples.png, OUT/samples.npz and OUT/stats.json."""
    from latentfm.pipeline import FlowPipeline, Latents, save_samples

    if args.n < 1:
        raise LatentFMError(f"--n {args.n}: must be at least 1")
    pipe = _pipeline(args)
    settings = _sampler_settings(args, pipe.sampler)
    run = {"checkpoint": str(args.checkpoint), "seed": args.seed, "schedule": args.schedule}
    if args.semantic:
        map_files = _map_files(args.semantic)
        maps = torch.stack([_read_map(file, pipe.image_shape) for file in map_files]).repeat_interleave(args.n, 0)
        label_tensor = _cycled_labels(args.labels, pipe.num_classes, args.n, len(map_files))
        total, columns, run["semantic"] = len(maps), args.n, [str(file) for file in map_files]
    else:
        labels = _parse_labels(args.labels, pipe.num_classes)
        label_tensor = None if labels is None else torch.tensor(labels).repeat_interleave(args.n)
        maps, total, columns = None, args.n, args.n if labels else 16
    inputs = None if maps is None else {"map": maps}
    start = time.perf_counter()
    latents, stats = pipe.latents(
        label_tensor,
        n=total,
        seed=args.seed,
        settings=settings,
        batch_size=args.batch_size,
        progress=True,
        inputs=inputs,
    )
    stages = [_stage(args.checkpoint, stats, time.perf_counter() - start)]
    low, last = Latents(latents, pipe.latent_norm, pipe.autoencoder_identity or {}), pipe
    for checkpoint in args.upsample or []:
        stage_start, last = time.perf_counter(), FlowPipeline.from_checkpoint(checkpoint, device=pipe.device)
        values, stage_stats = last.upsample(low, seed=args.seed, batch_size=args.batch_size, decode=False)
        low = Latents(values, last.latent_norm, last.autoencoder_identity or {})
        stages.append(_stage(checkpoint, stage_stats, time.perf_counter() - stage_start))
    images = last.decode(low.values, args.batch_size)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    if args.latents:
        low.save(out / "latents.npz")
    run.update(cfg=settings.cfg, guidance_interval=interval_text(settings.guidance_interval))
    if args.upsample:
        run["stages"] = stages
    save_samples(out, images, label_tensor, stats, {**run, "seconds": round(seconds, 3)}, columns)
    print(f"wrote {len(images)} samples ({stats.nfe} NFE, {seconds:.1f}s) to {out}/samples.png and samples.npz")


def _paired_files(image: str, mask: str) -> list[tuple[Path, Path]]:
    """(image, mask) file pairs: two files, or two folders whose PNGs pair by file name."""
    image_path, mask_path = Path(image), Path(mask)
    for path, flag in ((image_path, "--image"), (mask_path, "--mask")):
        if not path.exists():
            raise LatentFMError(f"{flag} {path} not found: give a PNG file or a folder of PNGs")
    if image_path.is_dir() != mask_path.is_dir():
        raise LatentFMError(f"--image {image_path} and --mask {mask_path}: give two files or two folders")
    if not image_path.is_dir():
        return [(image_path, mask_path)]
    names = sorted(f.name for f in image_path.iterdir() if f.suffix.lower() == ".png")
    if not names:
        raise LatentFMError(f"--image {image_path} holds no PNG files")
    missing = [name for name in names if not (mask_path / name).is_file()]
    if missing:
        raise LatentFMError(f"--mask {mask_path} has no {missing[0]}: masks pair with images by file name")
    return [(image_path / name, mask_path / name) for name in names]


def _cycled_labels(text: str | None, num_classes: int, per_input: int, inputs: int) -> torch.Tensor | None:
    """``--labels`` cycled over the ``per_input`` outputs of each input; None (the null label) when not given."""
    labels = None if text is None else _parse_labels(text, num_classes)  # refuses labels an unconditional model
    if labels is None:
        return None
    return torch.tensor([labels[j % len(labels)] for j in range(per_input)]).repeat(inputs)


def _read_pair(image_file: Path, mask_file: Path, image_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """An image in the model's channel mode and its mask, refused in one line unless both have the model's size."""
    from latentfm.image_io import read_image, read_mask

    image, mask = read_image(image_file, image_shape[0]), read_mask(mask_file)
    if mask.shape[-2:] != image.shape[-2:]:
        size = "x".join(map(str, image.shape[:0:-1]))
        raise LatentFMError(f"mask {mask_file} is not {size} like image {image_file}: give masks of the image's size")
    if tuple(image.shape) != tuple(image_shape):
        expected = "x".join(map(str, image_shape[:0:-1]))
        raise LatentFMError(f"image {image_file} is not {expected}, the size of the model's images: resize it")
    return image, mask


def cmd_inpaint(args: argparse.Namespace) -> None:
    """Complete the white part of each mask (black = keep) with a checkpoint trained with task.kind=inpaint;
    writes OUT/inpainted.npz (uint8 completions), OUT/inpainted.png (image, mask, completions per row) and
    OUT/stats.json. The known region of every completion is the input's pixels exactly."""
    from latentfm.pipeline import save_inpainted

    pairs = _paired_files(args.image, args.mask)
    pipe = _pipeline(args)
    images, masks = map(torch.stack, zip(*[_read_pair(image, mask, pipe.image_shape) for image, mask in pairs]))
    if args.n < 1:
        raise LatentFMError(f"--n {args.n}: ask for at least one completion")
    settings = _sampler_settings(args, pipe.sampler)
    labels = _cycled_labels(args.labels, pipe.num_classes, args.n, len(pairs))
    start = time.perf_counter()
    completions, stats = pipe.inpaint(
        images,
        masks,
        n=args.n,
        labels=labels,
        seed=args.seed,
        settings=settings,
        batch_size=args.batch_size,
        progress=True,
    )
    seconds = time.perf_counter() - start
    guidance = {"cfg": settings.cfg, "guidance_interval": interval_text(settings.guidance_interval)}
    run = {"checkpoint": str(args.checkpoint), "inputs": [str(image) for image, _ in pairs], "seed": args.seed}
    save_inpainted(Path(args.out), images, masks, completions, stats, {**run, **guidance, "seconds": round(seconds, 3)})
    print(
        f"wrote {len(completions)} completions ({stats.nfe} NFE, {seconds:.1f}s) to {args.out}/inpainted.png "
        "and inpainted.npz"
    )


def _stage(checkpoint: str, stats: SampleStats, seconds: float) -> dict[str, object]:
    """One stage of a cascade as ``stats.json`` lists it."""
    return {"checkpoint": str(checkpoint), "solver": stats.solver, "nfe": stats.nfe, "seconds": round(seconds, 3)}


def _low_resolution_inputs(path: str, channels: int) -> torch.Tensor | Latents:
    """``--input``: a folder of PNGs (sorted by name, read in the model's channel mode), a ``samples.npz`` of
    uint8 images, or a ``latents.npz`` of ``latentfm sample --latents``."""
    from latentfm.image_io import from_uint8, read_image
    from latentfm.pipeline import Latents

    source = Path(path)
    if source.is_dir():
        files = sorted(f for f in source.iterdir() if f.suffix.lower() == ".png")
        if not files:
            raise LatentFMError(f"--input {source} holds no PNG files")
        images = [read_image(file, channels) for file in files]
        for file, image in zip(files, images):
            if image.shape != images[0].shape:
                raise LatentFMError(
                    f"--input {source}: {file.name} is {image.shape[2]}x{image.shape[1]}, {files[0].name} is "
                    f"{images[0].shape[2]}x{images[0].shape[1]}: give low-resolution images of one size"
                )
        return torch.stack(images)
    if source.suffix != ".npz" or not source.is_file():
        raise LatentFMError(f"--input {source}: give a folder of PNGs, a samples.npz or a latents.npz")
    with np.load(source) as data:
        names = set(data.files)
    if "latents" in names:
        return Latents.load(source)
    if "images" not in names:
        raise LatentFMError(f"--input {source} holds neither images nor latents")
    with np.load(source) as data:
        images = torch.from_numpy(data["images"])
    images = images[..., None] if images.ndim == 3 else images
    if images.ndim != 4 or images.shape[-1] != channels or images.dtype != torch.uint8:
        raise LatentFMError(f"--input {source}: images must be uint8 N×H×W (grey) or N×H×W×3, {channels} channels here")
    return from_uint8(images.permute(0, 3, 1, 2))


def cmd_upsample(args: argparse.Namespace) -> None:
    """Up-sample low-resolution images (or latents) with a checkpoint trained with task.kind=upsample: one output
    per input, in input order, to OUT/upsampled.npz (the layout of samples.npz), OUT/upsampled.png (inputs over
    outputs) and OUT/stats.json. The same seed gives the same images."""
    from latentfm.pipeline import save_upsampled

    pipe = _pipeline(args)
    low = _low_resolution_inputs(args.input, pipe.image_shape[0])
    settings = _sampler_settings(args, pipe.sampler)
    start = time.perf_counter()
    images, stats = pipe.upsample(low, seed=args.seed, settings=settings, batch_size=args.batch_size, progress=True)
    seconds = time.perf_counter() - start
    run = {
        "checkpoint": str(args.checkpoint),
        "input": str(args.input),
        "seed": args.seed,
        "seconds": round(seconds, 3),
    }
    save_upsampled(Path(args.out), low, images, stats, run, pipe)
    print(f"wrote {len(images)} images ({stats.nfe} NFE, {seconds:.1f}s) to {args.out}/upsampled.png and upsampled.npz")


def _map_files(path: str) -> list[Path]:
    """``--semantic``: one map file, or the PNGs of a folder in file-name order."""
    source = Path(path)
    if source.is_dir():
        files = sorted(f for f in source.iterdir() if f.suffix.lower() == ".png")
        if not files:
            raise LatentFMError(f"--semantic {source} holds no PNG maps")
        return files
    if not source.is_file():
        raise LatentFMError(f"--semantic {source} not found: give a PNG of class ids or a folder of them")
    return [source]


def _read_map(file: Path, image_shape: tuple[int, ...]) -> torch.Tensor:
    """A map file as ``[1, H, W]`` class ids, refused unless it has the model's image size."""
    from latentfm.data.maps import read_map

    array = torch.from_numpy(read_map(file))
    if tuple(array.shape) != tuple(image_shape[1:]):
        size = "x".join(map(str, image_shape[:0:-1]))
        raise LatentFMError(f"map {file} is {array.shape[1]}x{array.shape[0]}, the model makes {size} images")
    return array[None]


def _sampler_settings(args: argparse.Namespace, recipe: SamplerSettings) -> SamplerSettings:
    """The checkpoint's sampler (``recipe``) with what the command line gives replaced."""
    given = [f"--{name}" for name in ("solver", "nfe", "steps") if getattr(args, name) is not None]
    if args.turbo is not None and given:
        raise LatentFMError(f"--turbo {args.turbo} is a whole sampler: drop {' and '.join(given)}")
    return recipe.with_given(**{name: getattr(args, name) for name in GIVEN_FIELDS})


def _pipeline(args: argparse.Namespace):
    """The checkpoint's pipeline on the requested device, with ``--refiner`` when given."""
    from latentfm.pipeline import FlowPipeline

    pipe = FlowPipeline.from_checkpoint(args.checkpoint, device=_device(args.device))
    return pipe.with_refiner(args.refiner) if args.refiner else pipe


def _device(name: str) -> torch.device:
    from latentfm.distributed import resolve_device

    return resolve_device(name)


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
        device=_device(args.device),
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
    extractor = load_features(args.features, _device(args.device))
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

    fields = set(EvalSettings.__dataclass_fields__)
    settings = EvalSettings(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        report = Evaluation(settings, args.out, args.device).run()
        if report is not None:
            print(Path(args.out, "report.md").read_text())
    finally:
        teardown_distributed()


def cmd_demo(args: argparse.Namespace) -> None:
    """Train a class-conditional model on the built-in digits, sample 50 per class and judge them."""
    from latentfm.demo import run_demo

    run_demo(Path(args.out), steps=args.steps, per_class=args.per_class, seed=args.seed)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LatentFMError(f"{flag} {text!r}: give integers separated by commas, e.g. 4,8,16") from None


def cmd_search_schedule(args: argparse.Namespace) -> None:
    """Search the time grid and per-step rules of an NFE budget for a checkpoint; write them as JSON."""
    from latentfm.pipeline import FlowPipeline
    from latentfm.sampling import search_schedule

    pipe = FlowPipeline.from_checkpoint(args.checkpoint, device=_device(args.device))
    recipe = pipe.sampler.with_given(cfg=args.cfg, guidance_interval=args.guidance_interval)
    cfg, interval = recipe.cfg if recipe.cfg is not None else 1.0, recipe.guidance_interval
    velocity = pipe.velocity(pipe.cycled_labels(args.n), cfg, interval, n=args.n)
    x0 = pipe.source(args.n, args.seed)
    start = time.perf_counter()
    schedule = search_schedule(velocity, x0, nfe=args.nfe, iterations=args.iterations, progress=True)
    schedule.info.update(
        checkpoint=str(args.checkpoint), cfg=cfg, guidance_interval=interval_text(interval), seed=args.seed
    )
    schedule.info["search_seconds"] = round(time.perf_counter() - start, 1)
    schedule.save(args.out)
    info = schedule.info
    print(
        f"{info['program']} at {args.nfe} NFE: calibration RMSE {info['calibration_rmse']:.4g} "
        f"(from {info['start_rmse']:.4g} with {info['start_schedule']}); wrote {args.out}"
    )


def cmd_bench_solvers(args: argparse.Namespace) -> None:
    """Endpoint RMSE and wall time against NFE for every solver and schedule: on an analytic Gaussian
    mixture, and on a checkpoint when one is given. Writes OUT/solvers.json, OUT/solvers.md and a plot per part."""
    from latentfm.bench.solvers import checkpoint_bench, mixture_bench, write_solver_report

    nfes, search_nfes = _int_list(args.nfe, "--nfe"), _int_list(args.search_nfe, "--search-nfe")
    if not args.mixture and not args.checkpoint:
        raise LatentFMError("nothing to benchmark: give --checkpoint or leave out --no-mixture")
    device = _device(args.device)
    report = {}
    if args.mixture:
        report["mixture"] = mixture_bench(nfes, search_nfes, args.seed, args.iterations, device=device)
    if args.checkpoint:
        report["checkpoint"] = checkpoint_bench(
            args.checkpoint, device, nfes, search_nfes, args.n, args.cfg, args.seed, args.iterations
        )
    print(write_solver_report(Path(args.out), report))


def cmd_bench_turbo(args: argparse.Namespace) -> None:
    """Sample quality against wall-clock per image for fixed-step solvers, searched schedules and FlowTurbo
    programs (with the checkpoint's guidance), eager and, with --compile, compiled: FD and class accuracy of the
    same N samples each. Writes OUT/turbo.json, OUT/turbo.md and OUT/turbo.png (FD against ms per image)."""
    from dataclasses import replace

    from latentfm.bench.turbo import SAMPLERS, sampler_settings, turbo_bench, write_turbo_report
    from latentfm.evaluation import TrainingEvaluation
    from latentfm.evaluation.report import machine_description
    from latentfm.sampling import SamplerSettings
    from latentfm.sampling.solvers import rules_refiner_calls

    samplers = [text for text in args.samplers.split(",") if text] if args.samplers else list(SAMPLERS)
    programs = [sampler_settings(text, SamplerSettings()) for text in samplers]  # bad names fail before any work
    if not args.refiner and any(s.turbo and rules_refiner_calls(s.rules) for s in programs):
        raise LatentFMError("turbo programs with refiner steps need --refiner RUN (latentfm train-refiner)")
    pipe = _pipeline(args)
    pipe = replace(pipe, sampler=pipe.sampler.with_given(cfg=args.cfg, guidance_interval=args.guidance_interval))
    evaluation = TrainingEvaluation(args.features, args.reference, pipe.image_shape, pipe.device)
    modes = (None, args.compile) if args.compile else (None,)
    rows = turbo_bench(pipe, evaluation, samplers, args.n, args.seed, modes)
    report = {
        "checkpoint": str(args.checkpoint),
        "refiner": args.refiner,
        "n": args.n,
        "seed": args.seed,
        "cfg": pipe.sampler.cfg,
        "guidance_interval": pipe.sampler.guidance_interval,
        "machine": machine_description(pipe.device),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(write_turbo_report(Path(args.out), report))


def _add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that pick a sampler and its noise, shared by ``sample`` and ``eval``: each one left out is
    the checkpoint's ``sample`` section (then the library default: midpoint, 8 NFE, no guidance)."""
    recipe = "default: the checkpoint's sample section"
    parser.add_argument("--solver", help=f"euler, heun, midpoint, rk4, ab2, ab3, pc or dopri5 ({recipe})")
    parser.add_argument(
        "--schedule",
        help=f"uniform, shift:S, edm:RHO, cosine, a list 0,0.4,1 or a search-schedule JSON file ({recipe})",
    )
    parser.add_argument("--nfe", type=int, help=f"velocity evaluations per sample ({recipe})")
    parser.add_argument("--steps", type=int, help="solver steps (instead of --nfe)")
    parser.add_argument("--cfg", type=float, help=f"classifier-free guidance weight, 1 = none ({recipe})")
    parser.add_argument(
        "--guidance-interval",
        metavar="LOW,HIGH",
        help=f"guide only for t in [LOW, HIGH] (t = 0 is the noise), or all ({recipe})",
    )
    parser.add_argument(
        "--turbo",
        metavar="HnPmRk",
        help="a FlowTurbo program, e.g. H1P5R3: n Heun, m pseudo-corrector and k refiner steps on the --schedule grid "
        "(replaces --solver/--nfe/--steps; refiner steps need --refiner)",
    )
    parser.add_argument("--refiner", help="the velocity refiner's run or checkpoint directory (latentfm train-refiner)")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        metavar="MODE",
        help="torch.compile each kind of sampling step as a whole (MODE: default, reduce-overhead, max-autotune)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the source noise (sample i uses (seed, i))")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per model call")


DATASET_HELP = "digits, fashion_mnist, idx:DIR, folder:DIR, npz:FILE or a YAML config (its data section)"
FEATURES_HELP = "classifier weights (.safetensors) or FID InceptionV3 weights (pt_inception-2015-12-05 .pth)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``latentfm`` command."""
    parser = argparse.ArgumentParser(prog="latentfm", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a flow model from a config", description=cmd_train.__doc__)
    train.add_argument("--config", required=True, help="YAML config file, e.g. configs/digits.yaml")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="overrides such as train.steps=100")
    train.set_defaults(run=cmd_train)

    train_refiner = commands.add_parser(
        "train-refiner",
        help="train a FlowTurbo velocity refiner for a flow model",
        description=cmd_train_refiner.__doc__,
    )
    train_refiner.add_argument("--teacher", required=True, help="the flow model's run or checkpoint directory")
    train_refiner.add_argument("--config", required=True, help="YAML config, e.g. configs/fashion_mnist_refiner.yaml")
    train_refiner.add_argument("overrides", nargs="*", metavar="key=value", help="overrides such as train.steps=100")
    train_refiner.set_defaults(run=cmd_train_refiner)

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
    encode.add_argument(
        "--downsample",
        type=int,
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
    encode.add_argument("--shard-size", type=int, default=4096, help="images per shard file (default 4096)")
    encode.add_argument("--batch-size", type=int, default=256, help="images per autoencoder call (default 256)")
    encode.add_argument("--device", default="auto", help="auto, cpu or cuda")
    encode.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides such as data.split=test")
    encode.set_defaults(run=cmd_encode)

    sample = commands.add_parser("sample", help="generate images from a checkpoint", description=cmd_sample.__doc__)
    sample.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (latest)")
    sample.add_argument("--labels", default=None, help="'all' (default), '0,3,7' or '2-5'; one grid row per label")
    sample.add_argument("--n", type=int, default=8, help="samples per label or map (total when unconditional)")
    sample.add_argument(
        "--semantic",
        metavar="MAP.png|DIR",
        help="a semantic model's map of class ids (or a folder of maps): --n samples each, one grid row per map; "
        "--labels then cycle over each map's samples (default: none)",
    )
    _add_sampler_arguments(sample)
    sample.add_argument(
        "--latents", action="store_true", help="also write OUT/latents.npz (normalised latents, for `upsample`)"
    )
    sample.add_argument(
        "--upsample",
        action="append",
        metavar="CHECKPOINT",
        help="boost the samples with an upsample checkpoint (repeatable: a cascade, latents never decoded between)",
    )
    sample.add_argument("--device", default="auto", help="auto, cpu or cuda")
    sample.add_argument("--out", required=True, help="output directory")
    sample.set_defaults(run=cmd_sample)

    upsample = commands.add_parser(
        "upsample", help="up-sample images or latents with an upsample checkpoint", description=cmd_upsample.__doc__
    )
    upsample.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (latest)")
    upsample.add_argument("--input", required=True, help="folder of low-resolution PNGs, samples.npz or latents.npz")
    _add_sampler_arguments(upsample)
    upsample.add_argument("--device", default="auto", help="auto, cpu or cuda")
    upsample.add_argument("--out", required=True, help="output directory")
    upsample.set_defaults(run=cmd_upsample)

    inpaint = commands.add_parser(
        "inpaint", help="complete masked images with an inpainting checkpoint", description=cmd_inpaint.__doc__
    )
    inpaint.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (latest)")
    inpaint.add_argument("--image", required=True, help="image PNG, or a folder of PNGs (paired with --mask by name)")
    inpaint.add_argument("--mask", required=True, help="mask PNG (white = generate, black = keep), or a folder")
    inpaint.add_argument(
        "--labels", default=None, help="class labels cycled over each image's completions (default: none)"
    )
    inpaint.add_argument("--n", type=int, default=8, help="completions of each image (default 8)")
    _add_sampler_arguments(inpaint)
    inpaint.add_argument("--device", default="auto", help="auto, cpu or cuda")
    inpaint.add_argument("--out", required=True, help="output directory")
    inpaint.set_defaults(run=cmd_inpaint)

    search = commands.add_parser(
        "search-schedule",
        help="tune a sampler's times and rules to a checkpoint",
        description=cmd_search_schedule.__doc__,
    )
    search.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (latest)")
    search.add_argument(
        "--nfe", type=int, default=DEFAULT_NFE, help=f"NFE budget to spend exactly (default {DEFAULT_NFE})"
    )
    search.add_argument("--out", required=True, help="JSON file to write, e.g. runs/x/schedule_nfe8.json")
    search.add_argument("--n", type=int, default=256, help="calibration samples (default 256)")
    search.add_argument(
        "--cfg", type=float, help="guidance weight the schedule is tuned for (default: the checkpoint's sample section)"
    )
    search.add_argument(
        "--guidance-interval",
        metavar="LOW,HIGH",
        help="guide only for t in [LOW, HIGH] while tuning, or all (default: the checkpoint's sample section)",
    )
    search.add_argument("--seed", type=int, default=1000, help="seed of the calibration noise (default 1000)")
    search.add_argument("--iterations", type=int, default=100, help="L-BFGS iterations per program (default 100)")
    search.add_argument("--device", default="auto", help="auto, cpu or cuda")
    search.set_defaults(run=cmd_search_schedule)

    bench = commands.add_parser(
        "bench", help="benchmarks (bench solvers, bench turbo)", description="latentfm benchmarks"
    )
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    solvers = benches.add_parser(
        "solvers", help="solver error and time against NFE", description=cmd_bench_solvers.__doc__
    )
    solvers.add_argument("--checkpoint", default=None, help="also benchmark this checkpoint (reference: dopri5 1e-6)")
    solvers.add_argument(
        "--mixture", action=argparse.BooleanOptionalAction, default=True, help="the analytic mixture (default on)"
    )
    solvers.add_argument("--nfe", default="4,6,8,10,16,32", help="NFE budgets (default 4,6,8,10,16,32)")
    solvers.add_argument("--n", type=int, default=256, help="checkpoint evaluation samples (default 256)")
    solvers.add_argument("--cfg", type=float, default=1.0, help="guidance weight for the checkpoint")
    solvers.add_argument("--search-nfe", default="8", help="NFE budgets to search a schedule for ('' for none)")
    solvers.add_argument("--iterations", type=int, default=100, help="search L-BFGS iterations per program")
    solvers.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise (calibration uses +1)")
    solvers.add_argument("--device", default="auto", help="auto, cpu or cuda")
    solvers.add_argument("--out", default="out/bench_solvers", help="output directory")
    solvers.set_defaults(run=cmd_bench_solvers)
    turbo = benches.add_parser(
        "turbo", help="sample quality against time per image, FlowTurbo included", description=cmd_bench_turbo.__doc__
    )
    turbo.add_argument("--checkpoint", required=True, help="the flow model's run or checkpoint directory")
    turbo.add_argument("--refiner", help="its velocity refiner (latentfm train-refiner), for programs with R > 0")
    turbo.add_argument("--features", required=True, help=FEATURES_HELP)
    turbo.add_argument("--reference", required=True, help="reference statistics (latentfm stats) of those features")
    turbo.add_argument(
        "--samplers",
        help="comma-separated SOLVER:NFE and turbo programs HnPmRk (uniform grid; @SCHEDULE for another, e.g. "
        "H1P6R0@shift:0.5) and search-schedule JSON files (default: euler and heun at 8 and 16 NFE, midpoint:8, "
        "H1P4R3, H1P5R2, H2P3R3, H1P3R4)",
    )
    turbo.add_argument("--n", type=int, default=1000, help="samples per sampler (default 1000)")
    turbo.add_argument("--seed", type=int, default=0, help="noise seed (sample i uses (seed, i))")
    turbo.add_argument("--cfg", type=float, help="guidance weight (default: the checkpoint's)")
    turbo.add_argument("--guidance-interval", metavar="LOW,HIGH", help="guidance interval (default: the checkpoint's)")
    turbo.add_argument(
        "--compile", nargs="?", const="default", metavar="MODE", help="also time every sampler compiled (torch.compile)"
    )
    turbo.add_argument("--device", default="auto", help="auto, cpu or cuda")
    turbo.add_argument("--out", default="out/bench_turbo", help="output directory")
    turbo.set_defaults(run=cmd_bench_turbo)

    classifier = commands.add_parser(
        "train-classifier",
        help="train the in-project judge/feature classifier",
        description=cmd_train_classifier.__doc__,
    )
    classifier.add_argument("--dataset", required=True, help=DATASET_HELP)
    classifier.add_argument("--out", required=True, help="weights file to write (.safetensors, plus .json sidecars)")
    classifier.add_argument("--image-size", type=int, default=None, help="resize images to this square size")
    classifier.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    classifier.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    classifier.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    classifier.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation")
    classifier.add_argument(
        "--test-split", action=argparse.BooleanOptionalAction, default=True, help="report test accuracy (default on)"
    )
    classifier.add_argument("--device", default="auto", help="auto, cpu or cuda")
    classifier.set_defaults(run=cmd_train_classifier)

    stats = commands.add_parser(
        "stats", help="reference feature statistics of real images", description=cmd_stats.__doc__
    )
    stats.add_argument("--dataset", required=True, help=DATASET_HELP)
    stats.add_argument("--split", default="train", help="train (default), test or all")
    stats.add_argument("--features", required=True, help=FEATURES_HELP)
    stats.add_argument("--out", required=True, help="statistics file to write (.npz)")
    stats.add_argument("--image-size", type=int, default=None, help="resize images to this square size")
    stats.add_argument("--keep-features", type=int, default=10_000, help="features kept for KID and P/R (10000)")
    stats.add_argument("--seed", type=int, default=0, help="seed choosing the kept features")
    stats.add_argument(
        "--workers", type=int, default=None, help="processes decoding images (default: none for arrays, else cores - 1)"
    )
    stats.add_argument("--device", default="auto", help="auto, cpu or cuda")
    stats.set_defaults(run=cmd_stats)

    evaluate = commands.add_parser(
        "eval", help="FD, KID, precision/recall, accuracy, latency", description=cmd_eval.__doc__
    )
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory (latest)")
    evaluate.add_argument("--reference", required=True, help="statistics file from `latentfm stats`")
    evaluate.add_argument("--features", required=True, help=FEATURES_HELP + "; must match the reference's")
    evaluate.add_argument("--classifier", default=None, help="classifier for class accuracy with Inception features")
    evaluate.add_argument(
        "--n", "--num-samples", dest="n", type=int, default=50_000, help="samples to generate (default 50000)"
    )
    _add_sampler_arguments(evaluate)
    evaluate.add_argument("--shard-size", type=int, default=1000, help="samples per resumable shard (default 1000)")
    evaluate.add_argument("--keep-features", type=int, default=10_000, help="features kept for KID and P/R (10000)")
    evaluate.add_argument("--latency-batch", type=int, default=64, help="batch size of the latency measurement")
    evaluate.add_argument("--latency-repeats", type=int, default=5, help="timed repeats after 2 warm-up runs")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda (torchrun: this rank's GPU)")
    evaluate.add_argument("--out", required=True, help="output directory (an unfinished one is resumed)")
    evaluate.set_defaults(run=cmd_eval)

    demo = commands.add_parser(
        "demo", help="train on built-in digits and sample (CPU, minutes)", description=cmd_demo.__doc__
    )
    demo.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    demo.add_argument("--per-class", type=int, default=50, help="samples per class (default 50)")
    demo.add_argument("--seed", type=int, default=0, help="seed of training and sampling")
    demo.set_defaults(run=cmd_demo)
    return parser


STORAGE_ERRORS = {
    errno.ENOSPC: "free space or write elsewhere; finished outputs and checkpoints are intact",
    errno.EDQUOT: "free space or write elsewhere; finished outputs and checkpoints are intact",
    errno.EROFS: "choose a writable location",
    errno.EACCES: "choose a location you may write to",
    errno.EPERM: "choose a location you may write to",
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except LatentFMError as error:
        print(f"latentfm: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in STORAGE_ERRORS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"latentfm: error: {where}{error.strerror}: {STORAGE_ERRORS[error.errno]}", file=sys.stderr)
        return 2
    except Terminated:
        print("latentfm: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("latentfm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
