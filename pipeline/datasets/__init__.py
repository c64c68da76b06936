"""Datasets: the real MNIST digits bundled offline, local MNIST folders, Morpho-MNIST, and real-data loaders
(:class:`ImageAttributeFolder` for any image folder plus a CSV of attributes, :class:`CelebAAttributes`).

Example:
    >>> from pipeline.datasets import load_mnist5k, mnist5k_split
    >>> images, labels = load_mnist5k()
    >>> train_idx, test_idx = mnist5k_split()
"""
from pipeline.datasets import colour_equations, morpho_equations
from pipeline.datasets.celeba import CelebAAttributes
from pipeline.datasets.csv_folder import ImageAttributeFolder
from pipeline.datasets.decoder import DataNotFoundError
from pipeline.datasets.mnist import MNIST5K_SPLIT_SEED, load_mnist5k, load_mnist_folder, mnist5k_split, read_idx
from pipeline.datasets.morpho import RENDER_VERSION, MorphoMNIST, default_cache_dir, render
from pipeline.datasets.morpho_colour import MorphoColour, render_colour

__all__ = ["MNIST5K_SPLIT_SEED", "load_mnist5k", "load_mnist_folder", "mnist5k_split", "read_idx", "morpho_equations",
           "MorphoMNIST", "render", "colour_equations", "MorphoColour", "render_colour", "default_cache_dir",
           "RENDER_VERSION", "ImageAttributeFolder", "CelebAAttributes", "DataNotFoundError"]
