"""The inpaint and semantic tasks: training, checkpoints, sampling, guidance and their commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentfm import checkpoint as ckpt
from latentfm.cli import main
from latentfm.condition import Condition
from latentfm.config import AutoencoderRunConfig, TaskConfig, load_config
from latentfm.data import load_dataset
from latentfm.data.masks import MaskSettings
from latentfm.errors import LatentFMError
from latentfm.image_io import quantise
from latentfm.models.rescaler import MapRescaler
from latentfm.pipeline import FlowPipeline
from latentfm.seeding import derive_seed
from latentfm.tasks import InpaintTask, SemanticTask, TrainingBatch, build_task, intensity_maps
from latentfm.training.autoencoder_trainer import AutoencoderTrainer
from latentfm.training.loop import TASK
from latentfm.training.trainer import Trainer

from ..conftest import TINY, TINY_AE

INPAINT = [*TINY, "task.kind=inpaint", "flow.coupling=independent", "train.steps=4", "train.sample_per_class=1"]
SEMANTIC = [*TINY, "task.kind=semantic", "task.map_dropout=0.2", "train.steps=4", "train.sample_per_class=1"]
UNET = ["model.arch=unet", "model.model_channels=32", "model.channel_mult=[1,2]", "model.attention_resolutions=[]"]


@pytest.fixture(scope="module")
def inpaint_run(tmp_path_factory):
    """A tiny inpainting DiT on digits (8x8, class-conditional), with a sample grid."""
    run = tmp_path_factory.mktemp("inpaint") / "run"
    Trainer(load_config(None, [*INPAINT, "train.sample_every=4", f"train.out_dir={run}"])).run()
    return run


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory):
    """A tiny semantic DiT on digits with intensity maps and map dropout."""
    run = tmp_path_factory.mktemp("semantic") / "run"
    Trainer(load_config(None, [*SEMANTIC, "train.sample_every=4", f"train.out_dir={run}"])).run()
    return run


def digit_and_box(index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Test digit ``index`` in [-1, 1] and a centred 4x4 box mask."""
    image = load_dataset("digits", split="test").batch(torch.tensor([index]))[0][0]
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:6, 2:6] = 1
    return image, mask


def test_inpainting_keeps_the_known_pixels_exactly_and_varies_inside(inpaint_run):
    assert (inpaint_run / "samples" / "step_00000004.png").is_file()
    pipe = FlowPipeline.from_checkpoint(inpaint_run)
    image, mask = digit_and_box()
    completions, stats = pipe.inpaint(image, mask, n=3, seed=1, settings=pipe.sampler.with_(nfe=4))
    known = mask[0] == 0
    assert completions.shape == (3, 1, 8, 8) and stats.nfe == 4
    for completion in quantise(completions):
        assert torch.equal(completion[0][known], quantise(image)[0][known])
    inside = quantise(completions)[:, 0][:, ~known]
    assert not torch.equal(inside[0], inside[1]) and not torch.equal(inside[1], inside[2])
    again, _ = pipe.inpaint(image, mask, n=3, seed=1, settings=pipe.sampler.with_(nfe=4), batch_size=2)
    torch.testing.assert_close(again, completions)  # seeded per sample, whatever the batch size


def test_inpainting_refuses_wrong_inputs(inpaint_run):
    pipe = FlowPipeline.from_checkpoint(inpaint_run)
    image, mask = digit_and_box()
    with pytest.raises(LatentFMError, match="values other than 0 and 1"):
        pipe.inpaint(image, mask * 0.5, n=1)
    with pytest.raises(LatentFMError, match="the model makes 1x8x8"):
        pipe.inpaint(torch.zeros(1, 9, 9), torch.zeros(1, 9, 9), n=1)
    with pytest.raises(LatentFMError, match="takes image and mask, not map"):
        pipe.generate(None, n=1, semantic=torch.zeros(1, 8, 8, dtype=torch.long))


def test_an_inpainting_model_samples_from_nothing_with_the_everything_mask(inpaint_run):
    pipe = FlowPipeline.from_checkpoint(inpaint_run)
    images, _ = pipe.generate(torch.tensor([1, 2]), settings=pipe.sampler.with_(nfe=2))
    assert images.shape == (2, 1, 8, 8)
    never = InpaintTask(MaskSettings(everything_probability=0.0))
    with pytest.raises(LatentFMError, match="never trained without an image"):
        never.sampling_condition(None, None, lambda x: x, (1, 1, 8, 8))


def test_guidance_drops_only_the_labels_of_an_inpainting_condition():
    task = InpaintTask(MaskSettings())
    cond = Condition(labels=torch.tensor([3, 4]), concat=torch.randn(2, 2, 8, 8))
    uncond = task.unconditional(cond, null_label=10)
    assert uncond.labels.tolist() == [10, 10] and torch.equal(uncond.concat, cond.concat)
    assert task.unconditional(Condition(concat=cond.concat), null_label=10) is None


