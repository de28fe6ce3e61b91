"""Fault injection: SIGKILL latentfm's long commands at random moments, rerun the same command, and compare the end
with an uninterrupted run (issue 15; RELIABILITY.md has the figures).

Scenarios, each on the built-in digits (CPU, one thread per process, so that runs compare bit for bit):

- ``train``: ``latentfm train`` of a small DiT, checkpoint every 2 steps; ``--kills`` SIGKILLs (default 20).
  Most kills come a random 1-6 logged steps plus a random fraction of a step after the last one; every fourth
  waits for a checkpoint write to begin (its temporary directory appears) and kills it then.
- ``torchrun``: the same under ``torchrun`` with 2 processes; the whole process group is killed.
- ``train-refiner``, ``encode``, ``eval``: the other resumable commands, killed the same way.

After each kill the script records where it landed (inside an atomic write: a temporary file or directory was
left; inside a log write: ``metrics.jsonl`` ends in a torn line; else between writes) and checks that every
``step_*`` checkpoint is complete. After the last kill it reruns the command to its end and compares: final
``model``/``ema`` bit for bit and the logged losses (training), every cache file byte for byte (encode), the
report's metrics (eval).

    python benchmarks/faults.py --out benchmarks/results/faults            # all scenarios, ~15 min on 2 cores
    python benchmarks/faults.py --scenarios train --kills 5 --out /tmp/f  # a quick look

Writes OUT/faults.json (every kill) and OUT/faults.md (one row per scenario).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latentfm import checkpoint as ckpt
from latentfm.atomic import write_bytes_atomic
from latentfm.evaluation.report import machine_description

ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")
TINY = [
    "data.dataset=digits",
    "train.device=cpu",
    "model.patch_size=2",
    "model.hidden_size=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.class_dropout=0.1",
    "train.batch_size=32",
    "train.log_every=1",
    "train.ema_decay=0.9",
    "optim.lr=1e-3",
]
LATENTFM = [sys.executable, "-m", "latentfm.cli"]


@dataclass
class Scenario:
    """A command to kill and rerun: ``progress`` counts its finished units (logged steps, written shards),
    ``watch`` is where its atomic writes leave temporary files, ``outcome`` what a finished run is compared by."""

    name: str
    command: list[str]
    out: Path
    progress: Callable[[], int]
    watch: list[Path]
    outcome: Callable[[], object]
    kill_tree: bool = False
    kept: str = "**/*"  # the files a finished rerun must leave alone (eval recomputes its report)
    kills: list[dict] = field(default_factory=list)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def files_in(path: Path, pattern: str) -> int:
    return len(list(path.glob(pattern))) if path.is_dir() else 0


def leftovers(paths: list[Path]) -> list[str]:
    return sorted(p.name for path in paths if path.is_dir() for p in path.glob(".*.tmp"))


def torn_log(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")


def start(scenario: Scenario) -> subprocess.Popen:
    return subprocess.Popen(
        scenario.command,
        env=ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so a process-group
    kill would miss them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill(process: subprocess.Popen, tree: bool) -> None:
    """SIGKILL the process and, with ``tree``, every process below it at once (a machine that loses power)."""
    below = descendants(process.pid) if tree else []
    for pid in [*below, process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in below):
        time.sleep(0.01)  # grandchildren are reaped by init, not by us


def wait_until(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            return True
        time.sleep(0.001)
    return False


def one_kill(scenario: Scenario, draw: random.Random, targeted: bool, step_seconds: float) -> dict | None:
    """Start the command, kill it at a drawn moment, record where the kill landed; None if it finished first."""
    before = set(leftovers(scenario.watch))
    process, begun = start(scenario), time.monotonic()
    if targeted:
        reached = wait_until(process, lambda: bool(set(leftovers(scenario.watch)) - before))
        time.sleep(draw.uniform(0, 0.005))
    else:
        target = scenario.progress() + draw.randint(1, 6)
        reached = wait_until(process, lambda: scenario.progress() >= target)
        time.sleep(draw.uniform(0, step_seconds))
    if process.poll() is not None:
        return None
    kill(process, scenario.kill_tree)
    left = sorted(set(leftovers(scenario.watch)) - before)  # this kill's, not an earlier one's
    metrics = scenario.out / "metrics.jsonl"
    landed = "atomic write" if left else "log write" if torn_log(metrics) else "between writes"
    complete = ckpt.list_checkpoints(scenario.out)
    assert all(ckpt.is_complete(p) for p in (scenario.out / "checkpoints").glob("step_*")), "a torn checkpoint"
    return {
        "seconds_after_start": round(time.monotonic() - begun, 3),
        "targeted_at_a_write": targeted and reached,
        "landed": landed,
        "leftovers": left,
        "progress": scenario.progress(),
        "newest_checkpoint_step": ckpt.read_state(complete[-1]).step if complete else None,
    }


def run_to_end(scenario: Scenario) -> float:
    begun = time.monotonic()
    result = subprocess.run(scenario.command, env=ONE_THREAD, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{scenario.name}: {' '.join(scenario.command)} failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - begun


def inject(scenario: Scenario, reference: Scenario, kills: int, seed: int) -> dict:
    """Kill ``scenario`` ``kills`` times, finish it, compare with the uninterrupted ``reference``."""
    straight_seconds = run_to_end(reference)
    step_seconds = straight_seconds / max(reference.progress(), 1)
    draw, attempts = random.Random(seed), 0
    while len(scenario.kills) < kills and attempts < 3 * kills:
        attempts += 1
        record = one_kill(scenario, draw, targeted=len(scenario.kills) % 4 == 3, step_seconds=step_seconds)
        if record is None:
            break  # the command finished before the kill: nothing left to interrupt
        scenario.kills.append(record)
        print(scenario.name, len(scenario.kills), json.dumps(record), flush=True)
    run_to_end(scenario)
    rerun_files = snapshot(scenario.out, scenario.kept)
    run_to_end(scenario)  # a finished run rerun: exit 0, files untouched
    mine, theirs = scenario.outcome(), reference.outcome()
    same = mine == theirs
    differing = [key for key in mine if mine[key] != theirs.get(key)] if isinstance(mine, dict) else []
    return {
        "scenario": scenario.name,
        "kills": len(scenario.kills),
        "landed": {kind: sum(k["landed"] == kind for k in scenario.kills) for kind in LANDINGS},
        "targeted_at_a_write": sum(k["targeted_at_a_write"] for k in scenario.kills),
        "identical_to_uninterrupted": same,
        "differing": differing,
        "finished_rerun_left_files_alone": snapshot(scenario.out, scenario.kept) == rerun_files,
        "uninterrupted_seconds": round(straight_seconds, 1),
        "kill_records": scenario.kills,
    }


LANDINGS = ("atomic write", "log write", "between writes")


def snapshot(root: Path, pattern: str) -> dict[str, int]:
    """Modification times of the files under ``root`` that match ``pattern``."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.glob(pattern)) if p.is_file()}


