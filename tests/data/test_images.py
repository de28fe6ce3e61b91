"""Tests of latentfm.data.images: digits, IDX directories, image folders, batches."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentfm.data import ImageData, load_dataset
from latentfm.errors import LatentFMError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed if ``gz``)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_idx_dir(root: Path, prefix: str, n: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write a random images/labels IDX pair of ``n`` 5x4 images; returns what was written."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
    return images, labels


def write_png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """Write a solid-colour RGB PNG of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# --- digits -----------------------------------------------------------------------------------------------


def test_digits_shapes_range_and_classes():
    data = load_dataset("digits", split="all")
    assert isinstance(data, ImageData)
    assert data.images.shape == (1797, 1, 8, 8) and data.images.dtype == torch.uint8
    assert data.labels.shape == (1797,) and data.labels.dtype == torch.int64
    assert int(data.images.min()) == 0 and int(data.images.max()) == 255
    assert data.num_classes == 10 and data.class_names == [str(i) for i in range(10)]
    assert sorted(data.labels.unique().tolist()) == list(range(10))
    assert len(data) == 1797


def test_digits_values_scale_from_sklearn():
    from sklearn.datasets import load_digits

    raw = load_digits().images[0]
    data = load_dataset("digits", split="all")
    assert np.array_equal(data.images[0, 0].numpy(), np.rint(raw * 255 / 16).astype(np.uint8))


def test_digits_split_disjoint_complete_and_deterministic():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    every = load_dataset("digits", split="all")
    assert len(train) == 1500 and len(test) == 297
    test_idx = np.sort(np.random.default_rng(0).permutation(1797)[-297:])  # the documented split
    train_idx = np.setdiff1d(np.arange(1797), test_idx)
    assert torch.equal(test.images, every.images[test_idx]) and torch.equal(test.labels, every.labels[test_idx])
    assert torch.equal(train.images, every.images[train_idx])
    again = load_dataset("digits", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    assert len(test.labels.unique()) == 10


def test_digits_resize_and_channels():
    data = load_dataset("digits", split="test", image_size=16, channels=3)
    assert data.images.shape == (297, 3, 16, 16) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[:, 0], data.images[:, 2])
    small = load_dataset("digits", split="test")
    # bicubic upsampling keeps the mean brightness roughly unchanged
    assert abs(data.images.float().mean() - small.images.float().mean()) < 3


def read_all(data) -> torch.Tensor:
    """Every uint8 image of a dataset, read in this process."""
    return data.read(range(len(data))).images


def test_rgb_to_grey_uses_luminance(tmp_path):
    write_png(tmp_path / "a.png", (4, 4), (255, 0, 0))
    data = load_dataset("folder", str(tmp_path), channels=1)
    images = read_all(data)
    assert images.shape == (1, 1, 4, 4)
    assert int(images[0, 0, 0, 0]) == 76  # Pillow's L = 299/1000 * 255


def test_unknown_kind_split_and_channels():
    with pytest.raises(LatentFMError, match="digits, idx, folder"):
        load_dataset("cifar")
    with pytest.raises(LatentFMError, match="split 'val'"):
        load_dataset("digits", split="val")
    with pytest.raises(LatentFMError, match="data.channels=2"):
        load_dataset("digits", channels=2)


# --- batch ------------------------------------------------------------------------------------------------


def test_batch_range_labels_and_flip():
    data = load_dataset("digits", split="test")
    idx = torch.tensor([3, 0, 7, 7])
    x, y = data.batch(idx)
    assert x.dtype == torch.float32 and x.shape == (4, 1, 8, 8)
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1
    assert torch.equal(y, data.labels[idx])
    flip = torch.tensor([True, False, True, False])
    xf, _ = data.batch(idx, flip)
    assert torch.equal(xf[flip], torch.flip(x[flip], dims=[-1]))
    assert torch.equal(xf[~flip], x[~flip])
    assert not torch.equal(xf[0], x[0])


def test_batch_unlabelled_returns_none():
    data = ImageData(torch.full((2, 3, 2, 2), 255, dtype=torch.uint8), None, 0, [])
    x, y = data.batch(torch.tensor([1]))
    assert y is None and torch.all(x == 1.0)


# --- IDX --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    train_images, train_labels = write_idx_dir(tmp_path, "train", 6, gz, seed=1)
    test_images, test_labels = write_idx_dir(tmp_path, "t10k", 3, gz, seed=2)
    train = load_dataset("idx", str(tmp_path), split="train")
    assert train.images.shape == (6, 1, 5, 4) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images[:, 0].numpy(), train_images)
    assert np.array_equal(train.labels.numpy(), train_labels) and train.labels.dtype == torch.int64
    test = load_dataset("idx", str(tmp_path), split="test")
    assert np.array_equal(test.images[:, 0].numpy(), test_images)
    assert np.array_equal(test.labels.numpy(), test_labels)
    assert train.class_names == [str(i) for i in range(10)] and train.num_classes == 10
    assert len(load_dataset("idx", str(tmp_path), split="all")) == 9


