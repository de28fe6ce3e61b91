"""A training run's directory as one object: its lock, its checkpoints and its ``metrics.jsonl``.

``RUN/.latentfm.lock`` is held while a run trains (a second writer is refused in one line); what killed writes
left behind (``RUN/checkpoints/.NAME.*.tmp``) is deleted when the lock is taken, and ``metrics.jsonl`` is cut
back to the step the run starts from. Checkpoints are ``RUN/checkpoints/step_%08d`` (``latentfm.checkpoint``);
the main rank writes them, every rank reads them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from latentfm import checkpoint as ckpt
from latentfm.atomic import exclusive_directory, remove_leftovers, write_bytes_atomic
from latentfm.config import config_from_dict, config_to_dict
from latentfm.distributed import barrier
from latentfm.errors import LatentFMError, first_difference

# Keys that may change when a run is resumed; any other difference is refused.
RESUMABLE_KEYS = {
    "train.steps",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.out_dir",
    "train.device",
    "train.compile",
    "train.max_nonfinite_steps",
    "refiner.teacher",  # a moved teacher is the same teacher: refiner checkpoints check its weights hash
    "sample",
    "eval",
}


def config_difference(saved: Any, current: Any) -> str | None:
    """The first key whose change would break an exact resume, or None."""
    difference = first_difference(config_to_dict(saved), config_to_dict(current), ignore=RESUMABLE_KEYS)
    if difference is None:
        return None
    return f"{difference.key}: {difference.old!r} in the checkpoint, {difference.new!r} now"


def trim_metrics(path: Path, step: int) -> None:
    """Keep the lines of a ``metrics.jsonl`` up to ``step``: the steps after it run again (a run killed before
    its first checkpoint starts from nothing), and a line torn by a kill is dropped. The file is rewritten
    (atomically) only when a line goes."""
    if not path.is_file():
        return
    lines, kept = path.read_text().splitlines(keepends=True), []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    if kept != lines:
        write_bytes_atomic(path, "".join(kept).encode())


class RunDirectory:
    """The directory ``path`` of a training run, seen from one rank (``is_main``: the rank that writes).

    >>> run = RunDirectory("no/such/run")
    >>> run.checkpoint_dir(12).name, run.checkpoints(), run.resume_point(None)
    ('step_00000012', [], None)
    """

    def __init__(self, path: str | Path, is_main: bool = True):
        self.path, self.is_main = Path(path), is_main
        self.metrics_file = self.path / "metrics.jsonl"

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # -- holding it ----------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self, start_step: int) -> Iterator[None]:
        """Within the block the main rank holds the lock (a second process training here is refused in one
        line); on entry it deletes what killed checkpoint writes left and cuts ``metrics.jsonl`` back to
        ``start_step``. Other ranks only wait in the block."""
        if not self.is_main:
            yield
            return
        with exclusive_directory(self.path):
            remove_leftovers(self.path / "checkpoints")
            trim_metrics(self.metrics_file, start_step)
            yield

    # -- checkpoints ---------------------------------------------------------------------------------

    def checkpoint_dir(self, step: int) -> Path:
        """Where the checkpoint of ``step`` is (or will be) written."""
        return self.path / "checkpoints" / f"step_{step:08d}"

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first."""
        return ckpt.list_checkpoints(self.path)

    def is_finished(self, step: int) -> bool:
        """Whether a complete checkpoint of ``step`` exists."""
        return ckpt.is_complete(self.checkpoint_dir(step))

    def resume_point(self, config: Any) -> Path | None:
        """The latest complete checkpoint, refused when it was made under another ``config`` (of any key but
        ``RESUMABLE_KEYS``); None when there is none."""
        found = self.checkpoints()
        if not found:
            return None
        saved = config_from_dict(ckpt.read_state(found[-1]).config, cls=type(config))
        difference = config_difference(saved, config)
        if difference:
            raise LatentFMError(
                f"{self.path} holds a run with another config ({difference}); "
                "choose a new train.out_dir or restore the old value"
            )
        return found[-1]

    def save(
        self,
        step: int,
        modules: dict[str, torch.nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        state: Callable[[], ckpt.CheckpointState],
        keep: int,
    ) -> Path:
        """Write the checkpoint of ``step`` (main rank: ``modules`` and ``optimizers`` by file name, ``state()``
        called only then), keep the newest ``keep`` (0: all), wait for every rank; returns its directory. A
        complete checkpoint of this step is kept as it is (training is exact, so it holds the same values)."""
        directory = self.checkpoint_dir(step)
        if self.is_main and not ckpt.is_complete(directory):
            weights = {name: module.state_dict() for name, module in modules.items()}
            optimizer_states = {name: optimizer.state_dict() for name, optimizer in optimizers.items()}
            ckpt.save_checkpoint(directory, weights, optimizer_states, state())
            ckpt.prune_checkpoints(self.path, keep)
        barrier()
        return directory

    def load(
        self,
        directory: Path,
        modules: dict[str, torch.nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
    ) -> ckpt.CheckpointState:
        """Restore ``modules`` and ``optimizers`` (by file name) from the checkpoint ``directory``; its state."""
        for name, module in modules.items():
            ckpt.load_weights(module, directory, name)
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(ckpt.read_optimizer(directory, name))
        state = ckpt.read_state(directory)
        if self.is_main:
            print(f"resumed from {directory} at step {state.step}")
        return state

    # -- metrics -------------------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line in ``metrics.jsonl`` (the caller is the main rank)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_file, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def samples_file(self, step: int) -> Path:
        """Where the picture of ``step`` goes: ``samples/step_%08d.png``."""
        return self.path / "samples" / f"step_{step:08d}.png"
