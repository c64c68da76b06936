"""The bundled MNIST digits, their fixed split, and the local IDX folder loader."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from pipeline.datasets import load_mnist5k, load_mnist_folder, mnist5k_split, read_idx


def test_mnist5k_is_real_mnist_digits():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    # MNIST digits are centred in a 20x20 box: the 2-pixel border is (almost) empty, the centre is not.
    assert images[:, :2, :].mean() < 1.0 and images[:, 10:18, 10:18].mean() > 60
    assert images.max() == 255 and images.min() == 0
    # fresh copies: mutating one result does not leak into the next call
    images[0] = 7
    assert not (load_mnist5k()[0][0] == 7).all()


def test_split_is_fixed_disjoint_and_stratified():
    train_idx, test_idx = mnist5k_split()
    assert len(train_idx) == 4000 and len(test_idx) == 1000
    assert not set(train_idx.tolist()) & set(test_idx.tolist())
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(5000))
    _, labels = load_mnist5k()
    assert np.bincount(labels[test_idx], minlength=10).tolist() == [100] * 10
    again_train, again_test = mnist5k_split()
    np.testing.assert_array_equal(again_test, test_idx)
    other_train, other_test = mnist5k_split(seed=1)
    assert not np.array_equal(other_test, test_idx)


def test_split_rejects_bad_size():
    with pytest.raises(ValueError, match="test_per_class=0"):
        mnist5k_split(test_per_class=0)


# --- local IDX folder: a tiny fixture written by the test itself -------------------------------

def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture()
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    train_labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    test_images = rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(train_images)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(train_labels)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(test_images))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([2, 7], dtype=np.uint8)))
    rows = ["index,thickness,intensity,slant"] + [f"{k},{1.5 + k},{100 + k},0.1" for k in (5, 4, 3, 2, 1, 0)]
    (tmp_path / "train-morpho.csv").write_text("\n".join(rows) + "\n")
    return tmp_path, train_images, train_labels, test_images


def test_folder_loader_reads_gzip_plain_and_morpho(idx_folder):
    root, train_images, train_labels, test_images = idx_folder
    images, labels, morpho = load_mnist_folder(root, "train")
    np.testing.assert_array_equal(images, train_images)
    assert labels.dtype == np.int64 and labels.tolist() == train_labels.tolist()
    assert morpho is not None
    # rows were written in reverse order: the loader re-orders them by `index`
    np.testing.assert_allclose(morpho["thickness"], 1.5 + np.arange(6))
    np.testing.assert_allclose(morpho["intensity"], 100 + np.arange(6))
    assert morpho["thickness"].dtype == np.float32
    images, labels, morpho = load_mnist_folder(str(root), split="test")
    np.testing.assert_array_equal(images, test_images)
    assert labels.tolist() == [2, 7] and morpho is None


def test_folder_loader_errors(idx_folder, tmp_path_factory):
    root, *_ = idx_folder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist_folder(root / "nope")
    with pytest.raises(ValueError, match="split='val'"):
        load_mnist_folder(root, "val")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_folder(empty)
    # truncated image file
    (root / "t10k-images-idx3-ubyte").write_bytes((root / "t10k-images-idx3-ubyte").read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_mnist_folder(root, "test")
    # not an IDX file at all
    (root / "t10k-images-idx3-ubyte").write_bytes(b"hello, world")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_mnist_folder(root, "test")
    # label count does not match the image count
    (root / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match="3 images but .* 2 labels"):
        load_mnist_folder(root, "test")
    # malformed morpho csv
    (root / "train-morpho.csv").write_text("index,thick\n0,1\n")
    with pytest.raises(ValueError, match="missing column"):
        load_mnist_folder(root, "train")
    (root / "train-morpho.csv").write_text("index,thickness,intensity\n0,1,2\n")
    with pytest.raises(ValueError, match="1 rows but the images file has 6"):
        load_mnist_folder(root, "train")


def test_read_idx_bad_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a valid gzip"):
        read_idx(path)
