"""Checkpoints: safetensors weights (model, EMA, optimizer separately) plus a typed JSON state, written
atomically. This module alone writes and reads ``state.json``; no pickle ever runs.

Layout: ``RUN/checkpoints/step_00001000/{model,ema,optimizer}.safetensors`` and ``state.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from latentfm.atomic import atomic_directory, remove_directory
from latentfm.errors import LatentFMError

_STEP_DIR = re.compile(r"^step_(\d+)$")
MADE_BY = {"flow": "train", "autoencoder": "train-autoencoder", "refiner": "train-refiner", "fewstep": "train-fewstep"}
GENERATORS = ("flow", "fewstep")  # the kinds a FlowPipeline loads: a flow model, and one tuned for few steps
KINDS = tuple(MADE_BY)
_KIND_OF_0_1 = {None: "flow", "kl_autoencoder": "autoencoder"}  # 0.1 wrote no kind for flow runs


@dataclass
class DataShapes:
    """The shapes a checkpoint's model was trained on."""

    image_shape: list[int]
    latent_shape: list[int]
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)


@dataclass
class CheckpointState:
    """The JSON part of a checkpoint: plain numbers, strings and lists only.

    ``latent_norm`` (``shift``, ``scale``) and ``autoencoder`` (the weights identity the latents were made with)
    belong to flow, few-step and refiner checkpoints; their owners build themselves from these values. A refiner
    or few-step checkpoint names its ``teacher`` (the hash of the EMA weights it was trained against, or tuned
    from).
    """

    kind: str
    step: int
    config: dict[str, Any]
    data: DataShapes
    version: str = ""
    latent_norm: dict[str, list[float]] | None = None
    autoencoder: dict[str, Any] | None = None
    teacher: dict[str, Any] | None = None  # refiner and few-step checkpoints: the teacher's weights hash and checkpoint
    param_groups: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient, up to this step
    files: dict[str, int] = field(default_factory=dict)  # byte size of each file beside state.json

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LatentFMError(f"checkpoint kind {self.kind!r} is unknown; this latentfm reads {', '.join(KINDS)}")
        if isinstance(self.data, dict):
            self.data = DataShapes(**self.data)


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
    state: CheckpointState,
) -> None:
    """Write one checkpoint directory atomically (it appears complete or not at all).

    Each entry of ``weights`` (e.g. ``model``, ``ema``) and ``optimizers`` (e.g. ``optimizer``) becomes
    ``NAME.safetensors``; optimizer param groups go to ``state.param_groups[NAME]``, and the size of every
    file to ``state.files``, which ``is_complete`` checks on load.
    """
    values = asdict(state)
    values["param_groups"] = {}
    try:
        with atomic_directory(directory) as tmp:
            for name, tensors in weights.items():
                save_file(_cpu_tensors(tensors), tmp / f"{name}.safetensors")
            for name, optimizer_state in optimizers.items():
                tensors, groups = optimizer_to_tensors(optimizer_state)
                save_file(_cpu_tensors(tensors), tmp / f"{name}.safetensors")
                values["param_groups"][name] = groups
            values["files"] = {file.name: file.stat().st_size for file in sorted(tmp.iterdir())}
            (tmp / "state.json").write_text(json.dumps(values, indent=1))
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as a SafetensorError
        raise LatentFMError(
            f"cannot write checkpoint {directory} ({error}): nothing of it was kept and earlier checkpoints are "
            "intact; free space (or choose a writable train.out_dir) and rerun the same command to resume"
        ) from None


def read_optimizer(directory: Path, name: str = "optimizer") -> dict[str, Any]:
    """An optimizer state dict saved by ``save_checkpoint`` under ``name``."""
    return optimizer_from_tensors(read_tensors(directory, name), read_state(directory).param_groups[name])


