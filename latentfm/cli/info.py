"""``latentfm info RUN``: what a run or checkpoint directory holds, without loading any weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfm import checkpoint as ckpt


def cmd_info(args: argparse.Namespace) -> None:
    """Print what a run or checkpoint directory holds: kind, step, task, data shapes and class names, the recipe's
    sampler, the autoencoder, every complete checkpoint and the files beside the newest."""
    print(run_summary(Path(args.path)))


def run_summary(path: Path) -> str:
    """The lines ``latentfm info`` prints for ``path`` (a run directory or one checkpoint directory)."""
    newest = ckpt.resolve_checkpoint(path)
    state = ckpt.read_state(newest)
    config = state.config
    task = (config.get("task") or {}).get("kind", "class")
    sample = {key: value for key, value in (config.get("sample") or {}).items() if value not in (None, {})}
    data = state.data
    names = ", ".join(data.class_names[:10]) + (", ..." if len(data.class_names) > 10 else "")
    lines = [
        f"{newest}: {state.kind} checkpoint at step {state.step} (latentfm {state.version or 'unknown'})",
        f"task: {task}; images {'x'.join(map(str, data.image_shape))}, latents {'x'.join(map(str, data.latent_shape))}",
        f"classes: {data.num_classes}" + (f" ({names})" if names else ""),
        f"model: {_model_text(config.get('model') or {})}",
        f"autoencoder: {(config.get('autoencoder') or {}).get('kind', 'identity')}",
        f"recipe sampler (sample section): {sample or 'library defaults'}",
    ]
    run_dir = newest.parent.parent
    steps = [p.name for p in ckpt.list_checkpoints(run_dir)] if newest.parent.name == "checkpoints" else []
    if steps:
        lines.append(f"checkpoints in {run_dir}: {', '.join(steps)}")
    lines.append("files: " + ", ".join(f"{name} ({size:,} bytes)" for name, size in sorted(state.files.items())))
    return "\n".join(lines)


def _model_text(model: dict) -> str:
    """A model section in a few words: its named size, else its architecture and widths."""
    if model.get("size"):
        return f"{model.get('arch', 'dit')} {model['size']}"
    if model.get("arch", "dit") == "dit":
        return f"dit hidden {model.get('hidden_size')}, depth {model.get('depth')}, patch {model.get('patch_size')}"
    return f"unet {model.get('model_channels')} channels, multipliers {model.get('channel_mult')}"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The parser of ``info``."""
    info = commands.add_parser("info", help="what a run or checkpoint directory holds", description=cmd_info.__doc__)
    info.add_argument("path", metavar="RUN", help="run directory (its newest checkpoint) or checkpoint directory")
    info.set_defaults(run=cmd_info)
