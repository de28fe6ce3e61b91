"""Evaluation under one protocol (EVALUATION.md): reference statistics of real images (``latentfm stats``) and
the evaluation of a checkpoint (``latentfm eval``): Fréchet distance, KID, precision/recall, class accuracy,
NFE and latency.

Generated images are quantised to uint8 exactly as real images are stored, then go through the same feature
extractor. Sample ``i`` starts from noise seeded by ``(seed, i)`` and, for a conditional model, asks for class
``i mod num_classes``; samples are generated in shards of consecutive indices, spread over ``torchrun`` ranks
and written atomically, so an interrupted evaluation resumes where it stopped and gives the same numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from latentfm.atomic import write_bytes_atomic
from latentfm.checkpoint import weights_sha256
from latentfm.data import ImageData
from latentfm.distributed import barrier, setup_distributed
from latentfm.errors import LatentFMError
from latentfm.image_io import save_grid
from latentfm.metrics.features import FeatureExtractor, load_features, quantise
from latentfm.metrics.frechet import FeatureStats, frechet_distance
from latentfm.metrics.kid import kernel_distance
from latentfm.metrics.latency import median_seconds, synchronize
from latentfm.metrics.precision_recall import precision_recall
from latentfm.metrics.reference import ReferenceStats, check_protocol, load_reference
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import ADAPTIVE_SOLVERS, schedule_from_text

KEEP_FEATURES = 10_000  # features kept per set for KID and precision/recall: a seeded random subset
FEATURE_BATCH = 256
SPEED_SETTINGS = ("batch_size", "latency_batch", "latency_repeats")  # may change when an evaluation resumes


@dataclass
class EvalSettings:
    """Everything that determines an evaluation's numbers (all of it is written into the report)."""

    checkpoint: str
    reference: str
    features: str
    classifier: str | None = None  # for class accuracy when ``features`` is InceptionV3
    n: int = 50_000
    seed: int = 0
    solver: str = "euler"
    nfe: int | None = 8
    steps: int | None = None
    schedule: str = "uniform"  # a name, a list "0,0.5,1" or a search-schedule JSON file
    cfg: float = 1.0
    batch_size: int = 256
    shard_size: int = 1000
    keep_features: int = KEEP_FEATURES
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    latency_batch: int = 64
    latency_repeats: int = 5

    def sampling(self) -> dict[str, Any]:
        """The keyword arguments of ``FlowPipeline.generate`` that pick the sampler."""
        schedule = schedule_from_text(self.schedule)
        fixed_budget = self.steps is None and isinstance(schedule, str) and self.solver not in ADAPTIVE_SOLVERS
        return {
            "solver": self.solver,
            "nfe": self.nfe if fixed_budget else None,
            "steps": self.steps,
            "schedule": schedule,
            "cfg": self.cfg,
        }


def _kept_mask(count: int, keep: int, seed: int) -> np.ndarray:
    """A boolean mask choosing ``min(keep, count)`` of ``count`` items at random (seeded)."""
    mask = np.zeros(count, dtype=bool)
    mask[np.random.default_rng(seed).choice(count, min(keep, count), replace=False)] = True
    return mask