def test_training_masks_depend_only_on_each_samples_seed_as_across_ranks(tiny_overrides):
    task = InpaintTask(MaskSettings())
    images, seeds = torch.zeros(5, 1, 16, 16), [11, 12, 13, 14, 15]
    whole = task.training_masks(images, seeds)
    parts = torch.cat([task.training_masks(images[:2], seeds[:2]), task.training_masks(images[2:], seeds[2:])])
    assert torch.equal(whole, parts) and not torch.equal(whole[0], whole[1])
    big = task.training_masks(torch.zeros(2, 1, 256, 256), seeds[:2])  # drawn on a 64 grid, scaled up
    assert big.shape == (2, 1, 256, 256) and set(big.unique().tolist()) <= {0.0, 1.0}
    trainer = Trainer(load_config(None, [*tiny_overrides, "task.kind=inpaint"]))
    batch = trainer.training_batch(3)
    assert batch.seeds == [derive_seed(trainer.config.train.seed, TASK, 3, row) for row in range(32)]
    assert batch.rows.tolist() == list(range(32)) and batch.images.shape == (32, 1, 8, 8)


@pytest.fixture(scope="module")
def kl_run(tmp_path_factory):
    """A KL autoencoder trained for two steps on digits (factor 2, 2 latent channels)."""
    run = tmp_path_factory.mktemp("kl") / "run"
    AutoencoderTrainer(
        load_config(None, [*TINY_AE, f"train.out_dir={run}", "train.steps=2"], cls=AutoencoderRunConfig)
    ).run()
    return run


@pytest.mark.parametrize("task", ["inpaint", "semantic"])
def test_latent_space_unet_tasks_train_and_sample(task, kl_run, tmp_path):
    overrides = [*TINY, *UNET, f"task.kind={task}", "train.steps=2", f"train.out_dir={tmp_path / 'run'}"]
    overrides += ["autoencoder.kind=kl", f"autoencoder.checkpoint={kl_run}", "task.map_dropout=0.1"]
    trainer = Trainer(load_config(None, overrides))
    assert trainer.latent_shape == (2, 4, 4)
    trainer.run()
    pipe = FlowPipeline.from_checkpoint(tmp_path / "run")
    image, mask = digit_and_box()
    if task == "inpaint":
        assert trainer.model.concat_channels == 3  # the mask and the masked image's 2 latent channels
        images, _ = pipe.inpaint(image, mask, n=2, settings=pipe.sampler.with_(nfe=2))
    else:
        assert trainer.model.concat_encoder is not None  # one-hot 8x8 maps to 4x4 latent features
        images, _ = pipe.generate(None, n=2, semantic=intensity_maps(image[None], [32, 128]).repeat(2, 1, 1, 1))
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


def test_tasks_that_need_images_refuse_missing_images():
    batch = TrainingBatch(torch.zeros(2, 1, 8, 8), None)
    with pytest.raises(LatentFMError, match="unset data.latent_cache"):
        build_task(TaskConfig(kind="inpaint")).training_condition(batch, lambda x: x)
    with pytest.raises(LatentFMError, match="set data.maps_path"):
        build_task(TaskConfig(kind="semantic", map_source="data", map_classes=3)).training_condition(batch, None)


def test_semantic_rescaler_is_trained_and_saved_with_the_model(semantic_run):
    weights = ckpt.read_tensors(ckpt.resolve_checkpoint(semantic_run), "ema")
    assert any(key.startswith("concat_encoder.") for key in weights)
    pipe = FlowPipeline.from_checkpoint(semantic_run)
    image = load_dataset("digits", split="test").batch(torch.arange(2))[0]
    maps = intensity_maps(image, [32, 128])
    images, _ = pipe.generate(torch.tensor([0, 1]), semantic=maps, settings=pipe.sampler.with_(nfe=2))
    # the empty map, learned with map dropout
    unmapped, _ = pipe.generate(torch.tensor([0, 1]), settings=pipe.sampler.with_(nfe=2))
    assert images.shape == unmapped.shape == (2, 1, 8, 8) and not torch.equal(images, unmapped)
    with pytest.raises(LatentFMError, match="holds class id 5"):
        pipe.generate(None, n=1, semantic=torch.full((1, 8, 8), 5))


def test_semantic_guidance_drops_the_map_only_with_map_dropout():
    cond = Condition(labels=None, concat=torch.ones(1, 3, 4, 4))
    assert SemanticTask("intensity", [32, 128]).unconditional(cond, 10) is None
    dropped = SemanticTask("intensity", [32, 128], dropout=0.1).unconditional(cond, 10)
    assert dropped.concat.abs().sum() == 0 and dropped.labels is None
    with pytest.raises(LatentFMError, match="never trained without a map"):
        SemanticTask("intensity", [32, 128]).sampling_condition(None, None, None, (1, 1, 4, 4))


