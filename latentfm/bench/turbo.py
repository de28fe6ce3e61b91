"""Sample quality against wall-clock per image for fixed-step solvers, searched schedules and FlowTurbo programs,
eager and compiled (``latentfm bench turbo``).

Every sampler draws the same ``n`` samples (sample ``i``: noise ``(seed, i)``, class ``i mod num_classes``) with
the checkpoint's guidance; the Fréchet distance and class accuracy come from the given features (the in-project
classifier) against reference statistics. Seconds are the whole generation of the ``n`` samples; a compiled
sampler first draws one batch to compile, timed apart (``compile_seconds``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from latentfm.atomic import write_bytes_atomic
from latentfm.errors import LatentFMError
from latentfm.evaluation import TrainingEvaluation
from latentfm.metrics.latency import synchronize
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings
from latentfm.sampling.program import load_schedule
from latentfm.sampling.schedules import named_grid
from latentfm.sampling.solvers import rules_refiner_calls

SAMPLERS = ("euler:8", "euler:16", "midpoint:8", "heun:8", "heun:16", "H1P4R3", "H1P5R2", "H2P3R3", "H1P3R4")


def named_sampler(text: str, recipe: SamplerSettings) -> SamplerSettings:
    """A sampler as the command line names it, with the recipe's guidance: ``SOLVER:NFE`` (``heun:16``), a
    turbo program (``H1P5R3``) or a ``search-schedule`` JSON file; the first two run on the uniform grid unless
    ``@SCHEDULE`` names another (``H1P6R0@shift:0.5``).

    Example:
        >>> recipe = SamplerSettings(cfg=2.0)
        >>> named_sampler("heun:16", recipe).nfe, named_sampler("H1P5R3", recipe).turbo
        (16, 'H1P5R3')
        >>> named_sampler("H1P5R3@edm:7", recipe).schedule
        'edm:7'
    """
    if text.endswith(".json"):
        return recipe.with_(schedule=load_schedule(text))
    text, _, schedule = text.partition("@")
    schedule = schedule or "uniform"
    named_grid(schedule, 1)  # an unknown schedule fails here, before any sampling
    if text.startswith("H"):
        return recipe.with_(turbo=text, schedule=schedule)
    solver, _, nfe = text.partition(":")
    if not nfe.isdigit():
        raise LatentFMError(
            f"sampler {text!r}: write SOLVER:NFE (heun:16), a turbo program (H1P5R3), either with @SCHEDULE, "
            "or a JSON file"
        )
    return recipe.with_(solver=solver, nfe=int(nfe), schedule=schedule)


def turbo_bench(
    pipe: FlowPipeline,
    evaluation: TrainingEvaluation,
    samplers: list[str],
    n: int = 1000,
    seed: int = 0,
    compile_modes: tuple[str | None, ...] = (None,),
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per sampler and compile mode: FD, accuracy, NFE, refiner calls, ms per image, compile seconds."""
    rows = []
    for text in samplers:
        for mode in compile_modes:
            settings = named_sampler(text, pipe.sampler).with_(compile=mode)
            compile_seconds = _warm_up(pipe, settings) if mode else 0.0
            result = evaluation(pipe, n, seed, settings)
            row = {
                "sampler": text,
                "compile": mode or "eager",
                "nfe": result["eval_nfe"],
                "refiner_calls": rules_refiner_calls(settings.rules) if settings.turbo else 0,
                "fd": result["eval_fd"],
                "accuracy": result["eval_accuracy"],
                "ms_per_image": 1000 * result["eval_seconds"] / n,
                "compile_seconds": round(compile_seconds, 1),
            }
            rows.append(row)
            if progress:
                print(json.dumps(row))
    return rows


def _warm_up(pipe: FlowPipeline, settings: SamplerSettings, batch: int = 256) -> float:
    """Seconds of one batch drawn with ``settings``: the compilation of its steps happens here."""
    labels = torch.arange(batch) % pipe.num_classes if pipe.num_classes else None
    synchronize(pipe.device)
    start = time.perf_counter()
    pipe.generate(labels, n=batch, settings=settings, batch_size=batch)
    synchronize(pipe.device)
    return time.perf_counter() - start


def markdown_turbo(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, fastest first."""
    lines = [
        "| sampler | compile | NFE | refiner calls | FD | accuracy | ms / image | compile s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: r["ms_per_image"]):
        accuracy = "" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        lines.append(
            f"| {r['sampler']} | {r['compile']} | {r['nfe']} | {r['refiner_calls']} | {r['fd']:.4f} | {accuracy} | "
            f"{r['ms_per_image']:.2f} | {r['compile_seconds']:g} |"
        )
    return "\n".join(lines)


def write_turbo_report(out: Path, report: dict[str, Any]) -> str:
    """OUT/turbo.json, OUT/turbo.md and OUT/turbo.png (FD against ms per image, one line per family and
    compile mode); returns the Markdown."""
    from latentfm.bench.plot import save_line_chart

    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "turbo.json", json.dumps(report, indent=1).encode())
    table = markdown_turbo(report["rows"])
    write_bytes_atomic(out / "turbo.md", (table + "\n").encode())
    series: dict[str, list[tuple[float, float]]] = {}
    for row in report["rows"]:
        family = "turbo" if row["sampler"].startswith("H") else row["sampler"].split(":")[0]
        series.setdefault(f"{family} ({row['compile']})", []).append((row["ms_per_image"], row["fd"]))
    series = {name: sorted(points) for name, points in series.items()}
    save_line_chart(series, out / "turbo.png", "quality against time per image", "ms per image", "FD")
    return table
