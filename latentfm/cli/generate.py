"""Commands that generate: ``sample``, ``inpaint``, ``upsample`` and ``search-schedule``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from latentfm.cli.inputs import (
    cycled_labels,
    low_resolution_inputs,
    map_files,
    paired_files,
    parse_labels,
    read_map_file,
    read_pair,
)
from latentfm.cli.options import (
    add_checkpoint,
    add_device,
    add_output_dir,
    add_sampler_arguments,
    add_sampler_flags,
    device,
    non_negative_int,
    output_file,
    pipeline,
    positive_int,
    sampler_settings,
)
from latentfm.errors import LatentFMError
from latentfm.sampling.settings import DEFAULT_NFE, interval_text

if TYPE_CHECKING:
    from latentfm.sampling import SampleStats


def cmd_sample(args: argparse.Namespace) -> None:
    """Generate images from a checkpoint into OUT/samples.png, OUT/samples.npz and OUT/stats.json."""
    from latentfm.image_io import write_adm_batch, write_image_folder
    from latentfm.pipeline import FlowPipeline, Latents, save_samples

    if args.n < 1:
        raise LatentFMError(f"--n {args.n}: must be at least 1")
    pipe = pipeline(args)
    settings = sampler_settings(args, pipe.sampler)
    run = {"checkpoint": str(args.checkpoint), "seed": args.seed, "sampler": settings.to_values()}
    if args.semantic:
        files = map_files(args.semantic)
        maps = torch.stack([read_map_file(file, pipe.image_shape) for file in files]).repeat_interleave(args.n, 0)
        label_tensor = cycled_labels(args.labels, pipe.num_classes, args.n, len(files), pipe.class_names)
        total, columns, run["semantic"] = len(maps), args.n, [str(file) for file in files]
    else:
        labels = parse_labels(args.labels, pipe.num_classes, pipe.class_names)
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
    stages = [stage(args.checkpoint, stats, time.perf_counter() - start)]
    low, last = Latents(latents, pipe.latent_norm, pipe.autoencoder_identity or {}), pipe
    for checkpoint in args.upsample or []:
        stage_start, last = time.perf_counter(), FlowPipeline.from_pretrained(checkpoint, device=pipe.device)
        values, stage_stats = last.upsample(low, seed=args.seed, batch_size=args.batch_size, decode=False)
        low = Latents(values, last.latent_norm, last.autoencoder_identity or {})
        stages.append(stage(checkpoint, stage_stats, time.perf_counter() - stage_start))
    images = last.decode(low.values, args.batch_size)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    if args.latents:
        low.save(out / "latents.npz")
    if args.upsample:
        run["stages"] = stages
    save_samples(out, images, label_tensor, stats, {**run, "seconds": round(seconds, 3)}, columns)
    if args.png_folder:
        write_image_folder(out / "images", images)
    if args.adm_npz:
        write_adm_batch(out / "samples_adm.npz", images, label_tensor)
    print(f"wrote {len(images)} samples ({stats.nfe} NFE, {seconds:.1f}s) to {out}/samples.png and samples.npz")


def cmd_inpaint(args: argparse.Namespace) -> None:
    """Complete the white part of each mask (black = keep) with a checkpoint trained with task.kind=inpaint;
    writes OUT/inpainted.npz (uint8 completions), OUT/inpainted.png (image, mask, completions per row) and
    OUT/stats.json. The known region of every completion is the input's pixels exactly."""
    from latentfm.pipeline import save_inpainted

    pairs = paired_files(args.image, args.mask)
    pipe = pipeline(args)
    images, masks = map(torch.stack, zip(*[read_pair(image, mask, pipe.image_shape) for image, mask in pairs]))
    if args.n < 1:
        raise LatentFMError(f"--n {args.n}: ask for at least one completion")
    settings = sampler_settings(args, pipe.sampler)
    labels = cycled_labels(args.labels, pipe.num_classes, args.n, len(pairs), pipe.class_names)
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
    run = {"checkpoint": str(args.checkpoint), "inputs": [str(image) for image, _ in pairs], "seed": args.seed}
    run.update(sampler=settings.to_values(), seconds=round(seconds, 3))
    save_inpainted(Path(args.out), images, masks, completions, stats, run)
    print(
        f"wrote {len(completions)} completions ({stats.nfe} NFE, {seconds:.1f}s) to {args.out}/inpainted.png "
        "and inpainted.npz"
    )


def stage(checkpoint: str, stats: SampleStats, seconds: float) -> dict[str, object]:
    """One stage of a cascade as ``stats.json`` lists it."""
    return {"checkpoint": str(checkpoint), "solver": stats.solver, "nfe": stats.nfe, "seconds": round(seconds, 3)}