def digest(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (temporary files and ``exclude`` names left out)."""
    return {
        str(p.relative_to(root)): sha256(p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp") and p.name not in exclude
    }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def training_outcome(run: Path) -> dict:
    """The last checkpoint's step and model/EMA tensors, and the loss logged at every step."""
    directory = ckpt.resolve_checkpoint(run)
    weights = {
        name: {key: sha256(t.numpy().tobytes()) for key, t in ckpt.read_tensors(directory, name).items()}
        for name in ("model", "ema")
    }
    losses = [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"step": ckpt.read_state(directory).step, "weights": weights, "losses": losses}


def train_scenario(root: Path, name: str, steps: int, ranks: int = 1) -> Scenario:
    run, config = root / name, root / "empty.yaml"
    config.write_text("")
    launcher = LATENTFM
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        launcher += ["-m", "latentfm.cli", "--"]
    command = [*launcher, "train", "--config", str(config), *TINY, f"train.steps={steps}"]
    command += ["train.checkpoint_every=2", "train.keep_checkpoints=2", f"train.out_dir={run}"]
    return training_scenario(name, command, run, kill_tree=ranks > 1)


def refiner_scenario(root: Path, name: str, teacher: Path) -> Scenario:
    run = root / name
    command = [*LATENTFM, "train-refiner", "--teacher", str(teacher), "--config", "configs/digits_refiner.yaml"]
    command += ["train.steps=80", "train.batch_size=32", "train.log_every=1", "train.checkpoint_every=2"]
    command += ["train.sample_every=0", "train.keep_checkpoints=2", "train.device=cpu", f"train.out_dir={run}"]
    return training_scenario(name, command, run)


def training_scenario(name: str, command: list[str], run: Path, kill_tree: bool = False) -> Scenario:
    """A training command into ``run``: progress is its logged steps, compared by ``training_outcome``."""
    return Scenario(
        name,
        command,
        run,
        progress=lambda: lines(run / "metrics.jsonl"),
        watch=[run / "checkpoints", run],
        outcome=lambda: training_outcome(run),
        kill_tree=kill_tree,
    )


def encode_scenario(root: Path, name: str, config: Path) -> Scenario:
    out = root / name
    command = [*LATENTFM, "encode", "--config", str(config), "--out", str(out), "--shard-size", "16"]
    command += ["--batch-size", "8", "--hflip", "--device", "cpu"]
    return Scenario(
        name,
        command,
        out,
        progress=lambda: files_in(out, "shard_*.npy"),
        watch=[out],
        outcome=lambda: digest(out),
    )


def eval_scenario(root: Path, name: str, run: Path, classifier: Path, reference: Path) -> Scenario:
    out = root / name
    command = [*LATENTFM, "eval", "--checkpoint", str(run), "--reference", str(reference), "--features"]
    command += [str(classifier), "--n", "1280", "--shard-size", "32", "--nfe", "4", "--cfg", "2", "--device", "cpu"]
    command += ["--latency-repeats", "1", "--out", str(out)]

    def outcome() -> object:
        """The report's metrics and every shard's arrays but its generation seconds (which vary)."""
        shards = {}
        for path in sorted((out / "shards").glob("*.npz")):
            with np.load(path) as shard:
                shards[path.name] = {k: sha256(shard[k].tobytes()) for k in shard.files if k != "seconds"}
        return json.loads((out / "report.json").read_text())["metrics"], shards

    return Scenario(
        name,
        command,
        out,
        progress=lambda: files_in(out / "shards", "*.npz"),
        watch=[out, out / "shards"],
        outcome=outcome,
        kept="shards/*",
    )


def prepare(root: Path) -> dict[str, Path]:
    """A teacher run, a KL autoencoder, a classifier and reference statistics for the other scenarios."""
    paths = {"teacher": root / "teacher", "kl": root / "kl", "classifier": root / "clf.safetensors"}
    paths["reference"], paths["encode_config"] = root / "reference.npz", root / "encode.yaml"
    (root / "empty.yaml").write_text("")
    steps = [
        [*LATENTFM, "train", "--config", str(root / "empty.yaml"), *TINY, "train.steps=20", "train.checkpoint_every=0"]
        + [f"train.out_dir={paths['teacher']}"],
        [*LATENTFM, "train-autoencoder", "--config", str(root / "empty.yaml"), "data.dataset=digits"]
        + ["model.channels=8", "model.channel_mult=[1,2]", "model.groups=4", "model.latent_channels=2"]
        + ["train.device=cpu", "train.batch_size=16", "train.steps=2", f"train.out_dir={paths['kl']}"],
        [*LATENTFM, "train-classifier", "--dataset", "digits", "--out", str(paths["classifier"]), "--epochs", "3"],
        [*LATENTFM, "stats", "--dataset", "digits", "--split", "train", "--features", str(paths["classifier"])]
        + ["--out", str(paths["reference"])],
    ]
    for command in steps:
        result = subprocess.run(command, env=ONE_THREAD, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"setup failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    paths["encode_config"].write_text(
        f"data:\n  dataset: digits\nautoencoder:\n  kind: kl\n  checkpoint: {paths['kl']}\n"
    )
    return paths


def markdown(results: list[dict]) -> str:
    rows = [
        "| scenario | kills | in an atomic write | in a log write | between writes | targeted at a write | "
        "end identical to an uninterrupted run | finished rerun left files alone |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        landed = r["landed"]
        rows.append(
            f"| {r['scenario']} | {r['kills']} | {landed['atomic write']} | {landed['log write']} | "
            f"{landed['between writes']} | {r['targeted_at_a_write']} | "
            f"{'yes' if r['identical_to_uninterrupted'] else 'NO'} | "
            f"{'yes' if r['finished_rerun_left_files_alone'] else 'NO'} |"
        )
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where faults.json and faults.md go")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the one-process training run")
    parser.add_argument("--other-kills", type=int, default=6, help="SIGKILLs of each other scenario")
    parser.add_argument("--scenarios", default="train,torchrun,train-refiner,encode,eval")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chosen = args.scenarios.split(",")
    with tempfile.TemporaryDirectory(prefix="latentfm-faults-") as tmp:
        root = Path(tmp)
        paths = prepare(root) if set(chosen) - {"train", "torchrun"} else {}
        pairs = {
            "train": lambda: (train_scenario(root, "train", 150), train_scenario(root, "train-straight", 150)),
            "torchrun": lambda: (
                train_scenario(root, "torchrun", 60, ranks=2),
                train_scenario(root, "torchrun-straight", 60, ranks=2),
            ),
            "train-refiner": lambda: (
                refiner_scenario(root, "refiner", paths["teacher"]),
                refiner_scenario(root, "refiner-straight", paths["teacher"]),
            ),
            "encode": lambda: (
                encode_scenario(root, "encode", paths["encode_config"]),
                encode_scenario(root, "encode-straight", paths["encode_config"]),
            ),
            "eval": lambda: tuple(
                eval_scenario(root, name, paths["teacher"], paths["classifier"], paths["reference"])
                for name in ("eval", "eval-straight")
            ),
        }
        results = []
        for index, name in enumerate(chosen):
            scenario, reference = pairs[name]()
            kills = args.kills if name == "train" else args.other_kills
            results.append(inject(scenario, reference, kills, args.seed + index))
            print(markdown(results[-1:]), flush=True)
    report = {"machine": machine_description(torch.device("cpu")), "seed": args.seed, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "faults.json", json.dumps(report, indent=1).encode())
    write_bytes_atomic(args.out / "faults.md", markdown(results).encode())
    print(markdown(results))


if __name__ == "__main__":
    main()
