"""What every latentfm trainer shares: ranks and devices, stateless batches, the update and the step loop.

The run directory (its lock, leftovers of killed writes, resume, checkpoints, ``metrics.jsonl``) is a
``RunDirectory`` (``latentfm.training.run_dir``); ``TrainingLoop.run`` is the loop from the first step to the
last checkpoint, in one place.

Randomness is stateless: the batch indices and flips of step ``s`` are drawn for the whole global batch
from seed ``(seed, stream, s)`` and each rank takes its slice, and model-internal randomness uses the
global RNG reseeded with ``(seed, s, rank)``. An interrupted run resumed from a checkpoint therefore
replays exactly what an uninterrupted one does, and ``N`` ranks with batch ``B/N`` see the same samples
as one process with batch ``B``.
"""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from latentfm import __version__
from latentfm import checkpoint as ckpt
from latentfm.config import OptimConfig, config_to_dict
from latentfm.data import BatchRequest, ImageBatch, ImageDataset, load_data_config, read_batches
from latentfm.distributed import mean_across_ranks, setup_distributed
from latentfm.errors import LatentFMError, Terminated
from latentfm.progress import progress_bar
from latentfm.seeding import generator
from latentfm.training.run_dir import RunDirectory

# Independent random streams, each seeded from (train.seed, stream, ...).
ORDER, STEP, NOISE, MODEL, NORM, INIT, ENCODE, TASK, REFINE, FEWSTEP = range(10)