def test_idx_dotted_names_and_fashion_class_names(tmp_path):
    root = tmp_path / "my-fashion"
    root.mkdir()
    write_idx(root / "t10k-images.idx3-ubyte", np.zeros((2, 3, 3), np.uint8), gz=False)
    write_idx(root / "t10k-labels.idx1-ubyte", np.array([0, 9], np.uint8), gz=False)
    data = load_dataset("idx", str(root), split="test", image_size=6)
    assert data.images.shape == (2, 1, 6, 6)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_file_names_file(tmp_path, gz):
    write_idx_dir(tmp_path, "train", 4, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    raw = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(raw[: len(raw) - 7])
    with pytest.raises(LatentFMError, match=name):
        load_dataset("idx", str(tmp_path))


def test_idx_bad_magic_names_file(tmp_path):
    write_idx_dir(tmp_path, "train", 4, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x0d\x01" + labels.read_bytes()[4:])
    with pytest.raises(LatentFMError, match="train-labels-idx1-ubyte.*magic"):
        load_dataset("idx", str(tmp_path))


def test_idx_length_mismatch_and_missing(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8), gz=False)
    with pytest.raises(LatentFMError, match="train-labels-idx1-ubyte"):
        load_dataset("idx", str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8), gz=False)
    with pytest.raises(LatentFMError, match="3 images but .* 2 labels"):
        load_dataset("idx", str(tmp_path))
    with pytest.raises(LatentFMError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("idx", str(tmp_path / "nope"))


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)
def test_real_fashion_mnist_test_split():
    data = load_dataset("idx", split="test")
    assert data.images.shape == (10000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.num_classes == 10 and data.class_names[0] == "T-shirt/top"
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    assert 0 < data.images.float().mean() < 255


# --- folders ----------------------------------------------------------------------------------------------


def test_folder_with_classes(tmp_path):
    write_png(tmp_path / "cat" / "a.png", (6, 6), (200, 10, 10))
    write_png(tmp_path / "cat" / "b.PNG", (6, 6), (200, 10, 10))
    write_png(tmp_path / "ant" / "c.png", (6, 6), (10, 200, 10))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()  # hidden directories are not classes
    data = load_dataset("folder", str(tmp_path))
    assert data.class_names == ["ant", "cat"] and data.num_classes == 2
    images = read_all(data)
    assert images.shape == (3, 3, 6, 6) and images.dtype == torch.uint8 and data.image_shape == (3, 6, 6)
    assert data.labels.tolist() == [0, 1, 1]
    assert images[0, :, 0, 0].tolist() == [10, 200, 10]
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentFMError, match=r"class folder .*empty holds no images"):
        load_dataset("folder", str(tmp_path))


def test_unlabelled_folder_resize_and_crop(tmp_path):
    img = Image.new("RGB", (12, 8), (0, 0, 0))
    img.paste((255, 255, 255), (2, 0, 10, 8))  # white centre square, black side strips
    img.save(tmp_path / "wide.jpg", quality=100)
    write_png(tmp_path / "small.png", (4, 4), (255, 255, 255))
    data = load_dataset("folder", str(tmp_path), image_size=8, channels=1)
    assert data.labels is None and data.num_classes == 0 and data.class_names == []
    images = read_all(data)
    assert images.shape == (2, 1, 8, 8)
    assert int(images.min()) > 240  # centre crop removed the black strips


def test_folder_corrupt_file_error_and_skip(tmp_path):
    write_png(tmp_path / "good.png", (4, 4), (1, 2, 3))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    strict = load_dataset("folder", str(tmp_path))  # an index: nothing is decoded yet
    with pytest.raises(LatentFMError, match=r"bad\.png.*data\.skip_corrupt=true"):
        read_all(strict)
    batch = load_dataset("folder", str(tmp_path), skip_corrupt=True).read([0, 1, 0])
    assert batch.skipped == 2 and torch.equal(batch.images[0], batch.images[1])  # bad.png replaced by good.png


def test_folder_mixed_sizes_need_image_size(tmp_path):
    write_png(tmp_path / "a.png", (4, 4), (0, 0, 0))
    write_png(tmp_path / "b.png", (5, 4), (0, 0, 0))
    with pytest.raises(LatentFMError, match=r"b\.png is 5x4.*data.image_size"):
        read_all(load_dataset("folder", str(tmp_path)))
    assert read_all(load_dataset("folder", str(tmp_path), image_size=4)).shape == (2, 3, 4, 4)


def test_folder_empty_missing_and_test_split(tmp_path):
    with pytest.raises(LatentFMError, match="no images"):
        load_dataset("folder", str(tmp_path))
    with pytest.raises(LatentFMError, match="data.path"):
        load_dataset("folder", str(tmp_path / "missing"))
    with pytest.raises(LatentFMError, match="no test split"):
        load_dataset("folder", str(tmp_path), split="test")
