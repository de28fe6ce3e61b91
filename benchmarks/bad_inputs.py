"""Bad inputs by kind, each through the command line as a user would type it: the exit code and the one line the
user reads (issue 15; RELIABILITY.md shows the table). The tests (tests/robustness/: test_bad_input.py,
test_untrusted.py, test_disk.py) assert the behaviour; this script writes down every message.

    python benchmarks/bad_inputs.py --out benchmarks/results/bad_inputs   # ~1 min on 2 CPU cores

Writes OUT/bad_inputs.json and OUT/bad_inputs.md; temporary paths appear as TMP.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pickle
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from latentfm.atomic import write_bytes_atomic
from latentfm.cli import main

TINY = ["data.dataset=digits", "train.device=cpu", "model.patch_size=2", "model.hidden_size=32", "model.depth=2"]
TINY += ["model.num_heads=2", "train.batch_size=32", "train.log_every=1", "train.checkpoint_every=0"]
TRAIN = ["train", "--config", "configs/digits.yaml", *TINY, "train.steps=2"]


def run(args: list[str]) -> tuple[int, str]:
    """Exit code and last stderr line of ``latentfm ARGS`` (in this process)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exit_:  # argparse's own usage errors
            code = int(exit_.code or 0)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return code, lines[-1] if lines and code else "(works)"


