"""Each benchmark metric on hand-made inputs with known answers."""
import numpy as np
import pytest
import torch

from pipeline.evaluation.metrics import accuracy, frechet_distance, l1, mae, psnr


def test_mae_known_shift():
    t = torch.linspace(1, 5, 100)
    assert mae(t, t) == 0.0
    assert mae(t, t + 0.3) == pytest.approx(0.3, abs=1e-6)
    assert mae(t, t - 0.3) == pytest.approx(0.3, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        mae(t, t[:5])


def test_accuracy():
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75


def test_l1_and_psnr_known_values():
    x = torch.full((3, 1, 4, 4), -1.0)
    assert np.all(l1(x, x) == 0)
    y = x + 0.2  # +0.1 on [0, 1]
    assert np.allclose(l1(x, y), 0.1)
    assert np.allclose(l1(x, y, scale=255), 25.5)
    assert psnr(x, y) == pytest.approx(20.0, abs=1e-5)
    assert psnr(x, x) == float("inf")


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Two Gaussians differing only in the mean by 1 in every coordinate: distance ~= 8.
    b = rng.normal(size=(2000, 8)) + 1.0
    assert frechet_distance(a, b) == pytest.approx(8.0, rel=0.1)
    # Variance 4 vs 1 in every coordinate: 8 * (1 + 4 - 2*2) = 8.
    c = rng.normal(size=(4000, 8)) * 2.0
    assert frechet_distance(a, c) == pytest.approx(8.0, rel=0.1)
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(a, a[:, :4])
