"""One and two steps on the Fashion-MNIST recipe (issue 25): the base model at 1-8 NFE against the models of
`latentfm train-fewstep` at 1-4 NFE (`fewstep` table), and the stochastic sampler against the ODE solvers at
8-64 NFE (`sde` table).

Every row draws the same 1,000 samples (100 per class, sample i from noise seed (S, i); the sde solver's fresh
noise from (S, i, 1, step)) and is judged by the judge of `benchmarks/judge.py` (FD of the in-project classifier's
features against the test split, class accuracy). Seconds are the whole generation at batch 256, one job on the
machine. A grid of the first ten samples of each class is written per row.

    python -m benchmarks.fewstep_fashion_mnist fewstep --base RUN --tuned consistency=RUN2 shortcut=RUN3
    python -m benchmarks.fewstep_fashion_mnist sde --base RUN

Writes benchmarks/results/fewstep_fashion_mnist/{fewstep,sde}.{json,md} and ROW.png grids, prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.judge import prepare_judge
from latentfm.atomic import write_bytes_atomic
from latentfm.image_io import quantise, save_grid
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings

RESULTS = Path(__file__).resolve().parent / "results" / "fewstep_fashion_mnist"
GUIDED = dict(cfg=2.0, guidance_interval=(0.25, 1.0))  # the recipe's guidance
EVERYWHERE = dict(cfg=2.0, guidance_interval=(0.0, 1.0))  # at 1-2 steps the recipe's interval skips the first

# (name, solver, nfe, schedule, guidance) of the base model; the best of each NFE is the row that counts
BASE_ROWS = [
    ("euler", 1, "uniform", EVERYWHERE),
    ("euler", 1, "uniform", dict(cfg=1.0)),
    ("euler", 2, "uniform", EVERYWHERE),
    ("euler", 2, "uniform", GUIDED),
    ("midpoint", 2, "uniform", EVERYWHERE),
    ("euler", 4, "uniform", GUIDED),
    ("euler", 4, "cosine", GUIDED),
    ("midpoint", 4, "uniform", GUIDED),
    ("midpoint", 4, "cosine", GUIDED),
    ("euler", 8, "uniform", GUIDED),
    ("euler", 8, "cosine", GUIDED),
    ("midpoint", 8, "cosine", GUIDED),
]
TUNED_ROWS = [
    ("fewstep", 1, "uniform", dict(cfg=1.0)),
    ("fewstep", 1, "uniform", dict(cfg=1.5, guidance_interval=(0.0, 1.0))),
    ("fewstep", 1, "uniform", EVERYWHERE),
    ("fewstep", 2, "uniform", dict(cfg=1.0)),
    ("fewstep", 2, "uniform", dict(cfg=1.5, guidance_interval=(0.0, 1.0))),
    ("fewstep", 2, "uniform", EVERYWHERE),
    ("fewstep", 2, "uniform", GUIDED),
    ("fewstep", 4, "uniform", EVERYWHERE),
    ("fewstep", 4, "uniform", GUIDED),
]
SDE_NFE = (8, 16, 32, 64)
SDE_ROWS = [  # H = 0 is Euler (tests/sampling/test_sde.py), so the euler rows are the H = 0 rows
    (solver, nfe, "uniform", dict(GUIDED, **extra))
    for nfe in SDE_NFE
    for solver, extra in (("euler", {}), ("sde", {"noise": 0.5}), ("sde", {"noise": 1.0}), ("midpoint", {}))
    if (solver, nfe) != ("midpoint", 64)  # left out for time (BENCHMARKS.md says so)
]


def settings_of(row: tuple) -> SamplerSettings:
    """The sampler of a row."""
    solver, nfe, schedule, guidance = row
    return SamplerSettings(solver=solver, nfe=nfe, schedule=schedule, **guidance)


def row_name(model: str, settings: SamplerSettings) -> str:
    """``MODEL-SOLVER-NFE-SCHEDULE-cfgW-INTERVAL[-HNOISE]``, also the grid's file name."""
    low, high = settings.guidance_interval or (0.0, 1.0)
    noise = f"-H{settings.noise:g}" if settings.solver == "sde" else ""
    return f"{model}-{settings.solver}{settings.nfe}-{settings.schedule}-cfg{settings.cfg:g}-{low:g}_{high:g}{noise}"