def image(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(array, mode).save(path)


def pixels(size: int = 8) -> np.ndarray:
    return ((np.arange(size * size * 3).reshape(size, size, 3) * 7) % 256).astype(np.uint8)


def folder_case(root: Path, name: str, make: Callable[[Path], None]) -> list[str]:
    """``latentfm train`` on a folder of 40 good images plus one made by ``make``."""
    folder = root / f"images_{name}"
    folder.mkdir()
    for i in range(40):
        image(folder / f"{i:03d}.png", np.roll(pixels(), i, axis=0))
    make(folder / "zz_bad.png")
    return [*TRAIN, "data.dataset=folder", f"data.path={folder}", "train.batch_size=8", f"train.out_dir={folder}_run"]


def image_cases(root: Path) -> list[tuple[str, str, list[str]]]:
    def truncated(p: Path) -> None:
        image(p, pixels())
        p.write_bytes(p.read_bytes()[:40])

    def transparent(p: Path) -> None:
        rgba = np.dstack([pixels(), np.full((8, 8), 255, np.uint8)])
        rgba[0, 0, 3] = 0
        image(p, rgba, "RGBA")

    makers = {
        "truncated PNG": truncated,
        "zero-byte file": lambda p: p.write_bytes(b""),
        "alpha with transparent pixels": transparent,
        "a 10×10 image among 8×8": lambda p: image(p, pixels(10)),
        "palette (P) image (read)": lambda p: Image.fromarray(pixels()).convert("P").save(p),
        "16-bit grey image (read, scaled)": lambda p: image(p, (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)),
        "opaque RGBA image (read)": lambda p: image(p, np.dstack([pixels(), np.full((8, 8), 255, np.uint8)]), "RGBA"),
        "CMYK JPEG (read)": lambda p: Image.fromarray(pixels()).convert("CMYK").save(p.with_suffix(".jpg")),
    }
    return [("image", name, folder_case(root, str(i), make)) for i, (name, make) in enumerate(makers.items())]


def data_cases(root: Path) -> list[tuple[str, str, list[str]]]:
    """``latentfm encode`` (it reads every image) of folders that are missing, empty, or hold a bad file, and of a
    folder that changed since its cache was started."""

    def folder(name: str, count: int = 40, colour_at: str | None = None) -> Path:
        path = root / f"data_{name}"
        path.mkdir()
        for i in range(count):
            image(path / f"{i:03d}.png", np.roll(pixels(), i, axis=0)[:, :, 0])
        if colour_at:
            image(path / colour_at, pixels())
        return path

    def encode(path: Path, name: str, *extra: str) -> list[str]:
        config = root / f"data_{name}.yaml"
        config.write_text(f"data:\n  dataset: folder\n  path: {path}\n  workers: 1\n")
        return ["encode", "--config", str(config), "--out", str(root / f"cache_{name}"), "--device", "cpu", *extra]

    classes = root / "data_classes"
    (classes / "a").mkdir(parents=True)
    (classes / "b").mkdir()
    image(classes / "a" / "0.png", pixels())
    truncated = folder("truncated")
    (truncated / "017.png").write_bytes((truncated / "017.png").read_bytes()[:40])
    changed = folder("changed")
    run(encode(changed, "changed"))
    image(changed / "new.png", pixels()[:, :, 0])
    (root / "data_empty").mkdir()
    return [
        ("data", "image folder not there", encode(root / "data_missing", "missing")),
        ("data", "empty folder", encode(root / "data_empty", "empty")),
        ("data", "class folder with no images", encode(classes, "classes")),
        ("data", "truncated image (strict)", encode(truncated, "strict")),
        (
            "data",
            "truncated image, data.skip_corrupt=true (read, replaced)",
            encode(truncated, "skip", "data.skip_corrupt=true"),
        ),
        (
            "data",
            "colour image in a folder whose sampled images are grey",
            encode(folder("colour", 200, "101b.png"), "colour"),
        ),
        ("data", "folder changed since its cache was started", encode(changed, "changed")),
    ]


def config_cases(root: Path) -> list[tuple[str, str, list[str]]]:
    overrides = [
        "train.steps=0",
        "train.steps=-3",
        "train.batch_size=0",
        "train.batch_size=100000",
        "optim.lr=0",
        "optim.lr=nan",
        "train.ema_decay=1.5",
        "train.log_every=0",
        "model.patch_size=3",
        "train.stepz=3",
        "model.depth=*",
        "task.kind=semantic task.map_source=data",
        "task.kind=semantic task.map_source=data task.map_classes=4",
        "task.kind=upsample task.upsample_low_source=cache",
        "data.latent_cache=/nowhere",
    ]
    return [("config", o, [*TRAIN, *o.split(), f"train.out_dir={root}/c"]) for o in overrides]


def checkpoint_cases(root: Path) -> list[tuple[str, str, list[str]]]:
    good, big = root / "good", root / "big"
    for out, extra in ((good, []), (big, ["model.hidden_size=64"])):
        assert run([*TRAIN, *extra, f"train.out_dir={out}"])[0] == 0
    cases = []

    def variant(name: str, change: Callable[[Path], None]) -> None:
        copy = root / f"ckpt_{len(cases)}"
        shutil.copytree(good, copy)
        change(next((copy / "checkpoints").iterdir()))
        cases.append(("checkpoint", name, ["sample", "--checkpoint", str(copy), "--n", "1", "--out", f"{root}/s"]))

    def swap_in_bigger(ckpt: Path) -> None:
        shutil.copy(next((big / "checkpoints").iterdir()) / "ema.safetensors", ckpt / "ema.safetensors")
        record_size(ckpt)

    def header(change: Callable[[dict], None], forge_size: bool) -> Callable[[Path], None]:
        def apply(ckpt: Path) -> None:
            weights = ckpt / "ema.safetensors"
            data = weights.read_bytes()
            size = struct.unpack("<Q", data[:8])[0]
            head = json.loads(data[8 : 8 + size])
            change(head[next(key for key in head if key != "__metadata__")])
            text = json.dumps(head).encode()
            weights.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])
            if forge_size:
                record_size(ckpt)

        return apply

    def hide_pickle(ckpt: Path) -> None:
        (ckpt / "model.pt").write_bytes(pickle.dumps({"weights": "a pickle is never loaded"}))

    variant("weights of a larger model (sizes recorded by the forger)", swap_in_bigger)
    variant("header: shapes ×1000", header(lambda e: e.update(shape=[d * 1000 for d in e["shape"]]), False))
    variant(
        "header: shapes ×1000, sizes forged", header(lambda e: e.update(shape=[d * 1000 for d in e["shape"]]), True)
    )
    variant("header: F32 read as I32, sizes forged", header(lambda e: e.update(dtype="I32"), True))
    variant("truncated ema.safetensors", lambda c: (c / "ema.safetensors").write_bytes(b"\0" * 8))
    variant("state.json missing", lambda c: (c / "state.json").unlink())
    variant("a pickle hidden beside the weights (ignored, works)", hide_pickle)
    autoencoder = root / "autoencoder"
    args = ["train-autoencoder", "--config", "configs/fashion_mnist_autoencoder.yaml", "data.dataset=digits"]
    args += ["model.channels=8", "model.channel_mult=[1,2]", "model.groups=4", "train.device=cpu", "train.steps=1"]
    assert run([*args, "train.batch_size=16", f"train.out_dir={autoencoder}"])[0] == 0
    cases.append(
        (
            "checkpoint",
            "an autoencoder given as the flow model",
            ["sample", "--checkpoint", str(autoencoder), "--out", f"{root}/s"],
        )
    )
    evil = root / "evil.pth"
    evil.write_bytes(pickle.dumps({"weights": "pickle"}))
    cases.append(
        (
            "untrusted",
            "a pickle as FID weights",
            ["stats", "--dataset", "digits", "--features", str(evil), "--out", "x"],
        )
    )
    sample = ["sample", "--checkpoint", str(good), "--n", "1", "--out", f"{root}/s"]
    for flag in ("--labels=12", "--labels=5-2", "--labels=x", "--schedule=shift:1e300", "--schedule=karras"):
        cases.append(("string", flag, [*sample, flag]))
    for program in ("H0P0R0", "H99999P0R0", "H1P5R2"):
        cases.append(("string", f"--turbo {program}", [*sample, "--turbo", program]))
    return cases


