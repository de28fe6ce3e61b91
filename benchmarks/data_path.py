"""How the data path's memory and time grow with the dataset: synthetic image folders, a /proc-polling runner
for ``latentfm`` commands, and the per-core decode rate of JPEGs.

What it measures, per ``run``: the wall time of one ``python -m latentfm.cli ...`` child process, the peak RSS
of that child (``os.wait4``'s ``ru_maxrss``; Linux folds in the largest reaped descendant), and the peak of the
summed PSS over the child's whole process tree (DataLoader workers included), polled from
``/proc/PID/smaps_rollup`` every 20 ms. ``decode-rate`` times Pillow open + convert("RGB") + ``np.asarray`` in
one thread. Each measurement is appended as one JSON line to ``benchmarks/results/data_path.jsonl``.

This script never imports latentfm: ``--python-path P`` runs the code found at P (e.g. a ``git worktree`` of an
older commit) instead of the installed one. Rerun the baseline (absolute paths; CMD after ``--``)::

    python benchmarks/data_path.py make-folder --n 5000 --out /work/bench_data/folder_5000
    python benchmarks/data_path.py train-config --data /work/bench_data/folder_5000 \\
        --out /work/bench_data/cfg_5000.yaml --run-dir /work/bench_data/run_5000
    python benchmarks/data_path.py run --label old/train1/5000 --python-path /work/old -- \\
        train --config /work/bench_data/cfg_5000.yaml train.steps=1
    python benchmarks/data_path.py run --label old/encode/5000 --python-path /work/old -- \\
        encode --config /work/bench_data/cfg_5000.yaml --out /work/bench_data/cache_5000
    python benchmarks/data_path.py make-jpegs --n 500 --out /work/bench_data/jpeg256
    python benchmarks/data_path.py decode-rate --dir /work/bench_data/jpeg256 --label jpeg256
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "data_path.jsonl"
POLL_S = 0.02
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


# ---------------------------------------------------------------- synthetic datasets


def synthetic_image(seed: int, index: int, size: int, classes: int) -> np.ndarray:
    """A size x size RGB uint8 image drawn from ``default_rng((seed, index))``: a smooth bilinear gradient between
    four random corner colours, tinted by the class (index mod classes), plus Gaussian noise (sigma 8)."""
    rng = np.random.default_rng((seed, index))
    corners = rng.uniform(0, 255, size=(2, 2, 3))
    corners[..., (index % classes) % 3] *= 0.5 + 0.5 * (index % classes) / max(classes - 1, 1)
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    top = corners[0, 0] * (1 - t) + corners[0, 1] * t  # [size, 1, 3] across x
    bottom = corners[1, 0] * (1 - t) + corners[1, 1] * t
    image = top[None, :, 0] * (1 - t) + bottom[None, :, 0] * t  # [size, size, 3]
    image = image + rng.normal(0.0, 8.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def image_path(out: Path, index: int, classes: int, suffix: str) -> Path:
    """Where image ``index`` lives: ``out/class_k/{index:08d}{suffix}`` with k = index mod classes."""
    return out / f"class_{index % classes}" / f"{index:08d}{suffix}"


def _write_one(job: tuple[str, int, int, int, int, str]) -> None:
    """Pool worker: draw one image and save it as PNG or JPEG (quality 90)."""
    out, index, size, classes, seed, kind = job
    image = Image.fromarray(synthetic_image(seed, index, size, classes))
    if kind == "png":
        image.save(image_path(Path(out), index, classes, ".png"))
    else:
        image.save(image_path(Path(out), index, classes, ".jpg"), quality=90)


def count_images(directory: Path) -> int:
    """Number of image files anywhere below ``directory`` (0 when it does not exist)."""
    if not directory.is_dir():
        return 0
    return sum(1 for f in directory.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def make_dataset(n: int, out: Path, size: int, classes: int, seed: int, kind: str) -> None:
    """Write ``n`` synthetic class-per-folder images with two worker processes; skip if ``out`` holds n already."""
    have = count_images(out)
    if have == n:
        print(f"{out}: already holds {n} images, skipped")
        return
    if have:
        raise SystemExit(f"{out} holds {have} images, not {n}: remove it or choose another --out")
    for k in range(min(classes, n)):
        (out / f"class_{k}").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = ((str(out), i, size, classes, seed, kind) for i in range(n))
    with Pool(2) as pool:
        for _ in pool.imap_unordered(_write_one, jobs, chunksize=256):
            pass
    seconds = time.perf_counter() - start
    megabytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"{out}: {n} {size}x{size} {kind.upper()}s, {megabytes:.1f} MB, written in {seconds:.1f} s")


# ---------------------------------------------------------------- measuring a process tree


def process_parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its living descendants."""
    children: dict[int, list[int]] = {}
    for pid, parent in process_parents().items():
        children.setdefault(parent, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status (e.g. VmRSS), 0 when gone or absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB; PSS falls back to RSS where smaps_rollup cannot be read."""
    rss = _status_kb(pid, "VmRSS")
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]), rss
    except (OSError, ValueError):
        pass
    return rss, rss


def run_measured(argv: list[str], env: dict[str, str], stderr_file) -> dict:
    """Run ``argv``, poll its process tree's memory every 20 ms, reap it with ``os.wait4``; the figures."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stderr=stderr_file)
    peak_pss = peak_rss = peak_procs = 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        tree = process_tree(child.pid)
        sizes = [memory_kb(p) for p in tree]
        peak_pss = max(peak_pss, sum(s[0] for s in sizes))
        peak_rss = max(peak_rss, sum(s[1] for s in sizes))
        peak_procs = max(peak_procs, len(tree))
        time.sleep(POLL_S)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(wall, 3),
        "main_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "tree_peak_pss_mb": round(peak_pss / 1024, 1),
        "tree_peak_rss_mb": round(peak_rss / 1024, 1),
        "tree_peak_processes": peak_procs,
        "rc": child.returncode,
    }


