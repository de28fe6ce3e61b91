"""Tests of the small in-project classifier: accuracy on sklearn digits, determinism, save/load."""

import pytest
import torch
from sklearn.datasets import load_digits

from latentfm.errors import LatentFMError
from latentfm.metrics.classifier import (
    SmallClassifier,
    _random_translate,
    accuracy,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn digits in [-1, 1] as ``[N, 1, 8, 8]``, split 1500 train / 297 test by a fixed permutation."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8 - 1
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:1500], order[1500:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(scope="module")
def digits_model(digits) -> SmallClassifier:
    """A classifier trained on the digits training split."""
    x, y, _, _ = digits
    return train_classifier(x, y, 10, epochs=40, seed=0)


def test_digits_test_accuracy(digits, digits_model):
    _, _, x_test, y_test = digits
    assert accuracy(digits_model, x_test, y_test) >= 0.95
    assert not digits_model.training


def test_same_seed_same_predictions_and_global_rng_untouched(digits):
    x, y, x_test, _ = digits
    state = torch.random.get_rng_state()
    first = train_classifier(x[:256], y[:256], 10, epochs=1, batch_size=64, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = train_classifier(x[:256], y[:256], 10, epochs=1, batch_size=64, seed=3)
    assert torch.equal(predict(first, x_test), predict(second, x_test))
    with torch.no_grad():
        assert torch.equal(first(x_test), second(x_test))


def test_predict_is_deterministic_and_int64(digits, digits_model):
    _, _, x_test, _ = digits
    a, b = predict(digits_model, x_test, batch_size=7), predict(digits_model, x_test)
    assert a.dtype == torch.int64 and a.shape == (len(x_test),)
    assert torch.equal(a, b)


def test_save_load_round_trip(tmp_path, digits, digits_model):
    _, _, x_test, _ = digits
    path = tmp_path / "sub" / "digits.safetensors"
    save_classifier(digits_model, path)
    loaded = load_classifier(path)
    assert not loaded.training
    assert sorted(p.name for p in path.parent.iterdir()) == ["digits.json", "digits.safetensors"]
    with torch.no_grad():
        assert torch.equal(loaded(x_test), digits_model(x_test))


def test_load_missing_path_names_it(tmp_path):
    path = tmp_path / "nothing.safetensors"
    with pytest.raises(LatentFMError, match="nothing.safetensors"):
        load_classifier(path)


def test_load_corrupt_weights_names_path(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_classifier(SmallClassifier(1, 10, 8), path)
    path.write_bytes(b"not safetensors")
    with pytest.raises(LatentFMError, match="bad.safetensors"):
        load_classifier(path)


@pytest.mark.parametrize("size", [8, 16, 28, 32, 64])
def test_features_and_logits_shapes(size):
    model = SmallClassifier(3, 7, size, width=8).eval()
    x = torch.rand(2, 3, size, size) * 2 - 1
    assert model.features(x).shape == (2, model.feature_dim)
    assert model(x).shape == (2, 7)


def test_random_translate_is_a_shift_within_range():
    x = torch.arange(2 * 36, dtype=torch.float32).reshape(2, 1, 6, 6)
    out = _random_translate(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    crops = [padded[:, :, dy : dy + 6, dx : dx + 6] for dy in range(3) for dx in range(3)]
    for i in range(2):
        assert any(torch.equal(out[i], crop[i]) for crop in crops)