def incompleteness(directory: Path) -> str | None:
    """Why a checkpoint directory is incomplete, or None when it holds its ``state.json`` and every file that
    lists, at its recorded size (checkpoints written before sizes were recorded: the ``.safetensors`` file of
    each param group)."""
    directory = Path(directory)
    try:
        values = json.loads((directory / "state.json").read_text())
        sizes = values.get("files") or {f"{name}.safetensors": None for name in values.get("param_groups", {})}
        for name, size in sizes.items():
            if not (directory / name).is_file():
                return f"{directory / name} is missing"
            if size not in (None, (directory / name).stat().st_size):
                return f"{directory / name} is not the {size} bytes its state.json records"
    except (OSError, ValueError, AttributeError) as error:
        return f"{directory / 'state.json'} is unreadable ({error})"
    return None


def is_complete(directory: Path) -> bool:
    """Whether a checkpoint directory is complete (see ``incompleteness``)."""
    return incompleteness(directory) is None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first (see ``is_complete``)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and is_complete(p)]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself or from a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        steps = sorted((path / "checkpoints").glob("step_*")) if path.is_dir() else []
        reason = f": {incompleteness(steps[-1])}" if steps else ""
        raise LatentFMError(
            f"{path} is neither a checkpoint directory nor a run directory with complete checkpoints{reason}"
        )
    return found[-1]


def read_state(directory: Path, kind: str | tuple[str, ...] | None = None) -> CheckpointState:
    """The typed state of a checkpoint (0.1 checkpoints included), refused when it is not of ``kind`` (or of one
    of several kinds)."""
    path = Path(directory) / "state.json"
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LatentFMError(f"cannot read checkpoint state {path}: {error}") from None
    if not isinstance(values, dict):
        raise LatentFMError(f"{path} is not a latentfm checkpoint state")
    values["kind"] = _KIND_OF_0_1.get(values.get("kind"), values.get("kind"))
    if "optimizer_param_groups" in values:  # before 0.1's latent-space work: one optimizer
        values["param_groups"] = {"optimizer": values.pop("optimizer_param_groups")}
    known = {f.name for f in fields(CheckpointState)}
    try:
        state = CheckpointState(**{key: value for key, value in values.items() if key in known})
    except TypeError as error:
        raise LatentFMError(f"{path} is not a latentfm checkpoint state: {error}") from None
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and state.kind not in kinds:
        expected = " or ".join(repr(name) for name in kinds)
        made_by = " or ".join(f"`latentfm {MADE_BY[name]}`" for name in kinds)
        raise LatentFMError(
            f"{Path(directory)} is a checkpoint of kind {state.kind!r}, expected {expected}: "
            f"give one that {made_by} wrote"
        )
    return state


def read_tensors(directory: Path, name: str) -> dict[str, torch.Tensor]:
    """One safetensors file of a checkpoint (``model``, ``ema`` or ``optimizer``)."""
    path = Path(directory) / f"{name}.safetensors"
    try:
        return load_file(path)
    except (OSError, SafetensorError) as error:
        raise LatentFMError(f"cannot read checkpoint weights {path}: {error}") from None


def load_weights(module: torch.nn.Module, directory: Path, name: str) -> None:
    """Load ``NAME.safetensors`` of a checkpoint into ``module``; refused in one line when its names, shapes or
    dtypes are not the module's (a checkpoint of another model size, or an altered file)."""
    tensors, path = read_tensors(directory, name), Path(directory) / f"{name}.safetensors"
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise LatentFMError(
            f"{path} does not fit this model ({len(missing)} tensors missing, e.g. {missing[:1]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:1]}): it belongs to another model or config"
        )
    for key, tensor in tensors.items():
        want = expected[key]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise LatentFMError(
                f"{path}: {key} is {tensor.dtype} {tuple(tensor.shape)}, this model's is {want.dtype} "
                f"{tuple(want.shape)}: the checkpoint belongs to another model size or was altered"
            )
    module.load_state_dict(tensors)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of a run (see ``remove_directory``)."""
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        remove_directory(old)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(module: object) -> str:
    """A hash of a module's tensors (names, dtypes, shapes, values); the same weights give the same hash."""
    digest = hashlib.sha256()
    state = module.state_dict() if isinstance(module, torch.nn.Module) else {}
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