def test_map_rescaler_shapes_and_dropout():
    rescaler = MapRescaler(classes=3, out_channels=4, factor=8, dropout=1.0 - 1e-9).train()
    maps = torch.ones(2, 3, 64, 64)
    dropped = rescaler(maps)
    assert dropped.shape == (2, 4, 8, 8)
    torch.testing.assert_close(dropped, rescaler.eval()(torch.zeros_like(maps)))
    with pytest.raises(LatentFMError, match="power-of-two"):
        MapRescaler(3, 4, factor=3)


def test_intensity_rule_and_bad_bands():
    levels = torch.tensor([0, 31, 32, 127, 128, 255], dtype=torch.float32).view(1, 1, 1, 6) / 127.5 - 1
    assert intensity_maps(levels, [32, 128]).flatten().tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(LatentFMError, match="task.map_bands"):
        SemanticTask("intensity", [128, 32])


def make_segmentation_folder(root, count=8, size=12):
    """A CelebAMask-HQ-like layout: images/N.png (RGB) and maps/N.png (class ids 0..2, mode L)."""
    (root / "images").mkdir(parents=True)
    (root / "maps").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        ids = rng.integers(0, 3, (size, size), dtype=np.uint8)
        Image.fromarray((ids * 100).repeat(3).reshape(size, size, 3).astype(np.uint8)).save(
            root / "images" / f"{i}.png"
        )
        Image.fromarray(ids).save(root / "maps" / f"{i}.png")
    return root


def test_maps_from_a_segmentation_folder_train_and_flip_with_images(tmp_path):
    root = make_segmentation_folder(tmp_path / "seg")
    data = load_dataset("folder", str(root / "images"), image_size=8, maps_path=str(root / "maps"))
    maps = data.read(range(len(data))).maps
    assert data.has_maps and maps.shape == (8, 1, 8, 8) and maps.max() <= 2
    flips = torch.tensor([True, False])
    assert torch.equal(data.read(torch.tensor([0, 1]), flips).maps[0], maps[0].flip(-1))
    overrides = [*SEMANTIC, "data.dataset=folder", f"data.path={root / 'images'}", "data.image_size=8"]
    overrides += [f"data.maps_path={root / 'maps'}", "task.map_source=data", "task.map_classes=3"]
    overrides += ["train.batch_size=4", "train.steps=2", f"train.out_dir={tmp_path / 'run'}"]
    Trainer(load_config(None, overrides)).run()
    (root / "maps" / "3.png").unlink()
    data = load_dataset("folder", str(root / "images"), maps_path=str(root / "maps"))
    with pytest.raises(LatentFMError, match="3.png not found"):
        data.read(range(len(data)))


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def test_inpaint_command_writes_completions_and_pairs_folders(inpaint_run, tmp_path, capsys):
    image, mask = digit_and_box()
    image_file = write_png(tmp_path / "digit.png", quantise(image)[0])
    mask_file = write_png(tmp_path / "box.png", mask[0] * 255)
    out = tmp_path / "out"
    args = ["inpaint", "--checkpoint", str(inpaint_run), "--nfe", "2", "--seed", "3"]
    assert main([*args, "--image", str(image_file), "--mask", str(mask_file), "--n", "3", "--out", str(out)]) == 0
    completions = np.load(out / "inpainted.npz")["images"]
    known = mask[0].numpy() == 0
    assert completions.shape == (3, 8, 8) and completions.dtype == np.uint8
    assert all((c[known] == quantise(image)[0].numpy()[known]).all() for c in completions)
    assert (out / "inpainted.png").is_file() and json.loads((out / "stats.json").read_text())["completions"] == 3
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "images" / name, quantise(image)[0])
        write_png(tmp_path / "masks" / name, mask[0] * 255)
    pair_args = ["--image", str(tmp_path / "images"), "--mask", str(tmp_path / "masks"), "--labels", "1,2"]
    assert main([*args, *pair_args, "--n", "2", "--out", str(tmp_path / "pairs")]) == 0
    assert np.load(tmp_path / "pairs" / "inpainted.npz")["images"].shape == (4, 8, 8)


