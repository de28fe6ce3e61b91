"""Checkpoints: safetensors weights (model, EMA, optimizer separately) plus a JSON state, written atomically.

Layout: ``RUN/checkpoints/step_00001000/{model,ema,optimizer}.safetensors`` and ``state.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from latentfm.atomic import atomic_directory
from latentfm.errors import LatentFMError

_STEP_DIR = re.compile(r"^step_(\d+)$")


def _cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().contiguous().cpu() for key, value in state.items()}


def optimizer_to_tensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Split an optimizer state dict into flat tensors (``"<param>.<name>"``) and JSON-able param groups."""
    tensors = {
        f"{index}.{name}": torch.as_tensor(value)
        for index, per_param in state_dict["state"].items()
        for name, value in per_param.items()
    }
    return tensors, state_dict["param_groups"]


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of ``optimizer_to_tensors``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": param_groups}


def save_checkpoint(
    directory: Path,
    weights: dict[str, dict[str, torch.Tensor]],
    optimizers: dict[str, dict[str, Any]],
    state: dict[str, Any],
) -> None:
    """Write one checkpoint directory atomically (it appears complete or not at all).

    Each entry of ``weights`` (e.g. ``model``, ``ema``) and ``optimizers`` (e.g. ``optimizer``) becomes
    ``NAME.safetensors``; optimizer param groups go to ``state["param_groups"][NAME]``.
    """
    state = dict(state, param_groups={})
    with atomic_directory(directory) as tmp:
        for name, tensors in weights.items():
            save_file(_cpu_tensors(tensors), tmp / f"{name}.safetensors")
        for name, optimizer_state in optimizers.items():
            tensors, groups = optimizer_to_tensors(optimizer_state)
            save_file(_cpu_tensors(tensors), tmp / f"{name}.safetensors")
            state["param_groups"][name] = groups
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def read_optimizer(directory: Path, name: str = "optimizer") -> dict[str, Any]:
    """An optimizer state dict saved by ``save_checkpoint`` under ``name``."""
    state = read_state(directory)
    if "param_groups" not in state:  # checkpoints of latentfm before 0.1's latent-space work
        return optimizer_from_tensors(read_tensors(directory, name), state["optimizer_param_groups"])
    groups = state["param_groups"][name]
    return optimizer_from_tensors(read_tensors(directory, name), groups)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself or from a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise LatentFMError(f"{path} is neither a checkpoint directory nor a run directory with checkpoints")
    return found[-1]


def read_state(directory: Path) -> dict[str, Any]:
    """The JSON state of a checkpoint."""
    path = Path(directory) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LatentFMError(f"cannot read checkpoint state {path}: {error}") from None


def read_tensors(directory: Path, name: str) -> dict[str, torch.Tensor]:
    """One safetensors file of a checkpoint (``model``, ``ema`` or ``optimizer``)."""
    path = Path(directory) / f"{name}.safetensors"
    try:
        return load_file(path)
    except (OSError, SafetensorError) as error:
        raise LatentFMError(f"cannot read checkpoint weights {path}: {error}") from None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of a run."""
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def weights_sha256(module: object) -> str:
    """A hash of a module's tensors (names, dtypes, shapes, values); the same weights give the same hash."""
    digest = hashlib.sha256()
    state = module.state_dict() if isinstance(module, torch.nn.Module) else {}
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