def default_python() -> str:
    """The repository's virtual environment's python, else the one running this script."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run_cli(label: str, python_path: str | None, cli_args: list[str], python: str) -> dict:
    """Measure ``python -P -m latentfm.cli CLI_ARGS`` (-P: the working directory does not shadow PYTHONPATH)."""
    env = dict(os.environ)
    if python_path:
        env["PYTHONPATH"] = python_path
    argv = [python, "-P", "-m", "latentfm.cli", *cli_args]
    with tempfile.TemporaryFile() as stderr_file:
        figures = run_measured(argv, env, stderr_file)
        stderr_file.seek(0)
        stderr_tail = stderr_file.read().decode(errors="replace")[-3000:]
    record = {"label": label, "cmd": cli_args, "python_path": python_path, **figures}
    if figures["rc"] != 0:
        print(f"exit status {figures['rc']}; stderr tail:\n{stderr_tail}", file=sys.stderr)
        record["stderr_tail"] = stderr_tail[-1000:]
    return record


# ---------------------------------------------------------------- decoding


def decode_rate(directory: Path, n: int, repeat: int = 3) -> dict:
    """Images/s of Pillow open + convert("RGB") + np.asarray in this one thread over the first ``n`` images
    (sorted by path) below ``directory``: the median of ``repeat`` passes (all kept); the files are read once
    beforehand so the page cache holds them."""
    files = sorted(f for f in directory.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)[:n]
    if not files:
        raise SystemExit(f"no images below {directory}")
    megabytes = sum(len(f.read_bytes()) for f in files) / 2**20
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        for file in files:
            with Image.open(file) as img:
                np.asarray(img.convert("RGB"))
        rates.append(len(files) / (time.perf_counter() - start))
    return {
        "dir": str(directory),
        "n": len(files),
        "mean_file_kb": round(megabytes * 1024 / len(files), 1),
        "images_per_s": round(float(np.median(rates)), 1),
        "passes_images_per_s": [round(r, 1) for r in rates],
    }


# ---------------------------------------------------------------- records and configs


def machine() -> str:
    """The platform, CPU model and core count."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.platform()}; {model}; {os.cpu_count()} cores"


