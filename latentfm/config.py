"""Typed run configuration: YAML files of dataclasses with dotted command-line overrides.

Unknown keys and values of the wrong type are errors that name the key; nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from latentfm.errors import LatentFMError
from latentfm.sampling.settings import SamplerSettings


@dataclass
class DataConfig:
    """Where the training images (see ``latentfm.data.load_dataset``) or cached latents come from."""

    dataset: str = "digits"  # digits | idx | folder | npz
    path: str | None = None
    split: str = "train"
    image_size: int | None = None
    channels: int | None = None
    hflip: bool = False
    skip_corrupt: bool = False
    latent_cache: str | None = None  # a `latentfm encode` directory; training then reads latents from it
    # upsample task, upsample_low_source=cache: the same images down-sampled, `latentfm encode --downsample F`
    low_latent_cache: str | None = None
    maps_path: str | None = None  # folder data: a folder of class-id PNG maps named like the images (semantic task)
    workers: int | None = None  # DataLoader processes that decode images (None: latentfm.data.loader.default_workers)
    fingerprint: str = "index"  # index: paths, sizes and labels of a folder's files | content: every byte hashed


@dataclass
class AutoencoderConfig:
    """Which autoencoder maps images to latents, and how latents are normalised.

    ``kind`` selects one: ``identity`` (pixel space), ``taesd`` (``encoder`` and ``decoder`` weight files),
    ``kl`` (``checkpoint``: a ``latentfm train-autoencoder`` run or checkpoint directory) or ``diffusers``
    (``path``: a local AutoencoderKL directory or hub-cache id, optional ``subfolder``).
    ``normalize`` is ``channel``, ``global``, ``none`` or ``pretrained`` (the autoencoder's published
    shift and scale, diffusers only).
    """

    kind: str = "identity"
    encoder: str | None = None
    decoder: str | None = None
    checkpoint: str | None = None
    path: str | None = None
    subfolder: str | None = None
    posterior: str = "mean"  # mean | sample
    normalize: str = "channel"
    norm_batches: int = 20


@dataclass
class KLModelConfig:
    """Shape of a trainable KL autoencoder; its downsampling factor is ``2 ** (len(channel_mult) - 1)``."""

    channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    latent_channels: int = 4
    groups: int = 8


@dataclass
class AutoencoderLossConfig:
    """Reconstruction (L1 and optional L2), KL and optional patch-GAN terms of autoencoder training."""

    l1_weight: float = 1.0
    l2_weight: float = 0.0
    kl_weight: float = 1e-6
    gan_weight: float = 0.0
    gan_start: int = 0
    disc_channels: int = 64


@dataclass
class ModelConfig:
    """The backbone: ``arch`` ``dit`` or ``unet``. ``size`` picks a named size (``DiT-S/2``, ``ADM-64``, ...; see
    ``latentfm.models.build.MODEL_SIZES``) and overrides the shape fields of its architecture."""

    arch: str = "dit"
    size: str | None = None
    class_dropout: float = 0.1
    grad_checkpointing: bool = False
    step_input: bool = False  # a few-step model's jump (Condition.step) as an input: set by fewstep.objective=shortcut
    # DiT
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    # UNet (ADM); attention_resolutions are feature-map widths in pixels
    model_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [16])
    num_head_channels: int = 64
    dropout: float = 0.0
    resblock_updown: bool = False
    channels_last: bool = False


@dataclass
class FlowConfig:
    """The probability path and the training distribution of t."""

    path: str = "linear"  # linear | cosine
    sigma_min: float = 0.0
    t_sampler: str = "uniform"  # uniform | logit_normal | mode
    t_loc: float = 0.0
    t_scale: float = 1.0
    coupling: str = "independent"  # independent | ot (minibatch optimal transport)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then a constant or cosine learning rate."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0


@dataclass
class TaskConfig:
    """What the model generates from (``latentfm.tasks``): ``class`` (a label or none), ``inpaint`` (a masked
    image, and a label or none), ``semantic`` (a map of class ids, and a label or none) or ``upsample`` (a
    low-resolution image or latent).

    ``mask_*`` set the inpaint task's training masks (``latentfm.data.masks.MaskSettings``). ``map_source`` is
    where the semantic task's maps come from: ``intensity`` derives them from each image (class i: grey levels
    from ``map_bands[i-1]`` up to ``map_bands[i]``, in 8-bit steps), ``data`` reads ``data.maps_path`` (PNGs of
    ``map_classes`` class ids). ``map_channels`` is the width of the learned rescaler's output, ``map_dropout``
    the probability of training on the empty map (for guidance on the map). ``upsample_*`` set the upsample task
    (``latentfm.tasks.upsample``): factor 2 or 4, how the low-resolution input is made and brought back up, how
    the source is noised, and whether labels are used.
    """

    kind: str = "class"
    mask_kinds: list[str] = field(default_factory=lambda: ["box", "stroke"])
    mask_min_fraction: float = 0.1
    mask_max_fraction: float = 0.5
    mask_everything_probability: float = 0.05
    map_source: str = "intensity"
    map_bands: list[int] = field(default_factory=lambda: [32, 128])
    map_classes: int = 0
    map_channels: int = 8
    map_dropout: float = 0.0
    upsample_factor: int = 2
    upsample_mode: str = "bilinear"
    upsample_low_source: str = "image"
    upsample_noise: str = "diffusion"
    upsample_diffusion_step: int = 400
    upsample_sigma: float = 0.1
    upsample_labels: bool = False


@dataclass
class EvalConfig:
    """Training-time evaluation: every ``every`` steps (0: never) the main rank draws ``samples`` EMA samples with
    the ``sample`` section's solver, NFE and guidance (sample i: class i mod num_classes, noise (train.seed, i)),
    and logs their Fréchet distance to ``reference`` (a ``latentfm stats`` file made with ``features``) and,
    when ``features`` is a classifier, their class accuracy, to ``metrics.jsonl``."""

    every: int = 0
    samples: int = 1000
    features: str | None = None
    reference: str | None = None


@dataclass
class RefinerConfig:
    """FlowTurbo's velocity refiner (``latentfm train-refiner``): a small network predicting how the teacher's
    velocity changes over a small step, ``v(x', t + Δ) ≈ v + refiner(x', t + Δ | v)``.

    ``arch`` ``dit`` (a few DiT blocks of width ``hidden_size`` on ``patch_size`` patches; None: a DiT teacher's,
    4 for a UNet teacher) or ``unet`` (a one-level UNet of ``model_channels`` at full resolution, slower).
    Training draws ``Δ ~ U(0, delta_max)`` per sample and drops labels with probability ``label_dropout`` for
    the input velocity, the target and the refiner alike. ``teacher``: the teacher's run or checkpoint directory.
    """

    teacher: str | None = None
    arch: str = "dit"
    hidden_size: int = 64
    depth: int = 1
    num_heads: int = 2
    patch_size: int | None = None
    model_channels: int = 32
    num_res_blocks: int = 1
    delta_max: float = 0.25
    label_dropout: float = 0.1


@dataclass
class FewStepConfig:
    """Few-step tuning of a trained flow model (``latentfm train-fewstep``): the tuned model samples in 1-4 calls
    with ``--solver fewstep``. ``teacher``: the flow model's run or checkpoint directory, whose EMA weights start
    the tuning.

    ``objective``: ``shortcut`` (the default; shortcut models: the network gets its jump ``d`` as an input,
    ``model.step_input``; on ``shortcut_fraction`` of the batch a jump ``d = 2^-k`` down to ``shortcut_min_step``
    learns the mean of two half jumps of the same network, the rest keeps flow matching with ``d = 0``) or
    ``consistency`` (Easy Consistency Tuning in velocity form: the network at ``x_t`` learns ``g u + (1 - g)
    v(x_r, r)``, its own velocity under no_grad at ``x_r = x_t + (r - t) u``, ``r = t + g (1 - t)``, ``u`` the
    path's velocity; ``g`` falls geometrically from ``gap_start`` to ``gap_end`` over the run, so it starts as
    flow matching). On the Fashion-MNIST recipe at equal CPU time shortcut reached FD 0.196 at 2 NFE,
    consistency 0.556 (BENCHMARKS.md). ``max_nfe``: the most steps ``--solver fewstep`` may take.
    """

    teacher: str | None = None
    objective: str = "shortcut"  # shortcut | consistency (BENCHMARKS.md, "One and two steps")
    max_nfe: int = 8
    gap_start: float = 0.5
    gap_end: float = 0.01
    shortcut_fraction: float = 0.25
    shortcut_min_step: float = 0.015625  # 1/64


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 1000
    batch_size: int = 128
    ema_decay: float = 0.999
    ema_warmup: bool = True
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    out_dir: str = "runs/default"
    log_every: int = 50
    sample_every: int = 0  # a grid of sample_per_class samples per class every this many steps (0: never)
    sample_per_class: int = 8
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 10  # non-finite steps in a row (skipped) before the run stops; 0: never stops


@dataclass
class Config:
    """A whole training run."""

    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sample: SamplerSettings = field(default_factory=SamplerSettings)  # the recipe's sampler (sampling/settings.py)
    eval: EvalConfig = field(default_factory=EvalConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    fewstep: FewStepConfig = field(default_factory=FewStepConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class AutoencoderRunConfig:
    """A whole ``latentfm train-autoencoder`` run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: KLModelConfig = field(default_factory=KLModelConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp``; raises LatentFMError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise LatentFMError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise LatentFMError(f"config key {key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, str):
        value = _parse_float(value, key)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (bool, str) and isinstance(value, tp):
        return value
    raise LatentFMError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")


def _parse_float(value: str, key: str) -> float:
    """YAML 1.1 reads ``1e-4`` as a string; accept it as the float it plainly is."""
    try:
        return float(value)
    except ValueError:
        raise LatentFMError(f"config key {key}: expected float, got {value!r}") from None


# The values a number may take, by field name wherever it appears (a refiner's depth as a model's); the
# finer checks that need the data or the model (a batch larger than the data) happen where those are known.
AT_LEAST_ONE = {
    "steps", "batch_size", "hidden_size", "depth", "num_heads", "patch_size", "model_channels", "num_res_blocks",
    "num_head_channels", "channels", "latent_channels", "groups", "disc_channels", "map_channels",
    "sample_per_class", "samples", "norm_batches", "log_every", "image_size", "upsample_factor",
}  # fmt: skip
AT_LEAST_ZERO = {
    "sample_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps", "warmup_steps", "gan_start",
    "every", "map_classes", "weight_decay", "kl_weight", "gan_weight", "sigma_min", "upsample_diffusion_step",
    "upsample_sigma", "grad_clip", "seed", "workers",
}  # fmt: skip
ABOVE_ZERO = {"lr", "mlp_ratio", "t_scale", "delta_max", "gap_start", "gap_end", "shortcut_min_step", "max_nfe"}
FRACTIONS = {
    "class_dropout", "dropout", "ema_decay", "min_lr_ratio", "mask_min_fraction", "mask_max_fraction",
    "mask_everything_probability", "map_dropout", "label_dropout", "delta_max", "gap_start", "gap_end",
    "shortcut_fraction", "shortcut_min_step",
}  # fmt: skip


def _check_range(name: str, value: Any, key: str) -> None:
    """Refuse a number its field cannot hold (e.g. ``train.steps=0``), naming the key and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise LatentFMError(f"config key {key}={value}: must be a finite number")
    for names, ok, allowed in (
        (AT_LEAST_ONE, value >= 1, "at least 1"),
        (AT_LEAST_ZERO, value >= 0, "at least 0"),
        (ABOVE_ZERO, value > 0, "above 0"),
        (FRACTIONS, 0 <= value <= 1, "between 0 and 1"),
    ):
        if name in names and not ok:
            raise LatentFMError(f"config key {key}={value}: must be {allowed}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise LatentFMError(f"config key {prefix or '<root>'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names, key=str)
    if unknown:
        shown = unknown[0] if str(unknown[0]).isidentifier() else repr(unknown[0])
        raise LatentFMError(f"unknown config key {prefix}{shown}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if hasattr(tp, "from_values"):  # a section that reads itself (the sampler)
            kwargs[name] = tp.from_values(value, prefix + name)
        elif dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
            _check_range(name, kwargs[name], prefix + name)
    return cls(**kwargs)


def _apply_override(tree: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise LatentFMError(f"override {override!r} must look like key=value, e.g. train.steps=100")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(part.isidentifier() for part in parts):
        raise LatentFMError(f"override {override!r}: {key!r} is not a dotted config key such as train.steps")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LatentFMError(f"override {override!r}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise LatentFMError(
            f"override {override!r}: {raw!r} is not a YAML value; quote a text that starts with a sign (key='*text')"
        ) from None


def config_from_dict(values: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), cls: type = Config) -> Any:
    """A validated config of class ``cls`` (a run Config by default) from nested values plus overrides."""
    tree = _as_tree(values)
    for override in overrides:
        _apply_override(tree, override)
    return _build(cls, _moved_keys(tree), "")


# Keys that moved: (section, key) -> (section, key). Configs and checkpoints written before keep loading.
MOVED_KEYS = {("sample", "per_class"): ("train", "sample_per_class")}


def _moved_keys(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` with each key of ``MOVED_KEYS`` under its new name (a value given under both names wins new)."""
    for (section, key), (new_section, new_key) in MOVED_KEYS.items():
        old = tree.get(section)
        if isinstance(old, dict) and key in old:
            value = old.pop(key)
            target = tree.setdefault(new_section, {})
            if isinstance(target, dict):
                target.setdefault(new_key, value)
    return tree


def _as_tree(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _as_tree(v) if isinstance(v, dict) else v for k, v in (values or {}).items()}


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), cls: type = Config) -> Any:
    """Read a YAML config file of class ``cls`` (defaults when ``path`` is None) and apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LatentFMError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise LatentFMError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise LatentFMError(f"config file {path} must hold a mapping of sections")
    return config_from_dict(values, overrides, cls)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested values (tuples as lists) suitable for YAML or JSON, read back by ``config_from_dict``."""
    values = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if hasattr(value, "to_values"):
            values[item.name] = value.to_values()
        elif dataclasses.is_dataclass(value):
            values[item.name] = config_to_dict(value)
        else:
            values[item.name] = _as_lists(value)
    return values


def _as_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def recipe_path(name: str) -> Path:
    """The path of a built-in YAML recipe shipped in ``latentfm/configs``, e.g. ``digits``."""
    return Path(str(resources.files("latentfm") / "configs" / f"{name}.yaml"))