def cmd_upsample(args: argparse.Namespace) -> None:
    """Up-sample low-resolution images (or latents) with a checkpoint trained with task.kind=upsample: one output
    per input, in input order, to OUT/upsampled.npz (the layout of samples.npz), OUT/upsampled.png (inputs over
    outputs) and OUT/stats.json. The same seed gives the same images."""
    from latentfm.pipeline import save_upsampled

    pipe = pipeline(args)
    low = low_resolution_inputs(args.input, pipe.image_shape[0])
    settings = sampler_settings(args, pipe.sampler)
    start = time.perf_counter()
    images, stats = pipe.upsample(low, seed=args.seed, settings=settings, batch_size=args.batch_size, progress=True)
    seconds = time.perf_counter() - start
    run = {
        "checkpoint": str(args.checkpoint),
        "input": str(args.input),
        "seed": args.seed,
        "sampler": settings.to_values(),
        "seconds": round(seconds, 3),
    }
    save_upsampled(Path(args.out), low, images, stats, run, pipe)
    print(f"wrote {len(images)} images ({stats.nfe} NFE, {seconds:.1f}s) to {args.out}/upsampled.png and upsampled.npz")


def cmd_search_schedule(args: argparse.Namespace) -> None:
    """Search the time grid and per-step rules of an NFE budget for a checkpoint; write them as JSON."""
    from latentfm.pipeline import FlowPipeline
    from latentfm.sampling import search_schedule

    pipe = FlowPipeline.from_pretrained(args.checkpoint, device=device(args.device))
    recipe = sampler_settings(args, pipe.sampler)
    cfg, interval = recipe.cfg, recipe.guidance_interval
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


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The parsers of this family."""
    sample = commands.add_parser("sample", help="generate images from a checkpoint", description=cmd_sample.__doc__)
    add_checkpoint(sample)
    sample.add_argument(
        "--labels", default=None, help="'all' (default), '0,3,7', '2-5' or class names ('Sneaker,Bag'); a grid row each"
    )
    sample.add_argument(
        "--n", type=positive_int, default=8, metavar="PER_LABEL", help="samples per label or map (all, unconditional)"
    )
    sample.add_argument(
        "--semantic",
        metavar="MAP.png|DIR",
        help="a semantic model's map of class ids (or a folder of maps): --n samples each, one grid row per map; "
        "--labels then cycle over each map's samples (default: none)",
    )
    add_sampler_arguments(sample)
    sample.add_argument(
        "--latents", action="store_true", help="also write OUT/latents.npz (normalised latents, for `upsample`)"
    )
    sample.add_argument(
        "--png-folder", action="store_true", help="also write OUT/images/000000.png, ... (clean-fid, torch-fidelity)"
    )
    sample.add_argument(
        "--adm-npz", action="store_true", help="also write OUT/samples_adm.npz: arr_0 N×H×W×3 uint8 (ADM's evaluator)"
    )
    sample.add_argument(
        "--upsample",
        action="append",
        metavar="CHECKPOINT",
        help="boost the samples with an upsample checkpoint (repeatable: a cascade, latents never decoded between)",
    )
    add_device(sample)
    add_output_dir(sample)
    sample.set_defaults(run=cmd_sample)

    upsample = commands.add_parser(
        "upsample", help="up-sample images or latents with an upsample checkpoint", description=cmd_upsample.__doc__
    )
    add_checkpoint(upsample)
    upsample.add_argument("--input", required=True, help="folder of low-resolution PNGs, samples.npz or latents.npz")
    add_sampler_arguments(upsample)
    add_device(upsample)
    add_output_dir(upsample)
    upsample.set_defaults(run=cmd_upsample)

    inpaint = commands.add_parser(
        "inpaint", help="complete masked images with an inpainting checkpoint", description=cmd_inpaint.__doc__
    )
    add_checkpoint(inpaint)
    inpaint.add_argument("--image", required=True, help="image PNG, or a folder of PNGs (paired with --mask by name)")
    inpaint.add_argument("--mask", required=True, help="mask PNG (white = generate, black = keep), or a folder")
    inpaint.add_argument(
        "--labels", default=None, help="class labels cycled over each image's completions (default: none)"
    )
    inpaint.add_argument("--n", type=positive_int, default=8, metavar="PER_IMAGE", help="completions of each image")
    add_sampler_arguments(inpaint)
    add_device(inpaint)
    add_output_dir(inpaint)
    inpaint.set_defaults(run=cmd_inpaint)

    search = commands.add_parser(
        "search-schedule",
        help="tune a sampler's times and rules to a checkpoint",
        description=cmd_search_schedule.__doc__,
    )
    add_checkpoint(search)
    search.add_argument(
        "--nfe", type=positive_int, default=DEFAULT_NFE, help=f"NFE budget to spend exactly (default {DEFAULT_NFE})"
    )
    search.add_argument(
        "--out", type=output_file, required=True, help="JSON file to write, e.g. runs/x/schedule_nfe8.json"
    )
    search.add_argument("--n", type=positive_int, default=256, metavar="CALIBRATION", help="calibration samples")
    add_sampler_flags(search, ("cfg", "guidance_interval"))  # the guidance the schedule is tuned for
    search.add_argument(
        "--seed", type=non_negative_int, default=1000, help="seed of the calibration noise (default 1000)"
    )
    search.add_argument(
        "--iterations", type=positive_int, default=100, help="L-BFGS iterations per program (default 100)"
    )
    add_device(search)
    search.set_defaults(run=cmd_search_schedule)