def judge_row(
    pipe: FlowPipeline, model: str, settings: SamplerSettings, judge, seed: int, per_class: int = 100
) -> dict[str, Any]:
    """Sample ``per_class`` images of each class, time, judge and draw one row."""
    labels = torch.arange(10).repeat_interleave(per_class)
    start = time.perf_counter()
    images, stats = pipe.generate(labels, seed=seed, settings=settings)
    seconds = time.perf_counter() - start
    name = row_name(model, settings) + (f"-seed{seed}" if seed else "")
    first_ten = torch.cat([images[per_class * c : per_class * c + 10] for c in range(10)])
    save_grid(first_ten, RESULTS / f"{name}.png", columns=10)
    return {
        "name": name,
        "model": model,
        "sampler": settings.to_values(),
        "nfe": stats.nfe,
        "network_passes": stats.network_passes,
        "ms_per_image": 1000 * seconds / len(labels),
        **judge(quantise(images), labels),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| model | sampler | NFE | guidance | FD | accuracy | ms / image |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        s = r["sampler"]
        interval = s["guidance_interval"] or [0.0, 1.0]
        guidance = "none" if s["cfg"] == 1 else f"{s['cfg']:g} for t in [{interval[0]:g}, {interval[1]:g}]"
        noise = f", H={s['noise']:g}" if s["solver"] == "sde" else ""
        lines.append(
            f"| {r['model']} | {s['solver']}{noise}, {s['schedule']} | {r['nfe']} | {guidance} | {r['fd']:.3f} | "
            f"{r['accuracy']:.1%} | {r['ms_per_image']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("fewstep", "sde"))
    parser.add_argument("--base", required=True, help="a run of configs/fashion_mnist.yaml")
    parser.add_argument("--tuned", nargs="*", default=[], metavar="NAME=RUN", help="runs of latentfm train-fewstep")
    parser.add_argument("--judge", default="runs/peer", help="directory of the judge (trained there when missing)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (sample i from (seed, i))")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class (default 100: 1,000 in all)")
    parser.add_argument("--nfe", type=int, nargs="*", help="only the rows of these NFE")
    parser.add_argument("--name", help="results file name (default: the table's)")
    parser.add_argument("--solvers", nargs="*", help="only the rows of these solvers")
    parser.add_argument("--cfg", type=float, help="guidance weight of every row instead of the row's")
    args = parser.parse_args()
    judge = prepare_judge(Path(args.judge))
    RESULTS.mkdir(parents=True, exist_ok=True)
    models = [("base", args.base, BASE_ROWS if args.table == "fewstep" else SDE_ROWS)]
    models += [(name, run, TUNED_ROWS) for name, _, run in (text.partition("=") for text in args.tuned)]
    rows = []
    for model, run, model_rows in models:
        pipe = FlowPipeline.from_checkpoint(run)
        for row in model_rows:
            if (args.nfe and row[1] not in args.nfe) or (args.solvers and row[0] not in args.solvers):
                continue
            settings = settings_of(row) if args.cfg is None else settings_of(row).with_(cfg=args.cfg)
            rows.append(judge_row(pipe, model, settings, judge, args.seed, args.per_class))
            print(json.dumps({k: rows[-1][k] for k in ("name", "nfe", "fd", "accuracy", "ms_per_image")}), flush=True)
    report = {"base": args.base, "tuned": args.tuned, "seed": args.seed, "samples": 10 * args.per_class, "rows": rows}
    name = args.name or args.table
    write_bytes_atomic(RESULTS / f"{name}.json", json.dumps(report, indent=1).encode())
    table = markdown(rows)
    write_bytes_atomic(RESULTS / f"{name}.md", (table + "\n").encode())
    print(table)


if __name__ == "__main__":
    main()
