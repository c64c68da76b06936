"""Morphometry (thickness, intensity, slant) and the perturbations that set thickness and intensity.

Checks follow docs/benchmark.md: the fast thickness agrees with the skimage ``medial_axis`` reference,
``set_thickness`` reaches its targets, ``set_intensity`` is exact to a grey level.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.datasets import load_mnist5k, mnist5k_split
from pipeline.morphometry import (
    measure,
    measure_intensity,
    measure_slant,
    measure_thickness,
    reference_thickness,
    set_intensity,
    set_thickness,
)


@pytest.fixture(scope="module")
def test_digits() -> np.ndarray:
    """300 test digits (uint8), 30 of each class."""
    images, labels = load_mnist5k()
    _, test_idx = mnist5k_split()
    picked = np.concatenate([test_idx[labels[test_idx] == d][:30] for d in range(10)])
    return images[picked]


def _bar(width: int, length: int = 16, value: int = 255) -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    top, left = (28 - length) // 2, (28 - width) // 2
    image[top:top + length, left:left + width] = value
    return image


# --- thickness --------------------------------------------------------------------------------

def test_fast_thickness_agrees_with_reference(test_digits):
    fast = measure_thickness(test_digits[::5], n_jobs=1)
    ref = reference_thickness(test_digits[::5])
    assert np.median(np.abs(fast - ref)) <= 0.05
    assert np.abs(fast - ref).max() < 0.3


@pytest.mark.parametrize("width", [2, 3, 4])
def test_thickness_of_a_bar_is_its_width(width):
    # a long bar: the medial axis is its centre line (plus short end branches)
    t = measure_thickness(_bar(width, length=20)[None], n_jobs=1)[0]
    assert abs(t - width) < 0.2


def test_thickness_does_not_depend_on_batch_or_processes(test_digits):
    serial = measure_thickness(test_digits, n_jobs=1)
    parallel = measure_thickness(test_digits, n_jobs=2)  # 300 images: a fork pool of 2
    np.testing.assert_array_equal(serial, parallel)
    np.testing.assert_array_equal(measure_thickness(test_digits[7:9], n_jobs=1), serial[7:9])
    assert 1.0 < serial.min() and serial.max() < 8.0


def test_input_conventions_give_the_same_measurement(test_digits):
    x = test_digits[:6]
    as_float = x.astype(np.float64) / 255
    as_torch = torch.from_numpy(as_float * 2 - 1).float().unsqueeze(1)  # (B, 1, H, W) in [-1, 1]
    expected = measure(x, n_jobs=1)
    for variant in (as_float, as_torch, x.astype(np.float32)):  # float32 on 0..255 (values > 1.5)
        got = measure(variant, n_jobs=1)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-3 if name != "intensity" else 0.01)
    # value_range overrides the rule: [0,1] floats declared as 0..255 look 255x dimmer
    dim = measure_intensity(as_float, value_range=(0, 255))
    np.testing.assert_allclose(dim * 255, expected["intensity"], rtol=1e-6)
    single = measure_thickness(x[0], n_jobs=1)  # a single (H, W) image
    assert single.shape == (1,) and single[0] == pytest.approx(expected["thickness"][0])


def test_bad_inputs_raise_with_the_fix():
    with pytest.raises(ValueError, match="value_range"):
        measure_thickness(torch.full((1, 28, 28), 200.0))  # torch floats default to [-1, 1]
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        measure_thickness(np.zeros((2, 3, 28, 28)))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        measure_intensity("image.png")
    with pytest.raises(ValueError, match="n_jobs=0"):
        measure_thickness(np.zeros((1, 28, 28)), n_jobs=0)
    with pytest.raises(ValueError, match="NaN"):
        measure_slant(np.full((1, 28, 28), np.nan))


def test_blank_image_gives_nan_not_a_crash():
    blank = np.zeros((2, 28, 28), np.uint8)
    blank[1] = _bar(3)
    m = measure(blank, n_jobs=1)
    assert np.isnan(m["thickness"][0]) and np.isnan(m["slant"][0]) and np.isfinite(m["thickness"][1])
    np.testing.assert_array_equal(set_thickness(blank[:1], 3.0, n_jobs=1), blank[:1])


# --- intensity and slant ----------------------------------------------------------------------

def test_intensity_is_the_median_above_the_mid_threshold():
    image = np.zeros((28, 28), np.uint8)
    image[8:20, 10:14] = 180   # 48 pixels
    image[8:20, 14:16] = 220   # 24 pixels
    image[20:22, 10:16] = 60   # below the mid threshold (110): ignored
    assert measure_intensity(image[None])[0] == 180.0


def test_slant_sign_follows_the_lean():
    upright = _bar(3)
    lean_right = np.zeros((28, 28), np.uint8)
    for row in range(6, 22):  # top of the stroke to the right
        col = 16 - (row - 6) // 3
        lean_right[row, col:col + 3] = 255
    slant = measure_slant(np.stack([upright, lean_right, lean_right[:, ::-1]]))
    assert abs(slant[0]) < 1e-6
    assert slant[1] > 0.2 and slant[2] == pytest.approx(-slant[1])


# --- perturbations ----------------------------------------------------------------------------

@pytest.mark.parametrize("target", [1.5, 2.5, 3.5, 4.5])
def test_set_thickness_reaches_the_target(test_digits, target):
    digits = test_digits[::6]  # 50 digits
    out = set_thickness(digits, target, n_jobs=1)
    achieved = measure_thickness(out, n_jobs=1)
    assert np.median(np.abs(achieved - target)) <= 0.15
    assert out.dtype == np.uint8 and out.shape == digits.shape  # the input's layout comes back


def test_iterated_set_thickness_beats_the_one_shot_recipe(test_digits):
    digits = test_digits[::15].astype(np.float64) / 255
    one_shot = measure_thickness(set_thickness(digits, 4.0, iterations=0, n_jobs=1), n_jobs=1)
    iterated = measure_thickness(set_thickness(digits, 4.0, n_jobs=1), n_jobs=1)
    assert np.median(np.abs(iterated - 4.0)) < np.median(np.abs(one_shot - 4.0))


def test_set_thickness_per_row_targets_and_parallel_equal_serial(test_digits):
    digits = torch.from_numpy(test_digits[:64].astype(np.float32) / 127.5 - 1).unsqueeze(1)
    targets = torch.linspace(1.5, 5.0, 64)
    serial = set_thickness(digits, targets, n_jobs=1)
    assert isinstance(serial, torch.Tensor) and serial.shape == digits.shape and serial.dtype == torch.float32
    parallel = set_thickness(digits, targets, n_jobs=2)
    torch.testing.assert_close(parallel, serial, rtol=0, atol=0)
    achieved = measure_thickness(serial, n_jobs=1)
    assert np.corrcoef(achieved, targets.numpy())[0, 1] > 0.97


def test_set_thickness_rejects_bad_arguments(test_digits):
    with pytest.raises(ValueError, match=r"thickness=12 is out of range: allowed 0.5..8"):
        set_thickness(test_digits[:2], 12.0)
    with pytest.raises(ValueError, match="3 values for 2 images"):
        set_thickness(test_digits[:2], [2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="scale=1"):
        set_thickness(test_digits[:2], 2.0, scale=1)


@pytest.mark.parametrize("target", [70.0, 150.0, 255.0])
def test_set_intensity_within_one_grey_level(test_digits, target):
    digits = test_digits[::10].astype(np.float64) / 255
    out = set_intensity(digits, target)
    assert np.abs(measure_intensity(out) - target).max() <= 1.0
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_set_intensity_keeps_thickness_when_dimming(test_digits):
    digits = test_digits[:10]
    out = set_intensity(digits.astype(np.float64) / 255, 100.0)
    np.testing.assert_allclose(measure_thickness(out, n_jobs=1), measure_thickness(digits, n_jobs=1), atol=1e-9)
    with pytest.raises(ValueError, match="intensity=300 is out of range"):
        set_intensity(digits, 300.0)


# --- the full benchmark figures (slow: about a minute on 2 cores) -------------------------------

@pytest.fixture(scope="module")
def all_test_digits() -> np.ndarray:
    images, _ = load_mnist5k()
    return images[mnist5k_split()[1]]


@pytest.mark.slow
def test_fast_thickness_agrees_with_reference_on_all_test_digits(all_test_digits):
    diff = measure_thickness(all_test_digits) - reference_thickness(all_test_digits)
    assert np.median(np.abs(diff)) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("target", [1.5, 2.5, 3.5, 4.5])
def test_set_thickness_on_all_test_digits(all_test_digits, target):
    achieved = measure_thickness(set_thickness(all_test_digits, target))
    assert np.median(np.abs(achieved - target)) <= 0.15
