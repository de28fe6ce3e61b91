"""``latentfm export``: a trained flow run as a self-contained model directory with a model card.

The directory is a checkpoint directory holding only what generating needs: ``state.json`` (the config, the
data shapes and class names, the latent normalisation, the autoencoder's identity and the recipe's sampler),
``ema.safetensors``, the autoencoder's weight files under ``autoencoder/`` (none for pixel models), a sample grid
``samples.png`` and ``README.md``, the model card, whose YAML front matter records the SHA-256 of the weights.
``FlowPipeline.from_pretrained(DIR)`` loads it and generates exactly what ``from_checkpoint(RUN)`` does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from latentfm.atomic import atomic_directory
from latentfm.checkpoint import GENERATORS, file_sha256, read_state, resolve_checkpoint
from latentfm.errors import LatentFMError
from latentfm.image_io import save_grid
from latentfm.pipeline import FlowPipeline
from latentfm.pretrained import CARD, WEIGHTS

AUTOENCODER_FILES = ("encoder", "decoder", "checkpoint", "path")  # config keys that name weights on disk
GRID_PER_CLASS = 8


def export_model(
    run: str | Path,
    out: str | Path,
    name: str | None = None,
    license: str = "other",
    data_license: str = "unknown",
    notes: str = "",
    report: dict[str, Any] | None = None,
) -> Path:
    """Write the model directory of ``run``'s newest checkpoint (or of a checkpoint directory) to ``out``,
    atomically; ``notes`` (Markdown) and an evaluation ``report`` (``latentfm eval``'s report.json) go into the
    card. Returns ``out``."""
    source = resolve_checkpoint(run)
    state = read_state(source, GENERATORS)
    out = Path(out)
    name = name or out.name
    with atomic_directory(out) as tmp:
        shutil.copyfile(source / WEIGHTS, tmp / WEIGHTS)
        config = _copy_autoencoder_files(state.config, tmp)
        files = {WEIGHTS: (tmp / WEIGHTS).stat().st_size}
        exported = replace(state, config=config, param_groups={}, rng={}, files=files)
        (tmp / "state.json").write_text(json.dumps(asdict(exported), indent=1))
        pipe = FlowPipeline.from_checkpoint(tmp)
        if pipe.task.kind == "class":  # the other tasks need the user's inputs (images, masks, maps)
            save_grid(_sample_grid(pipe), tmp / "samples.png", columns=GRID_PER_CLASS)
        metadata = {
            "library_name": "latentfm",
            "license": license,
            "pipeline_tag": "unconditional-image-generation",
            "tags": ["flow-matching", "latentfm", pipe.task.kind],
            "latentfm": {
                "weights_sha256": file_sha256(tmp / WEIGHTS),
                "summary": summary(pipe),
                "step": state.step,
                "source": str(Path(*source.parts[-3:])),  # RUN/checkpoints/step_N, without this machine's path
                "data_license": data_license,
            },
        }
        grid = (tmp / "samples.png").is_file()
        card = model_card(name, pipe, state.step, config, metadata, notes, report, grid)
        (tmp / CARD).write_text(card)
    return out


def summary(pipe: FlowPipeline) -> str:
    """The model in one line: task, backbone, image size, latent space and classes."""
    channels, height, width = pipe.image_shape
    classes = f"{pipe.num_classes} classes" if pipe.num_classes else "unconditional"
    kind = (pipe.autoencoder_identity or {}).get("kind", "identity")
    space = "pixel space" if kind == "identity" else f"{kind} latents {'x'.join(map(str, pipe.latent_shape))}"
    backbone = type(pipe.model).__name__
    return f"{pipe.task.kind} flow model, {backbone}, {height}x{width}x{channels} images, {space}, {classes}"


def model_card(
    name: str,
    pipe: FlowPipeline,
    step: int,
    config: dict[str, Any],
    metadata: dict[str, Any],
    notes: str,
    report: dict[str, Any] | None,
    grid: bool = True,
) -> str:
    """The ``README.md`` of an exported model: front matter, what it is, how to use it, its recipe, figures."""
    parameters = sum(p.numel() for p in pipe.model.parameters())
    data_license = metadata["latentfm"]["data_license"]
    classes = ", ".join(pipe.class_names) if pipe.class_names else f"{pipe.num_classes} (no names recorded)"
    sampler = {k: v for k, v in pipe.sampler.to_values().items() if v not in (None, {})}
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"{summary(pipe)}; {parameters / 1e6:.2f}M parameters. Made with latentfm.",
        "",
        *(
            ["![samples](samples.png)", "", "Samples of the recipe's sampler, seed 0, one row per class.", ""]
            if grid
            else []
        ),
        "## Use",
        "",
        "```",
        f"latentfm sample --model {name} --labels all --n 8 --out out/{name}",
        "```",
        "",
        "```python",
        "from latentfm.pipeline import FlowPipeline",
        "",
        f'pipe = FlowPipeline.from_pretrained("{name}")  # or this directory',
        "images, stats = pipe.generate(pipe.cycled_labels(10), seed=0)",
        "```",
        "",
        f"Classes: {classes}.",
        "",
        f"Recipe sampler (the default of every command): `{json.dumps(sampler)}`.",
        "",
        "## Training",
        "",
        f"Trained {step} steps; the EMA weights are exported. Training data licence: {data_license}.",
        "The whole config:",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).strip(),
        "```",
    ]
    if report is not None:
        lines += ["", "## Measured", "", *_report_lines(report)]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def _report_lines(report: dict[str, Any]) -> list[str]:
    """An evaluation report's figures and how to rerun them."""
    metrics, settings = report["metrics"], report["settings"]
    accuracy = "n/a" if metrics.get("accuracy") is None else f"{100 * metrics['accuracy']:.1f}%"
    return [
        f"`latentfm eval` with {settings['n']} samples, {report['nfe']} NFE: Fréchet distance {metrics['fd']:.4g} "
        f"({settings['features']} features), class accuracy {accuracy}, precision {metrics['precision']:.3f}, "
        f"recall {metrics['recall']:.3f}, {report['latency']['sampling_only']['ms_per_sample']:.2f} ms per sample "
        f"on {report['machine']}.",
        "",
        f"Rerun: `latentfm eval --model DIR --reference {settings['reference']} --features {settings['features']} "
        f"--n {settings['n']} --seed {settings['seed']} --out OUT`.",
    ]


def _copy_autoencoder_files(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """``config`` with the autoencoder's weight files copied to ``out/autoencoder/`` and named relative to it."""
    autoencoder = dict(config.get("autoencoder") or {})
    for key in AUTOENCODER_FILES:
        value = autoencoder.get(key)
        if not value:
            continue
        source = resolve_checkpoint(value) if key == "checkpoint" else Path(value)
        if not source.exists():
            raise LatentFMError(f"autoencoder.{key} {value} is not on this machine: export where the model was trained")
        target = out / "autoencoder" / f"{key}_{source.name}"
        target.parent.mkdir(exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
        autoencoder[key] = str(target.relative_to(out))
    return {**config, "autoencoder": autoencoder}


def _sample_grid(pipe: FlowPipeline) -> torch.Tensor:
    """``GRID_PER_CLASS`` samples per class (a square of unconditional samples), seed 0, the recipe's sampler."""
    classes = max(pipe.num_classes, 1)
    labels = torch.arange(classes).repeat_interleave(GRID_PER_CLASS) if pipe.num_classes else None
    images, _ = pipe.generate(labels, n=classes * GRID_PER_CLASS, seed=0)
    return images
