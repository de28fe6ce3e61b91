"""The ``latentfm`` command as a whole: the parser of every command family, and ``main``, the one place where errors
become exit codes (a problem the user can fix: one line on stderr, exit 2; never a traceback)."""

from __future__ import annotations

import argparse
import errno
import sys

from latentfm import __version__
from latentfm.cli.bench import add_commands as add_bench
from latentfm.cli.evaluate import add_commands as add_evaluate
from latentfm.cli.generate import add_commands as add_generate
from latentfm.cli.info import add_commands as add_info
from latentfm.cli.train import add_commands as add_train
from latentfm.errors import LatentFMError, Terminated

DESCRIPTION = (
    "Train flow-matching image models in an autoencoder's latent space (or on pixels), sample them fast and "
    "measure them. Run `latentfm COMMAND --help` for a command's options."
)
STORAGE_ERRORS = {
    errno.ENOSPC: "free space or write elsewhere; finished outputs and checkpoints are intact",
    errno.EDQUOT: "free space or write elsewhere; finished outputs and checkpoints are intact",
    errno.EROFS: "choose a writable location",
    errno.EACCES: "choose a location you may write to",
    errno.EPERM: "choose a location you may write to",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``latentfm`` command: every family adds its commands."""
    parser = argparse.ArgumentParser(prog="latentfm", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"latentfm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_family in (add_train, add_generate, add_evaluate, add_bench, add_info):
        add_family(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's own: 0 after --help or --version, 2 for a flag it
    refuses)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
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