def append_record(record: dict) -> None:
    """Add machine, torch version and date to ``record``, append it to the results file and print it."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    record = {
        **record,
        "machine": machine(),
        "torch": torch_version,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as results:
        results.write(json.dumps(record) + "\n")
    print(json.dumps(record))


def train_config(data: str, steps: int, batch: int, run_dir: str) -> dict:
    """A tiny pixel-space DiT run on a 64x64 RGB image folder: cheap steps, so the data path dominates."""
    return {
        "data": {"dataset": "folder", "path": data, "channels": 3},
        "autoencoder": {"kind": "identity", "normalize": "none"},
        "model": {"arch": "dit", "patch_size": 8, "hidden_size": 64, "depth": 2, "num_heads": 2},
        "optim": {"lr": 1.0e-3},
        "train": {
            "steps": steps,
            "batch_size": batch,
            "device": "cpu",
            "out_dir": run_dir,
            "log_every": 1,
            "sample_every": 0,
            "checkpoint_every": 0,
        },
    }


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The subcommands and their options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, size in (("make-folder", 64), ("make-jpegs", 256)):
        make = commands.add_parser(name, help=f"synthetic class-per-folder {'PNGs' if size == 64 else 'JPEGs'}")
        make.add_argument("--n", type=int, required=True, help="number of images")
        make.add_argument("--out", required=True, help="directory to fill")
        make.add_argument("--size", type=int, default=size, help=f"square image size (default {size})")
        make.add_argument("--classes", type=int, default=10, help="class folders (default 10)")
        make.add_argument("--seed", type=int, default=0, help="image i is drawn from default_rng((seed, i))")
    run = commands.add_parser("run", help="measure one `latentfm` command: python -m latentfm.cli CMD...")
    run.add_argument("--label", required=True, help="the record's name, e.g. old/train1/5000")
    run.add_argument("--python-path", default=None, help="PYTHONPATH holding the latentfm to run (default: installed)")
    run.add_argument("--python", default=default_python(), help="interpreter (default: the repository's .venv)")
    run.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the latentfm command and its arguments")
    decode = commands.add_parser("decode-rate", help="single-thread Pillow decode rate of the images in a directory")
    decode.add_argument("--dir", required=True, help="directory of images (searched recursively)")
    decode.add_argument("--n", type=int, default=500, help="images to decode (default 500)")
    decode.add_argument("--repeat", type=int, default=3, help="timed passes; the median is reported (default 3)")
    decode.add_argument("--label", default="decode", help="the record's name (default decode)")
    config = commands.add_parser("train-config", help="write a tiny training config for a 64x64 RGB folder")
    config.add_argument("--data", required=True, help="the image folder")
    config.add_argument("--out", required=True, help="YAML file to write")
    config.add_argument("--steps", type=int, default=10, help="train.steps (default 10)")
    config.add_argument("--batch", type=int, default=32, help="train.batch_size (default 32)")
    config.add_argument("--run-dir", default=None, help="train.out_dir (default: OUT without .yaml, plus _run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Dispatch one subcommand."""
    args = parse_args(argv)
    if args.command in ("make-folder", "make-jpegs"):
        kind = "png" if args.command == "make-folder" else "jpeg"
        make_dataset(args.n, Path(args.out), args.size, args.classes, args.seed, kind)
    elif args.command == "run":
        cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
        if not cli:
            raise SystemExit("run: give the latentfm command after --, e.g. -- train --config CFG")
        append_record(run_cli(args.label, args.python_path, cli, args.python))
    elif args.command == "decode-rate":
        append_record({"label": args.label, **decode_rate(Path(args.dir), args.n, args.repeat)})
    elif args.command == "train-config":
        out = Path(args.out)
        run_dir = args.run_dir or str(out.with_suffix("")) + "_run"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(train_config(args.data, args.steps, args.batch, run_dir), sort_keys=False))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