def _extract(extractor: FeatureExtractor, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Features and predictions (or None) of uint8 images, batch by batch."""
    parts = [extractor(batch) for batch in images.split(FEATURE_BATCH)]
    features = torch.cat([f for f, _ in parts]).numpy()
    predictions = None if parts[0][1] is None else torch.cat([p for _, p in parts]).numpy()
    return features, predictions


def reference_statistics(
    data: ImageData,
    extractor: FeatureExtractor,
    source: dict[str, Any],
    keep: int = KEEP_FEATURES,
    seed: int = 0,
    progress: bool = False,
) -> ReferenceStats:
    """Feature statistics of a dataset under ``extractor``'s protocol; ``source`` describes the images."""
    stats, kept = FeatureStats(), []
    mask = _kept_mask(len(data), keep, seed)
    for start in tqdm(range(0, len(data), FEATURE_BATCH), desc="features", disable=not progress):
        features, _ = _extract(extractor, data.images[start : start + FEATURE_BATCH])
        stats.update(features)
        kept.append(features[mask[start : start + FEATURE_BATCH]])
    protocol = extractor.protocol(tuple(data.images.shape[1:]))
    source = {**source, "count": len(data), "fingerprint": data.fingerprint()}
    return ReferenceStats(stats.mean, stats.cov, np.concatenate(kept), stats.n, protocol, source)


def generated_features(
    pipe: FlowPipeline,
    extractor: FeatureExtractor,
    classifier: FeatureExtractor | None,
    indices: range,
    seed: int,
    batch_size: int,
    sampling: dict[str, Any],
) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Samples ``indices`` (noise seeded by ``(seed, i)``, class ``i mod num_classes``; ``sampling`` as in
    ``EvalSettings.sampling``): their features, predicted and requested classes (-1 where there are none), NFE
    and generation seconds; and the images."""
    labels = torch.arange(indices.start, indices.stop) % pipe.num_classes if pipe.num_classes else None
    synchronize(pipe.device)
    start = time.perf_counter()
    images, stats = pipe.generate(
        labels, n=len(indices), seed=seed, first_index=indices.start, batch_size=batch_size, **sampling
    )
    synchronize(pipe.device)
    seconds = time.perf_counter() - start
    pixels = quantise(images)
    features, predictions = _extract(extractor, pixels)
    if classifier is not None and classifier is not extractor:
        predictions = _extract(classifier, pixels)[1]
    missing = np.full(len(indices), -1, dtype=np.int64)
    return {
        "features": features.astype(np.float32),
        "predictions": missing if predictions is None else predictions.astype(np.int64),
        "labels": missing if labels is None else labels.numpy(),
        "nfe": np.array(stats.nfe),
        "seconds": np.array(seconds),
    }, images


class TrainingEvaluation:
    """The training-time evaluation (``eval`` config section): Fréchet distance and class accuracy of a
    pipeline's samples against reference statistics, checked against the protocol once, up front."""

    def __init__(self, features: str, reference: str, image_shape: tuple[int, int, int], device: torch.device):
        self.extractor = load_features(features, device)
        self.reference = load_reference(reference)
        check_protocol(self.reference, self.extractor.protocol(image_shape), reference)

    def __call__(self, pipe: FlowPipeline, n: int, seed: int, sampling: dict[str, Any]) -> dict[str, Any]:
        """``eval_fd``, ``eval_accuracy`` (None without a classifier), ``eval_samples``, ``eval_nfe`` and
        ``eval_seconds`` of ``n`` samples."""
        classifier = self.extractor if self.extractor.predicts_classes else None
        arrays, _ = generated_features(pipe, self.extractor, classifier, range(n), seed, 256, sampling)
        stats = FeatureStats().update(arrays["features"])
        return {
            "eval_fd": frechet_distance(stats.mean, stats.cov, self.reference.mu, self.reference.sigma),
            "eval_accuracy": class_accuracy(arrays["predictions"], arrays["labels"]),
            "eval_samples": n,
            "eval_nfe": int(arrays["nfe"]),
            "eval_seconds": round(float(arrays["seconds"]), 2),
        }


def distribution_metrics(
    reference: ReferenceStats,
    mu: np.ndarray,
    sigma: np.ndarray,
    features: np.ndarray,
    pr_k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    device: Any = "cpu",
) -> dict[str, float]:
    """FD of the moments ``mu``, ``sigma`` to the reference's; KID and precision/recall of the kept ``features``
    against the reference's kept features."""
    kid_mean, kid_std = kernel_distance(reference.features, features, kid_subsets, kid_subset_size, seed)
    precision, recall = precision_recall(reference.features, features, pr_k, device)
    return {
        "fd": frechet_distance(mu, sigma, reference.mu, reference.sigma),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }


def class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float | None:
    """Fraction of samples classified as requested; None without predictions or labels."""
    if (predictions < 0).any() or (labels < 0).any():
        return None
    return float((predictions == labels).mean())


def measure_latency(pipe: FlowPipeline, settings: EvalSettings, decode: bool, warmup: int = 2) -> dict[str, Any]:
    """Median wall time of sampling one batch of ``latency_batch`` (device synchronised; after ``warmup`` runs),
    with or without decoding to images on the host."""
    batch, labels = settings.latency_batch, pipe.cycled_labels(settings.latency_batch)

    def run() -> object:
        return pipe.latents(labels, n=batch, seed=settings.seed, batch_size=batch, decode=decode, **settings.sampling())

    median = median_seconds(run, pipe.device, settings.latency_repeats, warmup)
    return {
        "batch_size": batch,
        "repeats": settings.latency_repeats,
        "warmup": warmup,
        "median_s": median,
        "ms_per_sample": 1000 * median / batch,
    }


class Evaluation:
    """One ``latentfm eval`` run writing into ``out``: shards of sample features, then the report."""

    def __init__(self, settings: EvalSettings, out: str | Path, device: str = "auto", progress: bool = True):
        if settings.n < 2 or min(settings.shard_size, settings.batch_size, settings.keep_features) < 1:
            raise LatentFMError("--n must be at least 2, --shard-size, --batch-size and --keep-features at least 1")
        self.settings, self.out, self.progress = settings, Path(out), progress
        self.dist = setup_distributed(device)
        self.pipe = FlowPipeline.from_checkpoint(settings.checkpoint, device=self.dist.device)
        self.extractor = load_features(settings.features, self.dist.device)
        self.classifier = self._classifier()
        self.reference = load_reference(settings.reference)
        self.protocol = self.extractor.protocol(self.pipe.image_shape)
        check_protocol(self.reference, self.protocol, settings.reference)
        for network in (self.extractor, self.classifier):
            if network is not None:
                network.check_images(self.pipe.image_shape)
        self.record = self._run_record()

    def _classifier(self) -> FeatureExtractor | None:
        if self.settings.classifier:
            classifier = load_features(self.settings.classifier, self.dist.device)
            if not classifier.predicts_classes:
                raise LatentFMError(f"--classifier {self.settings.classifier} is not a latentfm classifier")
            return classifier
        return self.extractor if self.extractor.predicts_classes else None

    def _run_record(self) -> dict[str, Any]:
        """What a resumed run must share with the shards already written (settings that only change speed
        excepted)."""
        adaptive = self.settings.solver in ADAPTIVE_SOLVERS  # its steps depend on the whole batch
        free = () if adaptive else SPEED_SETTINGS
        settings = {k: v for k, v in asdict(self.settings).items() if k not in free}
        schedule = Path(self.settings.schedule)
        return {
            **settings,
            "checkpoint_dir": str(Path(self.settings.checkpoint).resolve()),
            "model_sha256": weights_sha256(self.pipe.model),
            "features_sha256": self.extractor.weights_sha256,
            "classifier_sha256": None if self.classifier is None else self.classifier.weights_sha256,
            "schedule_sha256": hashlib.sha256(schedule.read_bytes()).hexdigest() if schedule.is_file() else None,
        }

    def _start(self) -> None:
        """Write ``run.json``, or check that an unfinished run in ``out`` was started with the same settings."""
        record, path = self.record, self.out / "run.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            for key in record:
                if saved.get(key) != record[key]:
                    raise LatentFMError(
                        f"{self.out} holds an evaluation with {key} = {saved.get(key)!r}, not {record[key]!r}: "
                        "use another --out, or the same settings to resume it"
                    )
        elif self.dist.is_main:
            write_bytes_atomic(path, json.dumps(record, indent=1).encode())

    def _shard_path(self, start: int) -> Path:
        return self.out / "shards" / f"{start:08d}.npz"

    def generate(self) -> None:
        """Write every missing shard of this rank (shard ``k`` goes to rank ``k mod world_size``)."""
        starts = list(range(0, self.settings.n, self.settings.shard_size))[self.dist.rank :: self.dist.world_size]
        todo = [s for s in starts if not self._shard_path(s).is_file()]
        for start in tqdm(todo, desc=f"shards (rank {self.dist.rank})", disable=not self.progress):
            indices = range(start, min(start + self.settings.shard_size, self.settings.n))
            arrays, images = generated_features(
                self.pipe,
                self.extractor,
                self.classifier,
                indices,
                self.settings.seed,
                self.settings.batch_size,
                self.settings.sampling(),
            )
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            write_bytes_atomic(self._shard_path(start), buffer.getvalue())
            if start == 0:
                save_grid(images[:100], self.out / "samples.png", columns=10)

    def _merged(self) -> tuple[FeatureStats, np.ndarray, dict[str, Any]]:
        """Moments of all shards, the kept features, accuracy, NFE and generation seconds."""
        stats, kept, predictions, labels, seconds, nfes = FeatureStats(), [], [], [], 0.0, []
        mask = _kept_mask(self.settings.n, self.settings.keep_features, self.settings.seed)
        for start in range(0, self.settings.n, self.settings.shard_size):
            with np.load(self._shard_path(start), allow_pickle=False) as shard:
                features = shard["features"]
                stats.update(features)
                kept.append(features[mask[start : start + len(features)]])
                predictions.append(shard["predictions"])
                labels.append(shard["labels"])
                seconds += float(shard["seconds"])
                nfes.append(int(shard["nfe"]))
        if len(set(nfes)) != 1 and self.settings.solver not in ADAPTIVE_SOLVERS:
            raise LatentFMError(f"the shards in {self.out} were sampled with different NFE {sorted(set(nfes))}")
        accuracy = class_accuracy(np.concatenate(predictions), np.concatenate(labels))
        nfe = nfes[0] if len(set(nfes)) == 1 else float(np.mean(nfes))  # adaptive: the mean over shards
        return stats, np.concatenate(kept), {"accuracy": accuracy, "nfe": nfe, "generation_s": seconds}

    def run(self) -> dict[str, Any] | None:
        """Generate (resuming), then on the main rank compute the metrics and latency and write the reports."""
        self._start()
        barrier()
        self.generate()
        barrier()
        if not self.dist.is_main:
            return None
        stats, features, summary = self._merged()
        s = self.settings
        metrics = distribution_metrics(
            self.reference,
            stats.mean,
            stats.cov,
            features,
            s.pr_k,
            s.kid_subsets,
            s.kid_subset_size,
            s.seed,
            self.dist.device,
        )
        report = {
            "metrics": {**metrics, "accuracy": summary["accuracy"]},
            "nfe": summary["nfe"],
            "generation_s_per_1000": 1000 * summary["generation_s"] / self.settings.n,
            "latency": {
                "sampling_only": measure_latency(self.pipe, self.settings, decode=False),
                "with_decode": measure_latency(self.pipe, self.settings, decode=True),
            },
            "protocol": {
                **self.protocol,
                "generated": self.settings.n,
                "reference_count": self.reference.count,
                "kept_features": [len(self.reference.features), len(features)],
                "labels": "sample i asks for class i mod num_classes" if self.pipe.num_classes else "unconditional",
                "noise": "sample i starts from noise seeded by (seed, i)",
            },
            "reference": {"path": self.settings.reference, **self.reference.source},
            "settings": asdict(self.settings),
            "identity": {k: v for k, v in self.record.items() if k.endswith(("_dir", "_sha256"))},
            "machine": _machine(self.dist.device),
            "world_size": self.dist.world_size,
        }
        write_bytes_atomic(self.out / "report.json", json.dumps(report, indent=1).encode())
        write_bytes_atomic(self.out / "report.md", markdown_report(report).encode())
        return report


def _cpu_name() -> str:
    """The CPU model as Linux names it, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def _machine(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return f"{name} ({device.type}, {torch.get_num_threads()} CPU threads), torch {torch.__version__}"


def markdown_report(report: dict[str, Any]) -> str:
    """A one-page Markdown summary of an evaluation report."""
    s, m = report["settings"], report["metrics"]
    accuracy = "n/a" if m["accuracy"] is None else f"{100 * m['accuracy']:.2f}%"
    lines = [
        f"# Evaluation of {s['checkpoint']}",
        "",
        f"{s['n']} samples, solver {s['solver']}, schedule {s['schedule']}, {report['nfe']} NFE, guidance {s['cfg']}, "
        f"seed {s['seed']}; reference {s['reference']} ({report['protocol']['reference_count']} images).",
        "",
        "| FD | KID (×10³) | precision | recall | class accuracy | NFE | s / 1000 samples |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {m['fd']:.4g} | {1000 * m['kid']:.3g} ± {1000 * m['kid_std']:.2g} | {m['precision']:.3f} | "
        f"{m['recall']:.3f} | {accuracy} | {report['nfe']} | {report['generation_s_per_1000']:.2f} |",
        "",
        "Latency (median of repeats after warm-up, device synchronised):",
        "",
    ]
    for name, latency in report["latency"].items():
        lines.append(
            f"- {name.replace('_', ' ')}: {1000 * latency['median_s']:.1f} ms per batch of {latency['batch_size']} "
            f"({latency['ms_per_sample']:.2f} ms per sample, {latency['repeats']} repeats)"
        )
    lines += ["", "Protocol:", ""] + [f"- {key}: {value}" for key, value in report["protocol"].items()]
    lines += ["", f"Machine: {report['machine']}; {report['world_size']} rank(s).", ""]
    return "\n".join(lines)