def learning_rate(optim: OptimConfig, total_steps: int, step: int) -> float:
    """Linear warm-up to ``optim.lr``, then constant or cosine decay to ``lr * min_lr_ratio``."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule != "cosine":
        raise LatentFMError(f"optim.schedule={optim.schedule!r} is unknown; use 'constant' or 'cosine'")
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
    floor = optim.lr * optim.min_lr_ratio
    return floor + 0.5 * (optim.lr - floor) * (1 + math.cos(math.pi * progress))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPUs that support it under ``auto``; None means float32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    raise LatentFMError(f"train.precision={precision!r} is unknown; use 'auto', 'fp32' or 'bf16'")


@contextmanager
def stop_at_step_boundaries() -> Iterator[Callable[[], None]]:
    """Within the block, SIGINT and SIGTERM are held until the loop calls the yielded check between two steps,
    which raises ``KeyboardInterrupt`` or ``Terminated``: a checkpoint then never mixes two steps. A second
    Ctrl-C stops at once. Outside the main thread signals keep their handlers."""
    received: list[int] = []

    def check() -> None:
        if received:
            raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt()

    if threading.current_thread() is not threading.main_thread():
        yield check
        return

    def hold(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt()
        received.append(signum)

    previous = {number: signal.signal(number, hold) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield check
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class TrainingLoop:
    """The shared machinery. A subclass builds its networks (resuming with ``run_dir.resume_point`` and
    ``load``) and says what a step does (``train_step``, which ends with ``optimise``), what a checkpoint holds
    (``checkpoint_modules``, ``checkpoint_optimizers``, ``checkpoint_state``) and what it shows
    (``save_samples``, and ``evaluate`` when ``eval_every`` is set); ``run`` does the rest.

    ``config`` is any run config with ``train`` and ``optim`` sections (see ``latentfm.config``).
    """

    def __init__(self, config: Any):
        self.config, train = config, config.train
        self.dist = setup_distributed(train.device)
        self.device = self.dist.device
        self.run_dir = RunDirectory(train.out_dir, is_main=self.dist.is_main)  # lock, checkpoints, metrics.jsonl
        if train.batch_size % self.dist.world_size:
            raise LatentFMError(f"train.batch_size={train.batch_size} must divide by the {self.dist.world_size} ranks")
        self.local_batch = train.batch_size // self.dist.world_size
        self.autocast_dtype = resolve_precision(train.precision, self.device)
        self.step = 0
        self.skipped_steps = 0  # steps whose update was skipped for a non-finite loss or gradient (all time)
        self.nonfinite_in_row = 0
        self.eval_every = 0  # steps between calls of ``evaluate`` (0: never)
        self._order: tuple[int, torch.Tensor] | None = None
        self._images: tuple[int, Iterator[ImageBatch]] | None = None  # the next step and the batches from it
        self.replaced_files = 0  # unreadable image files replaced by the next readable one (data.skip_corrupt)

    def autocast(self) -> torch.autocast:
        """bf16 autocast when the run's precision asks for it, else a disabled context."""
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=enabled)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` compiled (``train.compile``) and wrapped in DDP when there are several ranks."""
        if self.config.train.compile:
            model = torch.compile(model)
        if self.dist.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        return model

    def adamw(self, params: Any) -> torch.optim.AdamW:
        """AdamW over ``params`` with the run's ``optim`` settings (fused on CUDA)."""
        o = self.config.optim
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, fused=fused)

    def optimise(self, loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """One update of ``model``: this step's learning rate, backward, gradient clipping, step. A non-finite
        loss (on any rank) or gradient skips the update (weights and optimizer state untouched) and is counted
        in ``skipped_steps``; ``train.max_nonfinite_steps`` of them in a row stop the run with one line, the last
        checkpoint kept. Returns whether the weights were updated (the caller updates its EMA only then)."""
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(self.config.optim, self.config.train.steps, self.step)
        loss.backward()
        clip = self.config.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf)
        # One device sync per step: every rank's loss and the (all-reduced, so shared) gradient norm in one flag.
        finite = float(mean_across_ranks((torch.isfinite(loss.detach()) & torch.isfinite(norm)).float())) == 1
        if finite:
            optimizer.step()
            self.nonfinite_in_row = 0
        else:
            self.skipped_steps += 1
            self.nonfinite_in_row += 1
        optimizer.zero_grad(set_to_none=True)
        limit = self.config.train.max_nonfinite_steps
        if limit and self.nonfinite_in_row >= limit:
            kept = self.run_dir.checkpoints()
            raise LatentFMError(
                f"{self.nonfinite_in_row} training steps in a row had a non-finite loss or gradient (up to step "
                f"{self.step}); stopped, keeping {kept[-1] if kept else 'no checkpoint'}: lower optim.lr, set "
                "optim.grad_clip or check the data"
            )
        return finite

    # -- stateless batches ---------------------------------------------------------------------------

    def _epoch_order(self, size: int, epoch: int) -> torch.Tensor:
        """The shuffled order of ``size`` items in ``epoch``, drawn once per epoch from ``(seed, epoch)``."""
        if self._order is None or self._order[0] != epoch:
            order = torch.randperm(size, generator=generator("cpu", self.config.train.seed, ORDER, epoch))
            self._order = (epoch, order)
        return self._order[1]

    def rank_slice(self) -> slice:
        """This rank's part of a global batch."""
        return slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)

    def batch_indices(self, size: int, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's dataset indices for ``step`` and, with ``data.hflip``, which of them to flip."""
        batch, seed = self.config.train.batch_size, self.config.train.seed
        epoch, position = divmod(step, size // batch)
        indices = self._epoch_order(size, epoch)[position * batch : (position + 1) * batch]
        flips = None
        if self.config.data.hflip:
            flips = (torch.rand(batch, generator=generator("cpu", seed, STEP, step)) < 0.5)[self.rank_slice()]
        return indices[self.rank_slice()], flips

    def load_images(self) -> ImageDataset:
        """The run's ``data`` section as a dataset; a folder's index is kept in ``RUN/data_index.npz`` (the other
        ranks read it), and a resumed run refuses a folder that changed since."""
        data = self.config.data
        index_file = self.run_dir.path / "data_index.npz" if data.dataset == "folder" else None
        resuming = bool(self.run_dir.checkpoints())
        dataset = load_data_config(data, index_file=index_file, refuse_change=resuming)
        if self.dist.is_main:
            for note in dataset.notes:
                print(note)
        return dataset

    def step_images(self, data: ImageDataset, step: int) -> ImageBatch:
        """This rank's images of ``step`` on the device, read ahead by ``data.workers`` processes (a stream of
        steps from ``step`` on; asking for another step than the next one starts a new stream)."""
        if self._images is None or self._images[0] != step:
            self.close_images()
            requests = (BatchRequest(*self.batch_indices(len(data), s)) for s in itertools.count(step))
            self._images = (step, read_batches(data, requests, self.config.data.workers, self.device))
        batch = next(self._images[1])
        self._images = (step + 1, self._images[1])
        self.replaced_files += batch.skipped
        return batch

    def close_images(self) -> None:
        """Stop the worker processes of the image stream, if one runs."""
        if self._images is not None:
            self._images[1].close()
            self._images = None

    # -- checkpoints: subclasses say what they hold --------------------------------------------------

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        """The modules a checkpoint stores, by file name (e.g. ``model``, ``ema``)."""
        raise NotImplementedError

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers a checkpoint stores, by file name."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        """The fields of ``CheckpointState`` besides ``step``, ``config`` and the bookkeeping: ``kind``,
        ``data`` and what the kind needs."""
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        """Restore every module, optimizer and the step from a checkpoint directory."""
        state = self.run_dir.load(directory, self.checkpoint_modules(), self.checkpoint_optimizers())
        self.step, self.skipped_steps = state.step, state.skipped_steps

    def save(self) -> Path:
        """Write a checkpoint of the current step (main rank), prune old ones, return its directory (see
        ``RunDirectory.save``)."""
        modules, optimizers = self.checkpoint_modules(), self.checkpoint_optimizers()
        return self.run_dir.save(self.step, modules, optimizers, self._state, self.config.train.keep_checkpoints)

    def _state(self) -> ckpt.CheckpointState:
        """The ``CheckpointState`` of the current step."""
        return ckpt.CheckpointState(
            step=self.step,
            config=config_to_dict(self.config),
            version=__version__,
            rng={"scheme": "stateless: step s draws from (seed, stream, s[, rank])", "seed": self.config.train.seed},
            skipped_steps=self.skipped_steps,
            **self.checkpoint_state(),
        )

    # -- what a subclass trains and shows ------------------------------------------------------------

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step (``self.step`` then counts it); returns detached scalar losses by name
        (``loss`` first)."""
        raise NotImplementedError

    def save_samples(self) -> Path:
        """Write a picture of the current model and return its path."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the current model by name (called on the main rank every ``eval_every`` steps)."""
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------------

    def run(self, until_step: int | None = None) -> Path:
        """Train to ``train.steps`` (or stop early at ``until_step``); returns the last checkpoint.

        An interrupted single-process run (SIGINT, or SIGTERM as ``Terminated``; both take effect between two
        steps) saves a checkpoint of the step it reached first. A run whose checkpoint of the last step exists
        already is left alone (its files untouched).
        """
        train = self.config.train
        first, last = self.step, min(train.steps, until_step or train.steps)
        if self.step >= last and self.run_dir.is_finished(self.step):
            return self.run_dir.checkpoint_dir(self.step)
        with self.run_dir.exclusive(start_step=self.step):
            bar = progress_bar(total=last, initial=self.step, desc="training", show=self.dist.is_main)
            try:
                with stop_at_step_boundaries() as check:
                    self._train_until(last, bar, check)
            except KeyboardInterrupt:
                if self.dist.world_size == 1 and self.step > first:
                    print(f"\ninterrupted: saved {self.save()}")
                raise
            finally:
                bar.close()
                self.close_images()
            return self.save()

    def _train_until(self, last: int, bar: tqdm, check: Callable[[], None]) -> None:
        """The steps up to ``last`` with their logs, grids, evaluations and periodic checkpoints; ``check``
        raises between two steps when a stop signal came."""
        train, main = self.config.train, self.dist.is_main
        sums: dict[str, torch.Tensor] = {}
        window, clock = 0, time.perf_counter()
        while self.step < last:
            for name, value in self.train_step().items():
                sums[name] = sums.get(name, 0.0) + value
            window += 1
            bar.update(1)
            if self.step % train.log_every == 0 or self.step == last:
                record = self._log_record(sums, window, time.perf_counter() - clock)
                if main:
                    self.run_dir.append_metrics(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                sums, window, clock = {}, 0, time.perf_counter()
            if train.sample_every and self.step % train.sample_every == 0 and main:
                self.save_samples()
            if self.eval_every and self.step % self.eval_every == 0 and main:
                start = time.perf_counter()
                self.run_dir.append_metrics({"step": self.step, **self.evaluate()})
                clock += time.perf_counter() - start  # keep evaluation out of images_per_s
            if train.checkpoint_every and self.step % train.checkpoint_every == 0 and self.step != last:
                self.save()
            check()

    def _log_record(self, sums: dict[str, torch.Tensor], window: int, seconds: float) -> dict[str, Any]:
        """The ``metrics.jsonl`` record of the last ``window`` steps: mean losses over all ranks, learning rate,
        skipped steps, speed and replaced files (every rank takes part)."""
        record: dict[str, Any] = {"step": self.step}
        for name, total in sums.items():
            record[name] = float(mean_across_ranks(total / window))
        record["lr"] = learning_rate(self.config.optim, self.config.train.steps, self.step - 1)
        record["skipped_steps"] = self.skipped_steps
        record["images_per_s"] = window * self.config.train.batch_size / seconds
        replaced = mean_across_ranks(torch.tensor(float(self.replaced_files), device=self.device))
        if replaced > 0:  # every rank's count (mean times ranks), for data.skip_corrupt
            record["replaced_unreadable_files"] = round(float(replaced) * self.dist.world_size)
        return record
