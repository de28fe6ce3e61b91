"""``latentfm bench``: solver error and time against NFE, and sample quality against time (FlowTurbo)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from latentfm.cli.inputs import int_list
from latentfm.cli.options import (
    FEATURES_HELP,
    add_device,
    add_output_dir,
    add_sampler_flags,
    device,
    non_negative_int,
    pipeline,
    positive_int,
    sampler_settings,
)
from latentfm.errors import LatentFMError


def cmd_bench_solvers(args: argparse.Namespace) -> None:
    """Endpoint RMSE and wall time against NFE for every solver and schedule: on an analytic Gaussian
    mixture, and on a checkpoint when one is given. Writes OUT/solvers.json, OUT/solvers.md and a plot per part."""
    from latentfm.bench.solvers import checkpoint_bench, mixture_bench, write_solver_report
    from latentfm.sampling import SamplerSettings

    nfes, search_nfes = int_list(args.nfe, "--nfe"), int_list(args.search_nfe, "--search-nfe")
    if not args.mixture and not args.checkpoint:
        raise LatentFMError("nothing to benchmark: give --checkpoint or leave out --no-mixture")
    cfg = None if args.cfg is None else sampler_settings(args, SamplerSettings()).cfg  # None: the recipe's
    on = device(args.device)
    report = {}
    if args.mixture:
        report["mixture"] = mixture_bench(nfes, search_nfes, args.seed, args.iterations, device=on)
    if args.checkpoint:
        report["checkpoint"] = checkpoint_bench(
            args.checkpoint, on, nfes, search_nfes, args.n, cfg, args.seed, args.iterations
        )
    print(write_solver_report(Path(args.out), report))


def cmd_bench_turbo(args: argparse.Namespace) -> None:
    """Sample quality against wall-clock per image for fixed-step solvers, searched schedules and FlowTurbo
    programs (with the checkpoint's guidance), eager and, with --compile, compiled: FD and class accuracy of the
    same N samples each. Writes OUT/turbo.json, OUT/turbo.md and OUT/turbo.png (FD against ms per image)."""
    from dataclasses import replace

    from latentfm.bench.turbo import SAMPLERS, named_sampler, turbo_bench, write_turbo_report
    from latentfm.evaluation import TrainingEvaluation
    from latentfm.evaluation.report import machine_description
    from latentfm.sampling import SamplerSettings
    from latentfm.sampling.solvers import rules_refiner_calls

    samplers = [text for text in args.samplers.split(",") if text] if args.samplers else list(SAMPLERS)
    programs = [named_sampler(text, SamplerSettings()) for text in samplers]  # bad names fail before any work
    if not args.refiner and any(s.turbo and rules_refiner_calls(s.rules) for s in programs):
        raise LatentFMError("turbo programs with refiner steps need --refiner RUN (latentfm train-refiner)")
    pipe = pipeline(args)
    pipe = replace(pipe, sampler=sampler_settings(args, pipe.sampler))
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


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The parsers of this family."""
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
    solvers.add_argument(
        "--n", type=positive_int, default=256, metavar="SAMPLES", help="samples the checkpoint's errors average over"
    )
    add_sampler_flags(solvers, ("cfg",))  # the checkpoint's guidance
    solvers.add_argument("--search-nfe", default="8", help="NFE budgets to search a schedule for ('' for none)")
    solvers.add_argument("--iterations", type=positive_int, default=100, help="search L-BFGS iterations per program")
    solvers.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the evaluation noise (calibration uses +1)"
    )
    add_device(solvers)
    add_output_dir(solvers, "out/bench_solvers")
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
    turbo.add_argument("--n", type=positive_int, default=1000, metavar="PER_SAMPLER", help="samples per sampler")
    turbo.add_argument("--seed", type=non_negative_int, default=0, help="noise seed (sample i uses (seed, i))")
    add_sampler_flags(turbo, ("cfg", "guidance_interval"))
    turbo.add_argument(
        "--compile", nargs="?", const="default", metavar="MODE", help="also time every sampler compiled (torch.compile)"
    )
    add_device(turbo)
    add_output_dir(turbo, "out/bench_turbo")
    turbo.set_defaults(run=cmd_bench_turbo)
