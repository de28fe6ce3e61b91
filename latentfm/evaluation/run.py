"""One ``latentfm eval`` run: shards of sample features across ``torchrun`` ranks (resumable), then the
metrics, the latency and the report."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from latentfm.atomic import remove_leftovers, write_bytes_atomic
from latentfm.checkpoint import weights_sha256
from latentfm.distributed import barrier, setup_distributed
from latentfm.errors import LatentFMError, first_difference
from latentfm.evaluation.features import (
    class_accuracy,
    distribution_metrics,
    generated_features,
    kept_mask,
)
from latentfm.evaluation.report import machine_description, write_report
from latentfm.evaluation.settings import SPEED_SETTINGS, EvalSettings
from latentfm.image_io import save_grid
from latentfm.metrics.features import FeatureExtractor, load_features
from latentfm.metrics.frechet import FeatureStats
from latentfm.metrics.latency import median_seconds
from latentfm.metrics.reference import check_protocol, load_reference
from latentfm.pipeline import FlowPipeline
from latentfm.progress import progress_bar


def measure_latency(pipe: FlowPipeline, settings: EvalSettings, decode: bool, warmup: int = 2) -> dict[str, Any]:
    """Median wall time of sampling one batch of ``latency_batch`` (device synchronised; after ``warmup`` runs),
    with or without decoding to images on the host."""
    batch, labels = settings.latency_batch, pipe.cycled_labels(settings.latency_batch)

    def run() -> object:
        return pipe.latents(
            labels, n=batch, seed=settings.seed, settings=settings.sampler, batch_size=batch, decode=decode
        )

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
        self.dist = setup_distributed(device, "--device")
        self.pipe = FlowPipeline.from_checkpoint(settings.checkpoint, device=self.dist.device)
        if settings.refiner:
            self.pipe = self.pipe.with_refiner(settings.refiner)
        self.settings = settings = replace(settings, sampler=settings.sampler or self.pipe.sampler)
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
        free = () if self.settings.sampler.adaptive else SPEED_SETTINGS  # adaptive steps depend on the whole batch
        settings = {k: v for k, v in self.settings.to_values().items() if k not in free}
        sampler = {f"sampler.{k}": v for k, v in settings.pop("sampler").items()}  # a refusal names the field
        return {
            **settings,
            **sampler,
            "checkpoint_dir": str(Path(self.settings.checkpoint).resolve()),
            "model_sha256": weights_sha256(self.pipe.model),
            "features_sha256": self.extractor.weights_sha256,
            "classifier_sha256": None if self.classifier is None else self.classifier.weights_sha256,
        }

    def _start(self) -> None:
        """Write ``run.json``, or check that an unfinished run in ``out`` was started with the same settings."""
        record, path = self.record, self.out / "run.json"
        if path.is_file():
            difference = first_difference(json.loads(path.read_text()), record, keys=list(record))
            if difference is not None:
                raise LatentFMError(
                    f"{self.out} holds an evaluation with {difference.key} = {difference.old!r}, not "
                    f"{difference.new!r}: use another --out, or the same settings to resume it"
                )
        elif self.dist.is_main:
            write_bytes_atomic(path, json.dumps(record, indent=1).encode())
        if self.dist.is_main:  # what killed shard writes left; the other ranks wait for _start to end
            remove_leftovers(self.out / "shards")

    def _shard_path(self, start: int) -> Path:
        return self.out / "shards" / f"{start:08d}.npz"

    def generate(self) -> None:
        """Write every missing shard of this rank (shard ``k`` goes to rank ``k mod world_size``)."""
        starts = list(range(0, self.settings.n, self.settings.shard_size))[self.dist.rank :: self.dist.world_size]
        todo = [s for s in starts if not self._shard_path(s).is_file()]
        for start in progress_bar(todo, desc=f"shards (rank {self.dist.rank})", show=self.progress):
            indices = range(start, min(start + self.settings.shard_size, self.settings.n))
            arrays, images = generated_features(
                self.pipe,
                self.extractor,
                self.classifier,
                indices,
                self.settings.seed,
                self.settings.batch_size,
                self.settings.sampler,
            )
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            write_bytes_atomic(self._shard_path(start), buffer.getvalue())
            if start == 0:
                save_grid(images[:100], self.out / "samples.png", columns=10)

    def _merged(self) -> tuple[FeatureStats, np.ndarray, dict[str, Any]]:
        """Moments of all shards, the kept features, accuracy, NFE and generation seconds."""
        stats, kept, predictions, labels, seconds, nfes = FeatureStats(), [], [], [], 0.0, []
        mask = kept_mask(self.settings.n, self.settings.keep_features, self.settings.seed)
        for start in range(0, self.settings.n, self.settings.shard_size):
            with np.load(self._shard_path(start), allow_pickle=False) as shard:
                features = shard["features"]
                stats.update(features)
                kept.append(features[mask[start : start + len(features)]])
                predictions.append(shard["predictions"])
                labels.append(shard["labels"])
                seconds += float(shard["seconds"])
                nfes.append(int(shard["nfe"]))
        if len(set(nfes)) != 1 and not self.settings.sampler.adaptive:
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
            "settings": self.settings.to_values(),
            "identity": {k: v for k, v in self.record.items() if k.endswith(("_dir", "_sha256"))},
            "machine": machine_description(self.dist.device),
            "world_size": self.dist.world_size,
        }
        write_report(self.out, report)
        return report
