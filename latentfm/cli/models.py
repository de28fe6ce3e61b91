"""Models to share and to use by name: ``export`` (a run as a model directory with a card), ``models`` (the
built-in models) and ``serve`` (a web page to try them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentfm.cli.options import add_device, add_output_dir, device, positive_int
from latentfm.errors import LatentFMError


def cmd_export(args: argparse.Namespace) -> None:
    """Write a flow run's newest checkpoint (or a checkpoint directory) as a self-contained model directory: the
    EMA weights, the config, class names and recipe sampler, the autoencoder's weights, a sample grid and a model
    card README.md whose front matter holds the weights' SHA-256. Load it with --model DIR or
    FlowPipeline.from_pretrained(DIR)."""
    from latentfm.export import export_model

    notes = _read_text(args.notes, "--notes") if args.notes else ""
    report = json.loads(_read_text(args.report, "--report")) if args.report else None
    out = export_model(args.source, args.out, args.name, args.license, args.data_license, notes, report)
    print(f"wrote {out}: " + ", ".join(sorted(path.name for path in out.iterdir())))


def cmd_models(args: argparse.Namespace) -> None:
    """List the built-in models (use one with --model NAME)."""
    from latentfm.pretrained import builtin_models, read_card

    for name, directory in builtin_models().items():
        card = read_card(directory)
        size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
        print(f"{name:16s} {card.summary if card else ''} ({size / 1e6:.1f} MB)")


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve a web page to try models (Gradio; pip install 'latentfm[ui]'): pick a model, generate by class with
    any sampler and see the exact NFE and the time; inpaint by painting a mask; up-sample; follow a map."""
    from latentfm.pretrained import model_directory
    from latentfm.serve import serve

    models = args.model or ["fashion-mnist"]
    for name in models:
        model_directory(name)  # an unknown name or a damaged export fails here, before the page starts
    serve(models, args.host, args.port, device(args.device), args.refiner)


def _read_text(path: str, flag: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise LatentFMError(f"{flag} {path}: cannot read it ({error.strerror})") from None


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The parsers of this family."""
    export = commands.add_parser(
        "export", help="a run as a model directory with a card", description=cmd_export.__doc__
    )
    export.add_argument("source", metavar="RUN", help="a flow run directory (its newest checkpoint) or a checkpoint")
    add_output_dir(export, help="the model directory to write (replaced atomically)")
    export.add_argument("--name", help="the model's name in its card (default: the --out folder's name)")
    export.add_argument("--license", default="other", help="the weights' licence (a Hugging Face licence id)")
    export.add_argument("--data-license", default="unknown", help="the training data's licence, said in the card")
    export.add_argument("--notes", metavar="FILE.md", help="Markdown added to the card (measured figures, machine)")
    export.add_argument("--report", metavar="report.json", help="a latentfm eval report whose figures the card states")
    export.set_defaults(run=cmd_export)
    models = commands.add_parser("models", help="the built-in models", description=cmd_models.__doc__)
    models.set_defaults(run=cmd_models)
    serve = commands.add_parser("serve", help="a web page to try models", description=cmd_serve.__doc__)
    serve.add_argument(
        "--model",
        action="append",
        metavar="NAME|DIR|RUN",
        help="a model to offer (repeatable; default: the built-in fashion-mnist)",
    )
    serve.add_argument("--refiner", help="a velocity refiner of the first model, for turbo programs")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument("--port", type=positive_int, default=7860, help="the port to listen on")
    add_device(serve)
    serve.set_defaults(run=cmd_serve)
