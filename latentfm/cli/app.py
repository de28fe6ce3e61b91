"""The ``latentfm`` command as a whole: the parser of every command family, and ``main``, the one place where errors
become exit codes (a problem the user can fix: one line on stderr, exit 2; never a traceback)."""

from __future__ import annotations

import argparse
import errno
import inspect
import sys

from latentfm import __version__
from latentfm.cli.bench import add_commands as add_bench
from latentfm.cli.evaluate import add_commands as add_evaluate
from latentfm.cli.generate import add_commands as add_generate
from latentfm.cli.info import add_commands as add_info
from latentfm.cli.models import add_commands as add_models
from latentfm.cli.train import add_commands as add_train
from latentfm.errors import LatentFMError, Terminated
from latentfm.progress import set_quiet

DESCRIPTION = (
    "Train flow-matching image models in an autoencoder's latent space (or on pixels), sample them fast and "
    "measure them. Run `latentfm COMMAND --help` for a command's options."
)
# One example per command, shown at the end of its --help (tests/cli/test_cli.py parses every one).
EXAMPLES = {
    "train": "latentfm train --config configs/digits.yaml train.steps=500",
    "train-refiner": "latentfm train-refiner --teacher runs/fashion_mnist --config configs/fashion_mnist_refiner.yaml",
    "train-fewstep": "latentfm train-fewstep --teacher runs/fashion_mnist --config configs/fashion_mnist_fewstep.yaml",
    "train-autoencoder": "latentfm train-autoencoder --config configs/fashion_mnist_autoencoder.yaml",
    "encode": "latentfm encode --config configs/fashion_mnist_latent.yaml --out runs/fashion_mnist_latents",
    "demo": "latentfm demo --out out/demo",
    "sample": "latentfm sample --model fashion-mnist --labels Sneaker,Bag --n 8 --out out/samples",
    "upsample": "latentfm upsample --checkpoint runs/fashion_mnist_upsample --input low/ --out out/up",
    "inpaint": "latentfm inpaint --checkpoint runs/fashion_mnist_inpaint --image a.png --mask m.png --out out/i",
    "search-schedule": "latentfm search-schedule --checkpoint runs/fashion_mnist --nfe 8 --out runs/schedule_nfe8.json",
    "train-classifier": "latentfm train-classifier --dataset fashion_mnist --out runs/eval/clf.safetensors",
    "stats": "latentfm stats --dataset fashion_mnist --features runs/eval/clf.safetensors --out runs/eval/train.npz",
    "eval": "latentfm eval --checkpoint runs/fashion_mnist --reference runs/eval/train.npz "
    "--features runs/eval/clf.safetensors --n 10000 --out out/eval",
    "bench": "latentfm bench solvers --out out/bench_solvers",
    "bench solvers": "latentfm bench solvers --checkpoint runs/fashion_mnist --out out/bench_solvers",
    "bench turbo": "latentfm bench turbo --checkpoint runs/fashion_mnist --features runs/eval/clf.safetensors "
    "--reference runs/eval/train.npz --out out/bench_turbo",
    "info": "latentfm info runs/digits",
    "export": "latentfm export runs/fashion_mnist --out models/fashion-mnist --data-license MIT",
    "models": "latentfm models",
    "serve": "latentfm serve --model fashion-mnist --port 7860",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that keeps the description's lines and shows each option's default when it has a plain one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        plain = action.option_strings and not any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if plain and "default" not in text:
            text += " (default: %(default)s)"
        return text


STORAGE_ERRORS = {
    errno.ENOSPC: "free space or write elsewhere; finished outputs and checkpoints are intact",
    errno.EDQUOT: "free space or write elsewhere; finished outputs and checkpoints are intact",
    errno.EROFS: "choose a writable location",
    errno.EACCES: "choose a location you may write to",
    errno.EPERM: "choose a location you may write to",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``latentfm`` command: every family adds its commands."""
    parser = argparse.ArgumentParser(prog="latentfm", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"latentfm {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_family in (add_train, add_generate, add_evaluate, add_bench, add_info, add_models):
        add_family(commands)
    for name, command in _commands(commands):
        command.formatter_class, command.epilog = HelpFormatter, f"example:\n  {EXAMPLES[name]}"
        command.description = inspect.cleandoc(command.description or "")
    return parser


def _commands(commands: argparse._SubParsersAction, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command parser by its name (``bench turbo`` for a nested one)."""
    found = []
    for name, command in commands.choices.items():
        found.append((prefix + name, command))
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        for subcommands in nested:
            found += _commands(subcommands, f"{prefix}{name} ")
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's own: 0 after --help or --version, 2 for a flag it
    refuses)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    set_quiet(args.quiet)
    try:
        args.run(args)
    except LatentFMError as error:
        print(f"latentfm: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in STORAGE_ERRORS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"latentfm: error: {where}{error.strerror}: {STORAGE_ERRORS[error.errno]}", file=sys.stderr)
        return 2
    except Terminated:
        print("latentfm: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("latentfm: interrupted", file=sys.stderr)
        return 130
    return 0
