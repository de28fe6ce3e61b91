"""Distribution metrics on known answers: Fréchet distance, streaming moments, KID, precision/recall,
the FID InceptionV3 (random weights: shapes and loading only) and reference statistics files."""

import time

import numpy as np
import pytest
import scipy.linalg
import torch

from latentfm.errors import LatentFMError
from latentfm.image_io import quantise
from latentfm.metrics.features import load_features
from latentfm.metrics.frechet import FeatureStats, frechet_distance
from latentfm.metrics.inception import FIDInceptionV3, load_inception
from latentfm.metrics.kid import kernel_distance
from latentfm.metrics.latency import median_seconds
from latentfm.metrics.precision_recall import precision_recall
from latentfm.metrics.reference import ReferenceStats, check_protocol, load_reference


def random_covariance(rng, dim):
    factor = rng.normal(size=(dim, 2 * dim)) * rng.uniform(0.1, 2.0, size=(dim, 1))
    return factor @ factor.T / (2 * dim)


def reference_frechet(mu1, sigma1, mu2, sigma2):
    """The textbook formula with scipy's general matrix square root of the product, in float64."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1 + sigma2 - 2 * root))


@pytest.mark.parametrize("dim", [2, 16, 64])
def test_frechet_distance_agrees_with_a_float64_reference(dim):
    rng = np.random.default_rng(dim)
    for _ in range(5):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim) * 0.1
        sigma1, sigma2 = random_covariance(rng, dim), random_covariance(rng, dim)
        ours, theirs = frechet_distance(mu1, sigma1, mu2, sigma2), reference_frechet(mu1, sigma1, mu2, sigma2)
        assert abs(ours - theirs) <= 1e-6 * abs(theirs)


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=32), random_covariance(rng, 32)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    shift = rng.normal(size=32)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9)
    a, b = rng.uniform(0.1, 3, size=32), rng.uniform(0.1, 3, size=32)  # diagonal: sum (sqrt a - sqrt b)^2
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu, np.diag(a), mu, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    as_tensors = [torch.tensor(v) for v in (mu, np.diag(a), mu, np.diag(b))]
    assert frechet_distance(*as_tensors) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_singular_covariances_is_finite_and_nonnegative():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(10, 64))  # fewer samples than dimensions: rank 9
    value = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(value) and value > 0
    sigma = np.cov(x, rowvar=False)
    assert abs(frechet_distance(x.mean(0), sigma, x.mean(0), sigma)) < 1e-6 * np.trace(sigma)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(LatentFMError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_stream_matches_numpy_with_a_large_offset():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(1000, 12)) * rng.uniform(0.01, 2, size=12) + 1e6  # a naive sum of squares cancels
    stats = FeatureStats()
    for batch in np.array_split(data, 13):
        stats.update(torch.tensor(batch) if len(batch) % 2 else batch)
    assert stats.n == 1000
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(data, rowvar=False), rtol=1e-7, atol=1e-9)  # naive: ~1e-4
    halves = FeatureStats().update(data[:300]).merge(FeatureStats().update(data[300:]))
    np.testing.assert_allclose(halves.cov, stats.cov, rtol=1e-7, atol=1e-9)


def test_feature_stats_errors():
    with pytest.raises(LatentFMError, match="at least 2"):
        _ = FeatureStats().update(np.zeros((1, 3))).cov
    with pytest.raises(LatentFMError, match="does not match"):
        FeatureStats().update(np.zeros((2, 3))).update(np.zeros((2, 4)))


def test_sampled_gaussians_give_the_closed_form_distance():
    rng = np.random.default_rng(3)
    shift = np.full(8, 0.5)  # |shift|^2 = 2
    x, y = rng.normal(size=(200_000, 8)), rng.normal(size=(200_000, 8)) + shift
    sx, sy = FeatureStats().update(x), FeatureStats().update(y)
    assert frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov) == pytest.approx(2.0, abs=0.02)


def brute_force_kid(x, y):
    m, dim = len(x), x.shape[1]
    k = lambda a, b: (a @ b / dim + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_definition_and_separates_distributions():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20, 5)), rng.normal(size=(20, 5)) + 0.3
    mean, std = kernel_distance(x, y, subsets=1, subset_size=20)
    assert mean == pytest.approx(brute_force_kid(x, y), rel=1e-10) and std == 0
    same = kernel_distance(rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16)), subsets=20, subset_size=500)
    shifted = kernel_distance(rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16)) + 0.5, 20, 500)
    assert abs(same[0]) < 3 * same[1] + 1e-3  # unbiased: zero in expectation
    assert shifted[0] > 50 * max(same[1], abs(same[0]))


def test_precision_recall_known_answers():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(400, 8))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    half_off = np.concatenate([real[:200], rng.normal(size=(200, 8)) + 100])  # half the samples are off-manifold
    assert precision_recall(real, half_off)[0] == 0.5
    two_modes = np.concatenate([real, real + 100])
    assert precision_recall(two_modes, real) == (1.0, 0.5)  # one of two modes dropped
    with pytest.raises(LatentFMError, match="k=3"):
        precision_recall(real[:3], real)


def test_inception_with_random_weights_gives_pool3_features(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(FIDInceptionV3().state_dict(), path)
    extractor = load_features(path)
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    features, predictions = extractor(grey)
    assert features.shape == (2, 2048) and predictions is None and torch.isfinite(features).all()
    assert (features >= 0).all()  # the average of ReLU outputs
    rgb_features, _ = extractor(grey.expand(-1, 3, -1, -1))
    torch.testing.assert_close(rgb_features, features)  # grey is repeated to RGB
    assert extractor.protocol((1, 28, 28))["preprocessing"].startswith("grey repeated to RGB; bilinear resize to 299")


def test_inception_missing_or_wrong_weights_are_one_clear_error(tmp_path):
    with pytest.raises(LatentFMError, match="pt_inception-2015-12-05-6726825d.pth from the pytorch-fid releases"):
        load_inception(tmp_path / "missing.pth")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(LatentFMError, match="is not the FID InceptionV3 weights"):
        load_inception(tmp_path / "other.pth")
    with pytest.raises(LatentFMError, match="--features"):
        load_features(tmp_path / "weights.bin")


def test_quantise_rounds_like_png():
    images = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 6)
    assert quantise(images).flatten().tolist() == [0, 0, 128, 191, 255, 255]


def test_reference_round_trip_and_protocol_check(tmp_path):
    protocol = {"features": "classifier (64-d)", "resolution": "1x28x28", "file_format": "uint8"}
    stats = ReferenceStats(np.zeros(3), np.eye(3), np.ones((5, 3), np.float32), 5, protocol, {"dataset": "digits"})
    stats.save(tmp_path / "ref.npz")
    loaded = load_reference(tmp_path / "ref.npz")
    assert loaded.count == 5 and loaded.protocol == protocol and loaded.source == {"dataset": "digits"}
    np.testing.assert_array_equal(loaded.sigma, np.eye(3))
    check_protocol(loaded, dict(protocol), "ref.npz")
    with pytest.raises(LatentFMError, match=r"resolution = '1x28x28', this evaluation uses '3x32x32'"):
        check_protocol(loaded, {**protocol, "resolution": "3x32x32"}, "ref.npz")
    np.savez(tmp_path / "fid_stats.npz", mu=np.zeros(3), sigma=np.eye(3))  # e.g. pytorch-fid statistics
    with pytest.raises(LatentFMError, match="not a latentfm statistics file"):
        load_reference(tmp_path / "fid_stats.npz")


def test_latency_warms_up_then_takes_the_median():
    calls, durations = [], iter([0.0, 0.0, 0.03, 0.001, 0.002])  # two warm-ups, then an outlier and two fast runs

    def run():
        calls.append(1)
        time.sleep(next(durations))

    assert median_seconds(run, torch.device("cpu"), repeats=3, warmup=2) < 0.02
    assert len(calls) == 5
