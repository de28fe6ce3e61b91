"""Options that several commands share, declared once: the device, the output directory, seeds and counts
(argparse types that refuse a bad value in one line, exit 2), the dataset names of ``--dataset``, and the
sampler's flags with how they replace a checkpoint's recipe."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from latentfm.errors import LatentFMError
from latentfm.sampling.settings import command_line_fields

if TYPE_CHECKING:
    from latentfm.config import DataConfig
    from latentfm.pipeline import FlowPipeline
    from latentfm.sampling import SamplerSettings

DATASET_HELP = "digits, fashion_mnist, idx:DIR, folder:DIR, npz:FILE or a YAML config (its data section)"
FEATURES_HELP = "classifier weights (.safetensors) or FID InceptionV3 weights (pt_inception-2015-12-05 .pth)"
DEVICES = "auto, cpu, cuda, cuda:N or mps"


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1.

    >>> positive_int("8")
    8
    """
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0 (seeds)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 0")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def device_name(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether this machine has it is
    checked where it is used, by ``device``).

    >>> device_name("cuda:1")
    'cuda:1'
    """
    kind, _, index = text.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use {DEVICES}")
    return text


def output_dir(text: str) -> str:
    """An argparse type: a directory to write into, refused when it, or a folder above it, is an existing file."""
    path = Path(text)
    for above in (path, *path.parents):
        if above.exists() and not above.is_dir():
            raise argparse.ArgumentTypeError(f"{above} is a file: give a directory")
    return text


def output_file(text: str) -> str:
    """An argparse type: a file to write, refused when it is a directory or a folder above it is a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory: give a file name")
    output_dir(str(path.parent))
    return text


def add_output_dir(parser: argparse.ArgumentParser, default: str | None = None, help: str = "output directory") -> None:
    """``--out``: the directory a command writes into (required unless it has a ``default``)."""
    parser.add_argument("--out", type=output_dir, required=default is None, default=default, help=help)


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` (or ``--model``): a run, checkpoint or exported model directory, a built-in model's name
    or a Hugging Face Hub id (``latentfm.pretrained.model_directory``)."""
    parser.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        metavar="MODEL",
        required=True,
        help="run directory (its newest checkpoint), checkpoint or exported model directory, built-in model name "
        "(latentfm models) or Hugging Face Hub id",
    )


def model_directory(args: argparse.Namespace) -> str:
    """The local directory ``--checkpoint``/``--model`` names (a name or Hub id resolved, a card's hash checked)."""
    from latentfm.pretrained import model_directory as locate

    return str(locate(args.checkpoint))


def add_device(parser: argparse.ArgumentParser, note: str = "") -> None:
    """``--device``: default auto, this rank's GPU when CUDA is available, else the CPU."""
    parser.add_argument("--device", type=device_name, default="auto", help=f"{DEVICES} (default auto{note})")


def device(name: str) -> torch.device:
    """The torch device ``--device`` names, refused in one line when this machine has none such."""
    from latentfm.distributed import resolve_device

    return resolve_device(name, what="--device")


def dataset_config(spec: str, split: str | None = None, image_size: int | None = None) -> DataConfig:
    """The ``DataConfig`` a command-line ``--dataset`` names: ``digits``, ``fashion_mnist`` (the Debian IDX
    files), ``idx:DIR``, ``folder:DIR``, ``npz:FILE``, or a YAML config file (its ``data`` section)."""
    from latentfm.config import DataConfig, load_config
    from latentfm.data.arrays import DEFAULT_IDX_PATH

    if spec.endswith((".yaml", ".yml")):
        data = load_config(spec).data
    elif spec in ("digits", "fashion_mnist"):
        data = DataConfig(dataset="digits") if spec == "digits" else DataConfig(dataset="idx", path=DEFAULT_IDX_PATH)
    elif spec.partition(":")[0] in ("idx", "folder", "npz") and spec.partition(":")[2]:
        kind, _, path = spec.partition(":")
        data = DataConfig(dataset=kind, path=path)
    else:
        raise LatentFMError(
            f"--dataset {spec!r}: use digits, fashion_mnist, idx:DIR, folder:DIR, npz:FILE or a YAML config"
        )
    data.split = split or data.split
    data.image_size = image_size or data.image_size
    return data


def add_sampler_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """A flag per command-line field of ``SamplerSettings`` (or of those ``names``), made from its declaration
    (name, help, metavar); each one left out keeps the checkpoint's ``sample`` section. The text is read once,
    by ``sampler_settings``."""
    for item in command_line_fields():
        if names is not None and item.name not in names:
            continue
        const = {"nargs": "?", "const": "default"} if item.name == "compile" else {}
        parser.add_argument(
            flag(item.name),
            metavar=item.metadata["metavar"],
            help=f"{item.metadata['help']} (default: the checkpoint's sample section)",
            **const,
        )


def flag(name: str) -> str:
    """The command-line flag of a ``SamplerSettings`` field: ``--guidance-interval`` for ``guidance_interval``."""
    return f"--{name.replace('_', '-')}"


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampler's flags (``add_sampler_flags``) plus the refiner, the seed and the batch size, shared by
    ``sample``, ``eval``, ``inpaint`` and ``upsample``."""
    add_sampler_flags(parser)
    parser.add_argument("--refiner", help="the velocity refiner's run or checkpoint directory (latentfm train-refiner)")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the source noise (sample i uses (seed, i))"
    )
    parser.add_argument("--batch-size", type=positive_int, default=256, help="samples per model call")


def sampler_settings(args: argparse.Namespace, recipe: SamplerSettings) -> SamplerSettings:
    """The checkpoint's sampler (``recipe``) with what the command line gives replaced."""
    given = [f"--{name}" for name in ("solver", "nfe", "steps") if getattr(args, name, None) is not None]
    if getattr(args, "turbo", None) is not None and given:
        raise LatentFMError(f"--turbo {args.turbo} is a whole sampler: drop {' and '.join(given)}")
    given = {item.name: getattr(args, item.name, None) for item in command_line_fields()}
    return recipe.with_given(lambda name, text: f"{flag(name)} {text}", **given)


def pipeline(args: argparse.Namespace) -> FlowPipeline:
    """The checkpoint's pipeline on the requested device, with ``--refiner`` when given."""
    from latentfm.pipeline import FlowPipeline

    pipe = FlowPipeline.from_pretrained(args.checkpoint, device=device(args.device))
    return pipe.with_refiner(args.refiner) if args.refiner else pipe
