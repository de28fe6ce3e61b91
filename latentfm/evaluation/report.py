"""The evaluation report: JSON for machines, one Markdown page for people, and the machine it ran on."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from latentfm.atomic import write_bytes_atomic
from latentfm.evaluation.settings import report_sampler
from latentfm.sampling import interval_text


def _cpu_name() -> str:
    """The CPU model as Linux names it, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def machine_description(device: torch.device) -> str:
    """The device, CPU threads and torch version, as the report states them."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return f"{name} ({device.type}, {torch.get_num_threads()} CPU threads), torch {torch.__version__}"


def markdown_report(report: dict[str, Any]) -> str:
    """A one-page Markdown summary of an evaluation report."""
    s, m = report["settings"], report["metrics"]
    sampler = report_sampler(s)
    accuracy = "n/a" if m["accuracy"] is None else f"{100 * m['accuracy']:.2f}%"
    interval = sampler.get("guidance_interval") or "all"
    interval = interval if isinstance(interval, str) else interval_text(tuple(interval))
    guidance = f"guidance {sampler['cfg']}" + ("" if interval == "all" else f" for t in [{interval}]")
    method = f"turbo {sampler['turbo']}" if sampler.get("turbo") else f"solver {sampler['solver']}"
    lines = [
        f"# Evaluation of {s['checkpoint']}",
        "",
        f"{s['n']} samples, {method}, schedule {_schedule_words(sampler['schedule'])}, {report['nfe']} NFE, "
        f"{guidance}, seed {s['seed']}; reference {s['reference']} ({report['protocol']['reference_count']} images).",
        "",
        "| FD | KID (×10³) | precision | recall | class accuracy | NFE | s / 1000 samples |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {m['fd']:.4g} | {1000 * m['kid']:.3g} ± {1000 * m['kid_std']:.2g} | {m['precision']:.3f} | "
        f"{m['recall']:.3f} | {accuracy} | {report['nfe']} | {report['generation_s_per_1000']:.2f} |",
        "",
        "Latency (median of repeats after warm-up, device synchronised):",
        "",
    ]
    for name, latency in report["latency"].items():
        lines.append(
            f"- {name.replace('_', ' ')}: {1000 * latency['median_s']:.1f} ms per batch of {latency['batch_size']} "
            f"({latency['ms_per_sample']:.2f} ms per sample, {latency['repeats']} repeats)"
        )
    lines += ["", "Protocol:", ""] + [f"- {key}: {value}" for key, value in report["protocol"].items()]
    lines += ["", f"Machine: {report['machine']}; {report['world_size']} rank(s).", ""]
    return "\n".join(lines)


def _schedule_words(schedule: str | list[float] | dict[str, Any]) -> str:
    """A schedule as the report's summary line names it: a name, a list of times, or a searched program."""
    if isinstance(schedule, dict):
        return f"searched ({len(schedule['rules'])} steps: {', '.join(schedule['rules'])})"
    return schedule if isinstance(schedule, str) else ",".join(f"{t:g}" for t in schedule)


def write_report(out: Path, report: dict[str, Any]) -> None:
    """``out/report.json`` and ``out/report.md``, each written atomically."""
    write_bytes_atomic(out / "report.json", json.dumps(report, indent=1).encode())
    write_bytes_atomic(out / "report.md", markdown_report(report).encode())