@pytest.mark.parametrize(
    "case,message",
    [
        ("grey_mask", "has grey pixels"),
        ("small_mask", "is not 8x8 like image"),
        ("big_image", "is not 8x8, the size of the model's images"),
        ("missing_pair", "masks pair with images by file name"),
    ],
)
def test_inpaint_command_refuses_bad_inputs_in_one_line(case, message, inpaint_run, tmp_path, capsys):
    image = np.full((8, 8), 100)
    mask = np.zeros((8, 8))
    mask[2:5, 2:5] = 255
    image_arg, mask_arg = write_png(tmp_path / "i.png", image), write_png(tmp_path / "m.png", mask)
    if case == "grey_mask":
        mask[0, 0] = 128
        write_png(mask_arg, mask)
    elif case == "small_mask":
        write_png(mask_arg, mask[:6, :6])
    elif case == "big_image":
        write_png(image_arg, np.zeros((9, 9)))
        write_png(mask_arg, np.zeros((9, 9)))
    else:
        for folder in ("images", "masks"):
            (tmp_path / folder).mkdir()
        write_png(tmp_path / "images" / "x.png", image)
        image_arg, mask_arg = tmp_path / "images", tmp_path / "masks"
    args = ["inpaint", "--checkpoint", str(inpaint_run), "--image", str(image_arg), "--mask", str(mask_arg)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_sample_command_follows_semantic_maps(semantic_run, inpaint_run, tmp_path, capsys):
    image = load_dataset("digits", split="test").batch(torch.arange(2))[0]
    maps = intensity_maps(image, [32, 128])
    (tmp_path / "maps").mkdir()
    for i in range(2):
        write_png(tmp_path / "maps" / f"{i}.png", maps[i, 0])
    args = ["sample", "--checkpoint", str(semantic_run), "--nfe", "2", "--n", "3"]
    assert main([*args, "--semantic", str(tmp_path / "maps"), "--out", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "samples.npz")["images"].shape == (6, 8, 8)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert len(stats["semantic"]) == 2
    assert main([*args, "--semantic", str(tmp_path / "maps" / "0.png"), "--out", str(tmp_path / "one")]) == 0
    write_png(tmp_path / "big.png", np.zeros((9, 9)))
    assert main([*args, "--semantic", str(tmp_path / "big.png"), "--out", str(tmp_path / "bad")]) == 2
    assert "the model makes 8x8 images" in capsys.readouterr().err
    other = ["sample", "--checkpoint", str(inpaint_run), "--semantic", str(tmp_path / "maps" / "0.png")]
    assert main([*other, "--out", str(tmp_path / "wrong")]) == 2
    assert "takes image and mask, not map" in capsys.readouterr().err


def test_inpainting_without_labels_on_an_unlabelled_rgb_folder(tmp_path, capsys):
    root = make_segmentation_folder(tmp_path / "seg")
    overrides = [*INPAINT, "data.dataset=folder", f"data.path={root / 'images'}", "data.image_size=8"]
    Trainer(
        load_config(None, [*overrides, "train.batch_size=4", "train.steps=2", f"train.out_dir={tmp_path / 'r'}"])
    ).run()
    pipe = FlowPipeline.from_checkpoint(tmp_path / "r")
    assert pipe.num_classes == 0 and pipe.image_shape == (3, 8, 8)
    image = load_dataset("folder", str(root / "images"), image_size=8).batch(torch.tensor([0]))[0][0]
    completions, _ = pipe.inpaint(image, digit_and_box()[1], n=2, settings=pipe.sampler.with_(nfe=2))
    assert completions.shape == (2, 3, 8, 8)
    write_png(tmp_path / "i.png", quantise(image).permute(1, 2, 0))
    write_png(tmp_path / "m.png", digit_and_box()[1][0] * 255)
    args = ["inpaint", "--checkpoint", str(tmp_path / "r"), "--image", str(tmp_path / "i.png")]
    args += ["--mask", str(tmp_path / "m.png"), "--nfe", "2", "--n", "2"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "inpainted.npz")["images"].shape == (2, 8, 8, 3)
    assert main([*args, "--labels", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "unconditional" in capsys.readouterr().err


def test_training_evaluation_is_refused_up_front_when_the_task_needs_inputs(tiny_overrides):
    overrides = [*tiny_overrides, "task.kind=semantic", "eval.every=2"]
    with pytest.raises(LatentFMError, match="eval.every samples without task inputs, but this model never trained"):
        Trainer(load_config(None, overrides), make_evaluation=lambda *args: None)


def test_unconditional_velocity_needs_a_batch_size_and_maps_need_one_channel(semantic_run):
    pipe = FlowPipeline.from_checkpoint(semantic_run)
    assert pipe.velocity(None, n=3)(torch.zeros(3, 1, 8, 8), torch.zeros(3)).shape == (3, 1, 8, 8)
    with pytest.raises(LatentFMError, match="give n"):
        pipe.velocity(None)
    with pytest.raises(LatentFMError, match=r"give \[N, H, W\] or \[N, 1, H, W\]"):
        pipe.generate(None, n=1, semantic=torch.zeros(1, 2, 8, 8, dtype=torch.long))
