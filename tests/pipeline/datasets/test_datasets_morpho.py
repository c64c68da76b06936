"""Morpho-MNIST from real digits: the SCM equations, the dataset, its cache and the ground truth.

The benchmark SCM (docs/benchmark.md)::

    u_t ~ Gamma(10, 5) -> thickness t = 0.5 + u_t --> intensity i = 64 + 191 sigmoid(0.5 e_i + 2t - 5)
    source digit (index, label) ---------------------+--> image x = set_intensity(set_thickness(src, t), i)
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.datasets import MorphoMNIST, mnist5k_split, render
from pipeline.datasets import morpho_equations as eq
from pipeline.morphometry import measure

# --- equations --------------------------------------------------------------------------------

def test_scm_noise_is_seeded_and_has_the_benchmark_marginals():
    a = eq.sample_noise(20000, torch.Generator().manual_seed(3))
    b = eq.sample_noise(20000, 3)
    torch.testing.assert_close(a["u_t"], b["u_t"])
    t = eq.thickness_from_noise(a["u_t"])
    # 0.5 + Gamma(shape 10, rate 5): mean 2.5, sd sqrt(10)/5
    assert float(t.mean()) == pytest.approx(2.5, abs=0.02)
    assert float(t.std()) == pytest.approx(10 ** 0.5 / 5, abs=0.02)
    assert float(a["e_i"].mean()) == pytest.approx(0.0, abs=0.03)
    i = eq.intensity_from(t, a["e_i"])
    assert float(i.min()) > 64 and float(i.max()) < 255
    assert np.corrcoef(t.numpy(), i.numpy())[0, 1] > 0.6  # thickness drives intensity


def test_intensity_noise_round_trip_and_numpy_torch_agree():
    t = torch.tensor([1.0, 2.5, 4.0], dtype=torch.float64)
    i = torch.tensor([70.0, 160.0, 250.0], dtype=torch.float64)
    e = eq.noise_from_intensity(t, i)
    torch.testing.assert_close(eq.intensity_from(t, e), i)
    np.testing.assert_allclose(eq.intensity_from(t.numpy(), e.numpy()), i.numpy())
    with pytest.raises(ValueError, match="intensity=255 has no SCM noise"):
        eq.noise_from_intensity(t[:1], torch.tensor([255.0]))


def test_independent_sampling_decorrelates_and_widens():
    noise = eq.sample_independent(20000, 0)
    t = eq.thickness_from_noise(noise["u_t"])
    i = eq.intensity_from(t, noise["e_i"])
    assert abs(np.corrcoef(t.numpy(), i.numpy())[0, 1]) < 0.03
    assert float(t.min()) < 1.1 and float(t.quantile(0.99)) > 5.0  # the Uniform(1, 5.5) component
    assert float(i.min()) < 70 and float(i.max()) > 250 and float(i.min()) > 64
    assert abs(float((i < 159.5).float().mean()) - 0.5) < 0.02  # Uniform(64, 255) median
    with pytest.raises(TypeError, match="torch.Generator or an integer seed"):
        eq.sample_independent(3, None)


# --- rendering --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sources():
    from pipeline.datasets import load_mnist5k

    images, labels = load_mnist5k()
    _, test_idx = mnist5k_split()
    return images[test_idx[::25]]  # 40 test digits


def test_render_is_deterministic_row_by_row(sources):
    t = np.linspace(1.2, 5.0, len(sources))
    i = np.linspace(70, 250, len(sources))
    batch = render(sources, t, i, n_jobs=1)
    assert batch.shape == (40, 1, 28, 28) and batch.dtype == torch.float32
    assert float(batch.min()) >= -1 and float(batch.max()) <= 1
    single = render(sources[5:6], t[5:6], i[5:6], n_jobs=1)
    assert torch.equal(single, batch[5:6])
    m = measure(batch, n_jobs=1)
    assert np.median(np.abs(m["thickness"] - t)) <= 0.15
    assert np.abs(m["intensity"] - i).max() <= 1.0
    with pytest.raises(TypeError, match="uint8"):
        render(sources.astype(np.float32), t, i)


def test_render_parallel_equals_serial(sources):
    src = np.concatenate([sources, sources])[:64]
    t = np.full(64, 3.0)
    i = np.full(64, 200.0)
    assert torch.equal(render(src, t, i, n_jobs=2), render(src, t, i, n_jobs=1))


# --- the dataset --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dcfg-cache")


@pytest.fixture(scope="module")
def small_test_set(cache_dir):
    return MorphoMNIST("test", samples_per_digit=2, seed=1, max_sources=30, cache_dir=cache_dir, progress=False)


def test_items_attributes_and_noise(small_test_set):
    ds = small_test_set
    assert len(ds) == 60
    image, attrs = ds[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert float(image.min()) >= -1 and float(image.max()) <= 1
    assert attrs["thickness"].dtype == torch.float32 and attrs["digit"].dtype == torch.int64
    assert ds.images.shape == (60, 1, 28, 28)
    assert ds.noise["source_index"].tolist() == [k // 2 for k in range(60)]
    torch.testing.assert_close(ds.attributes["digit"], torch.from_numpy(ds.source_labels)[ds.noise["source_index"]])
    assert sorted(set(ds.source_labels.tolist())) == list(range(10))  # class-balanced subset
    # recorded attributes follow the SCM from the recorded noise ...
    t = eq.thickness_from_noise(ds.noise["u_t"])
    torch.testing.assert_close(ds.attributes["thickness"], t.float())
    torch.testing.assert_close(ds.attributes["intensity"], eq.intensity_from(t, ds.noise["e_i"]).float())
    # ... and the images carry them (morphometry of the rendered digits)
    m = measure(ds.images, n_jobs=1)
    assert np.median(np.abs(m["thickness"] - ds.attributes["thickness"].numpy())) <= 0.15
    assert np.abs(m["intensity"] - ds.attributes["intensity"].numpy()).max() <= 1.0


def test_source_digits_respect_the_split(cache_dir):
    train_idx, test_idx = mnist5k_split()
    train = MorphoMNIST("train", max_sources=20, cache_dir=cache_dir, progress=False)
    test = MorphoMNIST("test", max_sources=20, cache_dir=cache_dir, progress=False)
    train_sources = set(train.source_ids[train.noise["source_index"].numpy()].tolist())
    test_sources = set(test.source_ids[test.noise["source_index"].numpy()].tolist())
    assert train_sources <= set(train_idx.tolist()) and test_sources <= set(test_idx.tolist())
    assert not train_sources & test_sources


def test_cache_is_reused_and_written_atomically(small_test_set, cache_dir, monkeypatch):
    path = small_test_set.cache_path()
    assert path.is_file() and path.parent == cache_dir
    assert not [p for p in os.listdir(cache_dir) if ".tmp" in p]  # no leftover temporary files
    other_seed = MorphoMNIST("test", samples_per_digit=1, seed=2, max_sources=30, cache_dir=cache_dir, progress=False)
    assert other_seed.cache_path() != path and other_seed.cache_path().is_file()

    def fail(*args, **kwargs):
        raise AssertionError("rendered although a cache file exists")

    monkeypatch.setattr("pipeline.datasets.morpho.render", fail)
    again = MorphoMNIST("test", samples_per_digit=2, seed=1, max_sources=30, cache_dir=cache_dir, progress=False)
    assert torch.equal(again.images, small_test_set.images)
    torch.testing.assert_close(again.noise["e_i"], small_test_set.noise["e_i"], rtol=0, atol=0)


def test_corrupt_cache_is_ignored_and_rewritten(tmp_path):
    kwargs = dict(samples_per_digit=1, seed=0, max_sources=10, cache_dir=tmp_path, progress=False)
    first = MorphoMNIST("test", **kwargs)
    first.cache_path().write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring unreadable Morpho-MNIST cache"):
        second = MorphoMNIST("test", **kwargs)
    assert torch.equal(second.images, first.images)
    with np.load(first.cache_path(), allow_pickle=False) as f:  # rewritten, readable without pickle
        assert f["images"].shape == (10, 1, 28, 28)


def test_redraw_each_epoch(tmp_path):
    ds = MorphoMNIST("test", max_sources=10, seed=4, redraw_each_epoch=True, cache_dir=tmp_path, progress=False)
    epoch0 = ds.attributes["thickness"].clone(), ds.images.clone()
    ds.set_epoch(1)
    assert not torch.equal(ds.attributes["thickness"], epoch0[0])
    assert torch.equal(ds.noise["source_index"], torch.arange(10))
    ds.set_epoch(0)
    assert torch.equal(ds.attributes["thickness"], epoch0[0]) and torch.equal(ds.images, epoch0[1])
    fixed = MorphoMNIST("test", max_sources=10, seed=4, cache_dir=tmp_path, progress=False)
    fixed.set_epoch(3)  # without redraw_each_epoch: nothing changes
    assert torch.equal(fixed.attributes["thickness"], epoch0[0])


def test_independent_attribute_sampling(tmp_path):
    ds = MorphoMNIST("train", max_sources=40, samples_per_digit=3, attribute_sampling="independent",
                     cache_dir=tmp_path, progress=False)
    t, i = ds.attributes["thickness"].double(), ds.attributes["intensity"].double()
    # the recorded noise reproduces the requested attributes under the SCM equations
    torch.testing.assert_close(eq.intensity_from(eq.thickness_from_noise(ds.noise["u_t"]), ds.noise["e_i"]), i,
                               rtol=1e-6, atol=1e-4)
    assert abs(np.corrcoef(t.numpy(), i.numpy())[0, 1]) < 0.3
    m = measure(ds.images, n_jobs=1)
    assert np.abs(m["intensity"] - i.numpy()).max() <= 1.0


def test_constructor_errors(tmp_path):
    with pytest.raises(ValueError, match="split='val'"):
        MorphoMNIST("val", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="attribute_sampling='uniform'"):
        MorphoMNIST("test", attribute_sampling="uniform", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="samples_per_digit=0"):
        MorphoMNIST("test", samples_per_digit=0, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        MorphoMNIST("test", root=tmp_path / "missing", cache_dir=tmp_path)


# --- ground-truth counterfactuals ----------------------------------------------------------------

def test_do_factual_thickness_reproduces_the_image(small_test_set):
    ds = small_test_set
    rows = torch.arange(0, 60, 3)
    noise = ds.noise_of(rows)
    t_factual = eq.thickness_from_noise(noise["u_t"])
    attrs, images = ds.true_counterfactual(noise, do={"thickness": t_factual})
    l1 = ((images - ds.images[rows]).abs() / 2).mean()  # on [0, 1]
    assert float(l1) < 1e-6
    torch.testing.assert_close(attrs["intensity"], ds.attributes["intensity"][rows])


def test_do_thickness_follows_the_scm(small_test_set):
    ds = small_test_set
    rows = torch.arange(0, 60, 2)
    noise = ds.noise_of(rows)
    attrs, images = ds.true_counterfactual(noise, do={"thickness": 4.0})
    m = measure(images, n_jobs=1)
    assert np.median(np.abs(m["thickness"] - 4.0)) <= 0.15
    expected_i = eq.intensity_from(torch.full((len(rows),), 4.0, dtype=torch.float64), noise["e_i"])
    torch.testing.assert_close(attrs["intensity"], expected_i.float())  # i' = f(t', e_i)
    assert np.abs(m["intensity"] - expected_i.numpy()).max() <= 1.0
    assert torch.equal(attrs["digit"], ds.attributes["digit"][rows])
    # a callable is a shift of the factual value
    attrs_shift, _ = ds.true_counterfactual(noise, do={"thickness": lambda t: t + 0.5})
    torch.testing.assert_close(attrs_shift["thickness"], ds.attributes["thickness"][rows] + 0.5)


def test_do_intensity_keeps_thickness(small_test_set):
    ds = small_test_set
    rows = [1, 8, 20]
    attrs, images = ds.true_counterfactual(ds.noise_of(rows), do={"intensity": torch.tensor([80.0, 150.0, 240.0])})
    torch.testing.assert_close(attrs["thickness"], ds.attributes["thickness"][rows])
    m = measure(images, n_jobs=1)
    np.testing.assert_allclose(m["intensity"], [80.0, 150.0, 240.0], atol=1.0)
    factual = measure(ds.images[rows], n_jobs=1)["thickness"]
    np.testing.assert_allclose(m["thickness"], factual, atol=1e-6)  # the shape is the same render


def test_true_counterfactual_errors(small_test_set):
    ds = small_test_set
    noise = ds.noise_of([0, 1])
    with pytest.raises(ValueError, match="do\\(digit\\) has no ground-truth image"):
        ds.true_counterfactual(noise, do={"digit": 3})
    with pytest.raises(ValueError, match="unknown attribute"):
        ds.true_counterfactual(noise, do={"slant": 0.1})
    with pytest.raises(ValueError, match=r"do\(thickness=9\) is out of range"):
        ds.true_counterfactual(noise, do={"thickness": 9.0})
    with pytest.raises(ValueError, match="3 values for 2 rows"):
        ds.true_counterfactual(noise, do={"intensity": [100.0, 120.0, 130.0]})
    with pytest.raises(ValueError, match="noise lacks"):
        ds.true_counterfactual({"u_t": noise["u_t"]}, do={"thickness": 2.0})


@pytest.mark.slow
def test_full_splits_never_share_a_source_digit(tmp_path):
    train = MorphoMNIST("train", cache_dir=tmp_path, progress=False)
    test = MorphoMNIST("test", cache_dir=tmp_path, progress=False)
    assert len(train) == 4000 and len(test) == 1000
    train_ids = set(train.source_ids[train.noise["source_index"].numpy()].tolist())
    test_ids = set(test.source_ids[test.noise["source_index"].numpy()].tolist())
    assert len(train_ids) == 4000 and len(test_ids) == 1000 and not train_ids & test_ids
    m = measure(test.images)
    assert np.median(np.abs(m["thickness"] - test.attributes["thickness"].numpy())) <= 0.15
