"""Class accuracy of guided Fashion-MNIST samples against NFE for every fixed-step solver (uniform grid) and
a searched schedule, and the NFE each solver needs to come within 10% of the dopri5 reference accuracy.

    python benchmarks/solvers_fashion_mnist.py                       # checkpoint runs/fashion_mnist_latent
    python benchmarks/solvers_fashion_mnist.py --checkpoint runs/fashion_mnist --cfg 3

The judge is the in-project classifier trained on the real training set (cached in runs/ after the first
run). Writes benchmarks/results/solvers_fashion_mnist.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from latentfm.atomic import write_bytes_atomic
from latentfm.data import load_dataset
from latentfm.errors import LatentFMError
from latentfm.metrics.classifier import accuracy, load_classifier, save_classifier, train_classifier
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import load_schedule, search_schedule

RESULTS = Path(__file__).parent / "results"
NFES = (4, 6, 8, 10, 16, 32)
SOLVERS = ("euler", "heun", "heun+euler_last", "midpoint", "rk4", "ab2", "ab3", "pc")


def judge(path: Path, data_path: str | None):
    """The Fashion-MNIST classifier at ``path``, trained (10 epochs, seed 0) and saved there if absent."""
    if path.is_file():
        return load_classifier(path)
    train = load_dataset("idx", data_path, "train")
    model = train_classifier(*train.batch(torch.arange(len(train))), train.num_classes, epochs=10, seed=0)
    save_classifier(model, path)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/fashion_mnist_latent")
    parser.add_argument("--classifier", default="runs/fashion_mnist_classifier.safetensors")
    parser.add_argument("--data-path", default=None, help="Fashion-MNIST IDX directory (default: Debian's)")
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--schedule", default=None, help="a search-schedule JSON for 8 NFE (default: search one)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    classifier = judge(Path(args.classifier), args.data_path)
    pipe = FlowPipeline.from_checkpoint(args.checkpoint, device=args.device)
    labels = torch.arange(10).repeat_interleave(args.per_class)

    def judged(**changes) -> dict:
        """Accuracy, NFE and seconds of the checkpoint's recipe with ``changes`` (and ``--cfg``)."""
        start = time.perf_counter()
        settings = pipe.sampler.with_(cfg=args.cfg, **changes)
        images, stats = pipe.generate(labels, seed=0, settings=settings, batch_size=500)
        seconds = time.perf_counter() - start
        return {"nfe": stats.nfe, "accuracy": accuracy(classifier, images, labels), "seconds": round(seconds, 2)}

    report: dict = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads", **vars(args)}
    report["reference"] = judged(solver="dopri5", options={"rtol": 1e-6, "atol": 1e-6})
    rows = []
    for solver in SOLVERS:
        name, skip_last = solver.removesuffix("+euler_last"), solver.endswith("+euler_last")
        for nfe in NFES:
            try:
                rows.append(
                    {"solver": solver, "budget": nfe, **judged(solver=name, nfe=nfe, options={"skip_last": skip_last})}
                )
            except LatentFMError as error:  # a budget below the solver's minimum
                print(f"{solver} at {nfe}: {error}")
    if args.schedule:
        schedule = load_schedule(args.schedule)
    else:
        velocity = pipe.velocity(pipe.cycled_labels(256), args.cfg)
        schedule = search_schedule(velocity, pipe.source(256, seed=1000), nfe=8, iterations=100, progress=True)
    rows.append({"solver": "searched", "budget": 8, **judged(schedule=schedule, nfe=None)})
    report["searched"] = schedule.info
    report["rows"] = rows
    target = 0.9 * report["reference"]["accuracy"]
    report["nfe_needed"] = {
        solver: min((r["nfe"] for r in rows if r["solver"] == solver and r["accuracy"] >= target), default=None)
        for solver in dict.fromkeys(r["solver"] for r in rows)
    }
    write_bytes_atomic(RESULTS / "solvers_fashion_mnist.json", json.dumps(report, indent=1).encode())
    reference = report["reference"]
    print(f"reference dopri5 1e-6: {reference['accuracy']:.1%} at {reference['nfe']} NFE; target {target:.1%}")
    print("| solver | " + " | ".join(f"NFE {n}" for n in NFES) + " | NFE for ≥ 90% of reference |")
    for solver, needed in report["nfe_needed"].items():
        cells = {r["budget"]: r for r in rows if r["solver"] == solver}
        text = [f"{cells[n]['accuracy']:.1%}" if n in cells else "" for n in NFES]
        print(f"| {solver} | " + " | ".join(text) + f" | {needed or '> 32'} |")


if __name__ == "__main__":
    main()