def record_size(ckpt: Path) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    state["files"]["ema.safetensors"] = (ckpt / "ema.safetensors").stat().st_size
    (ckpt / "state.json").write_text(json.dumps(state))


def fewstep_cases(root: Path) -> list[tuple[str, str, list[str]]]:
    """Few-step tuning and the sde solver (issue 25): a teacher of another kind, a section that is the teacher's,
    more steps than the tuned model takes, a bad noise strength, sde with a turbo program."""
    teacher, tuned, refiner = root / "fs_teacher", root / "fs_tuned", root / "fs_refiner"
    run([*TRAIN, f"train.out_dir={teacher}"])
    recipe, task_section = root / "fewstep.yaml", root / "fewstep_task.yaml"
    recipe.write_text("fewstep:\n  max_nfe: 4\nsample:\n  solver: fewstep\n  nfe: 1\n")
    task_section.write_text("task:\n  kind: inpaint\n")
    tune = ["train-fewstep", "--teacher", str(teacher), "--config", str(recipe), "train.steps=2", "train.device=cpu"]
    run([*tune, "train.batch_size=32", f"train.out_dir={tuned}"])
    refine = ["train-refiner", "--teacher", str(teacher), "--config", str(recipe.with_name("empty.yaml"))]
    recipe.with_name("empty.yaml").write_text("")
    run([*refine, "refiner.hidden_size=16", "train.steps=1", "train.batch_size=32", f"train.out_dir={refiner}"])
    out = ["--out", str(root / "fs_out")]
    sample = ["sample", "--checkpoint", str(teacher), *out]
    return [
        ("fewstep", "a refiner as the teacher", ["train-fewstep", "--teacher", str(refiner), "--config", str(recipe)]),
        (
            "fewstep",
            "a task section in the recipe",
            ["train-fewstep", "--teacher", str(teacher), "--config", str(task_section)],
        ),
        ("fewstep", "--nfe 8 for a model tuned for 4", ["sample", "--checkpoint", str(tuned), "--nfe", "8", *out]),
        ("fewstep", "--solver fewstep on a flow model", [*sample, "--solver", "fewstep"]),
        ("sde", "--noise -1", [*sample, "--solver", "sde", "--noise", "-1"]),
        ("sde", "--noise inf", [*sample, "--solver", "sde", "--noise", "inf"]),
        ("sde", "--noise without --solver sde", [*sample, "--noise", "1"]),
        ("sde", "--solver sde with a turbo program", [*sample, "--solver", "sde", "--turbo", "H1P2R0"]),
    ]


def output_cases(root: Path) -> list[tuple[str, str, list[str]]]:
    """A read-only and a full tmpfs, where this machine lets us mount them (root); none otherwise."""
    cases = []
    for name, options in (("read-only output", "ro,size=64k"), ("full disk (96 KiB tmpfs)", "size=96k")):
        mount = root / name.split()[0].replace("-", "_")
        mount.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True).returncode:
            continue
        args = [*TRAIN, "model.hidden_size=64", "train.checkpoint_every=1", f"train.out_dir={mount}/run"]
        cases.append(("output", name, args))
    return cases


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where bad_inputs.json and .md go")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="latentfm-bad-") as tmp:
        root = Path(tmp)
        cases = image_cases(root) + data_cases(root) + config_cases(root) + checkpoint_cases(root)
        cases += fewstep_cases(root) + output_cases(root)
        for kind, name, command in cases:
            code, line = run(command)
            rows.append({"kind": kind, "input": name, "exit": code, "message": line.replace(tmp, "TMP")})
            print(json.dumps(rows[-1]), flush=True)
        for mount in (root / "read_only", root / "full"):
            subprocess.run(["umount", str(mount)], capture_output=True)
    table = ["| kind | input | exit | what the user reads |", "| --- | --- | ---: | --- |"]
    table += [f"| {r['kind']} | {r['input']} | {r['exit']} | `{r['message']}` |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "bad_inputs.json", json.dumps(rows, indent=1).encode())
    write_bytes_atomic(args.out / "bad_inputs.md", ("\n".join(table) + "\n").encode())
    print("\n".join(table))


if __name__ == "__main__":
    main_()
