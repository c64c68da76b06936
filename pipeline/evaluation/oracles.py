"""Oracles: what the evaluation needs to know about a dataset that the pipeline itself cannot tell.

A counterfactual is scored by measuring it, so every metric needs an *oracle* for each attribute of
the image, independent of the model under test:

* :meth:`Oracles.measure`: each image parent read off an image (continuous attributes as values,
  categorical ones as predicted class indices);
* :meth:`Oracles.embed`: features in which realism is measured (Frechet distance);
* :meth:`Oracles.draw_targets`: intervention values, from the attribute's training marginal;
* :meth:`Oracles.true_counterfactual`: the ground-truth counterfactual image, where the dataset has one.

:class:`MorphoOracles` implements them for the Morpho-MNIST benchmark: morphometry (thickness and
intensity, after Castro et al. 2019), the project's digit classifier (digit, and its penultimate
features for realism) and the benchmark's renderer (ground truth for do(thickness), do(intensity)).
:class:`ColourOracles` does the same for colour Morpho-MNIST (morphometry and the classifier on the
image's saturation, hue and background measured exactly). :class:`PredictorOracles` serves any other
dataset: the pipeline's learned anti-causal predictors (:mod:`pipeline.predictors`) measure, their
features embed, and intervention values come from the evaluation data's marginals. Any other oracle
plugs in by subclassing :class:`Oracles`.

Example:
    >>> import numpy as np, torch
    >>> class Brightness(Oracles):  # a toy oracle: one continuous attribute, the mean pixel value
    ...     def measure(self, images):
    ...         return {"b": images.flatten(1).mean(1).double().numpy()}
    ...     def embed(self, images):
    ...         return images.flatten(1).double().numpy()
    >>> Brightness().measure(torch.zeros(2, 1, 4, 4))["b"].tolist()
    [0.0, 0.0]
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = ["Oracles", "MorphoOracles", "ColourOracles", "PredictorOracles"]


class Oracles:
    """Base class of the oracles a counterfactual evaluation uses (see the module docstring).

    Subclasses must implement :meth:`measure` and :meth:`embed`. :meth:`draw_targets` defaults to
    resampling ``marginals`` (continuous) and to a uniformly drawn *other* class (categorical);
    :meth:`true_counterfactual` defaults to "no ground truth" (``None``).

    Args:
        marginals: optional samples of each continuous attribute's training marginal, name -> (N,).
        cardinality: number of classes of each categorical attribute, name -> K.
    """

    def __init__(self, marginals: Mapping[str, Tensor] | None = None,
                 cardinality: Mapping[str, int] | None = None) -> None:
        self.marginals = {k: torch.as_tensor(v).double().reshape(-1) for k, v in (marginals or {}).items()}
        self.cardinality = dict(cardinality or {})

    def measure(self, images: Tensor) -> dict[str, np.ndarray]:
        """Each image parent measured on a batch ``(B, C, H, W)`` in [-1, 1]: name -> ``(B,)`` array."""
        raise NotImplementedError(f"{type(self).__name__} must implement measure(images)")

    def embed(self, images: Tensor) -> np.ndarray:
        """Features ``(B, D)`` in which realism (Frechet distance) is measured."""
        raise NotImplementedError(f"{type(self).__name__} must implement embed(images)")

    def draw_targets(self, node: str, factual: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
        """Intervention values for ``node``, one per row of ``factual``.

        Continuous nodes: draws from the training marginal; categorical nodes: uniform over the
        classes other than the factual one.
        """
        n = len(next(iter(factual.values())))
        if node in self.cardinality:
            k = int(self.cardinality[node])
            if k < 2:
                raise ValueError(f"node {node!r} has {k} class(es); do() needs at least 2 to change it")
            shift = torch.randint(1, k, (n,), generator=generator)
            return (factual[node].long().cpu() + shift) % k
        if node not in self.marginals:
            raise ValueError(f"no training marginal for node {node!r}: pass marginals={{{node!r}: samples}} "
                             f"or override draw_targets; known: {sorted(self.marginals)}")
        pool = self.marginals[node]
        return pool[torch.randint(0, len(pool), (n,), generator=generator)]

    def true_counterfactual(self, rows: Tensor, do: Mapping[str, Tensor]) -> Tensor | None:
        """Ground-truth counterfactual images of dataset ``rows`` under ``do`` (``None``: none exists)."""
        return None


class MorphoOracles(Oracles):
    """The Morpho-MNIST benchmark's oracles (docs/benchmark.md: morphometry, classifier, renderer).

    * ``measure``: thickness and intensity by :func:`pipeline.morphometry.measure`; digit by the
      classifier's prediction.
    * ``embed``: the classifier's penultimate features.
    * ``draw_targets`` (the training marginals): ``t' = 0.5 + Gamma(10, 5)``; ``i'`` pushed through the
      SCM's equations from a fresh ``(t, e_i)``; ``y'`` uniform over the 9 other digits.
    * ``true_counterfactual``: :meth:`MorphoMNIST.true_counterfactual` with the rows' recorded noise.

    Args:
        dataset: the :class:`~pipeline.datasets.MorphoMNIST` whose rows are evaluated.
        classifier: the digit classifier (``predict`` and ``embed`` on images in [-1, 1]).
        n_jobs: morphometry processes (``None``: all CPUs).

    Example:
        >>> from pipeline.classifier import DigitClassifier
        >>> from pipeline.datasets import MorphoMNIST
        >>> ds = MorphoMNIST("test", max_sources=4, progress=False, n_jobs=1)  # doctest: +SKIP
        >>> oracles = MorphoOracles(ds, DigitClassifier(), n_jobs=1)           # doctest: +SKIP
        >>> sorted(oracles.measure(ds.images))                                 # doctest: +SKIP
        ['digit', 'intensity', 'thickness']
    """

    def __init__(self, dataset: Any, classifier: Any, n_jobs: int | None = None) -> None:
        super().__init__(cardinality={"digit": 10})
        if classifier is None:
            raise ValueError("MorphoOracles needs the digit classifier (the benchmark's oracle for the digit and "
                             "for realism): use a pipeline saved with one, or pass a DigitClassifier")
        self.dataset = dataset
        self.classifier = classifier
        self.n_jobs = n_jobs

    def measure(self, images: Tensor) -> dict[str, np.ndarray]:
        from pipeline.morphometry import measure

        m = measure(images.detach().float().cpu(), n_jobs=self.n_jobs)
        digit = self.classifier.predict(images.detach().float().to(_device_of(self.classifier)))
        return {"thickness": m["thickness"], "intensity": m["intensity"], "digit": digit.cpu().numpy()}

    def embed(self, images: Tensor) -> np.ndarray:
        feats = self.classifier.embed(images.detach().float().to(_device_of(self.classifier)))
        return feats.detach().cpu().double().numpy()

    def draw_targets(self, node: str, factual: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
        from pipeline.datasets import morpho_equations as eq
        from pipeline.morphometry import THICKNESS_RANGE

        n = len(next(iter(factual.values())))
        if node == "thickness":
            t = eq.thickness_from_noise(eq.sample_noise(n, generator)["u_t"])
            return t.clamp(*THICKNESS_RANGE)
        if node == "intensity":
            noise = eq.sample_noise(n, generator)
            t = eq.thickness_from_noise(noise["u_t"]).clamp(*THICKNESS_RANGE)
            return eq.intensity_from(t, noise["e_i"])
        return super().draw_targets(node, factual, generator)

    def true_counterfactual(self, rows: Tensor, do: Mapping[str, Tensor]) -> Tensor | None:
        if "digit" in do or not do:
            return None  # no source digit exists in another class (docs/benchmark.md)
        noise = self.dataset.noise_of(torch.as_tensor(rows).long())
        _, images = self.dataset.true_counterfactual(noise, {k: torch.as_tensor(v).double() for k, v in do.items()})
        return images


class ColourOracles(Oracles):
    """The colour Morpho-MNIST benchmark's oracles (``docs/benchmark.md``).

    * ``measure``: thickness, intensity and slant by morphometry of the image's saturation (``max - min`` over
      the channels, the grey digit), the digit by the classifier on the saturation, the hue and the background
      by :mod:`pipeline.morphometry.colour`. An attribute that cannot be measured on an image (a grey image has
      no hue) reads 0, so that it is scored as an error rather than dropped.
    * ``embed``: the classifier's penultimate features of the saturation, beside the measured hue and
      background (scaled by 10, so that colour counts in the Frechet distance).
    * ``draw_targets``: the benchmark SCM's marginals (fresh noise through its equations); the digit uniform
      over the 9 others.
    * ``true_counterfactual``: :meth:`MorphoColour.true_counterfactual` with the rows' recorded noise.

    Args:
        dataset: the :class:`~pipeline.datasets.MorphoColour` whose rows are evaluated (``None``: no ground
            truth).
        classifier: the digit classifier (on 1x28x28 grey images in [-1, 1]).
        n_jobs: morphometry processes.
    """

    def __init__(self, dataset: Any, classifier: Any, n_jobs: int | None = None) -> None:
        super().__init__(cardinality={"digit": 10})
        if classifier is None:
            raise ValueError("ColourOracles needs the digit classifier: use a pipeline saved with one")
        self.dataset, self.classifier, self.n_jobs = dataset, classifier, n_jobs

    def measure(self, images: Tensor) -> dict[str, np.ndarray]:
        from pipeline.morphometry import measure
        from pipeline.morphometry.colour import measure_background, measure_hue, saturation

        x = images.detach().float().cpu()
        grey = saturation(x)
        m = measure(grey, n_jobs=self.n_jobs, value_range=(-1.0, 1.0))
        digit = self.classifier.predict(grey.to(_device_of(self.classifier)))
        out = {"slant": m["slant"], "thickness": m["thickness"], "intensity": m["intensity"], "hue": measure_hue(x),
               "background": measure_background(x)}
        # an image on which an attribute cannot be measured (no coloured pixel, no background pixel, no stroke)
        # reads 0: outside hue's range, at background's edge, far from any stroke: it is scored as an error
        out = {k: np.nan_to_num(np.asarray(v, dtype=np.float64), nan=0.0) for k, v in out.items()}
        return {"digit": digit.cpu().numpy(), **out}

    def embed(self, images: Tensor) -> np.ndarray:
        from pipeline.morphometry.colour import measure_background, measure_hue, saturation

        x = images.detach().float().cpu()
        feats = self.classifier.embed(saturation(x).to(_device_of(self.classifier))).detach().cpu().double().numpy()
        colour = np.stack([np.nan_to_num(measure_hue(x)), np.nan_to_num(measure_background(x))], axis=1)
        return np.concatenate([feats, 10.0 * colour], axis=1)

    def draw_targets(self, node: str, factual: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
        from pipeline.datasets import colour_equations as ceq

        n = len(next(iter(factual.values())))
        if node == "digit":
            return super().draw_targets(node, factual, generator)
        noise = ceq.sample_noise(n, generator)
        digits = torch.randint(0, 10, (n,), generator=generator)
        values = ceq.attributes_from_noise(digits, noise)
        if node not in values:
            raise ValueError(f"colour Morpho-MNIST has no node {node!r}")
        return values[node].clamp(0.5, 8.0) if node == "thickness" else values[node]

    def true_counterfactual(self, rows: Tensor, do: Mapping[str, Tensor]) -> Tensor | None:
        if self.dataset is None or "digit" in do or not do:
            return None
        noise = self.dataset.noise_of(torch.as_tensor(rows).long())
        _, images = self.dataset.true_counterfactual(noise, {k: torch.as_tensor(v).double() for k, v in do.items()})
        return images


class PredictorOracles(Oracles):
    """Oracles of any dataset: the pipeline's learned anti-causal predictors (:class:`~pipeline.predictors.
    PredictorSet`).

    * ``measure``: each image parent predicted by its own predictor (class indices, or values in the node's
      units);
    * ``embed``: the predictors' features, concatenated;
    * ``draw_targets``: continuous nodes resample ``marginals`` (the evaluation data's own values), discrete ones
      a uniformly drawn other class;
    * no ground truth.

    Args:
        predictors: the :class:`~pipeline.predictors.PredictorSet`.
        marginals: node -> values whose empirical distribution intervention values are drawn from.
        cardinality: node -> classes of the discrete image parents.
    """

    def __init__(self, predictors: Any, marginals: Mapping[str, Tensor], cardinality: Mapping[str, int]) -> None:
        super().__init__(marginals=marginals, cardinality=cardinality)
        if predictors is None:
            raise ValueError("the pipeline has no predictors (its oracles); train it with `dcfg train`, which "
                             "trains one per image parent")
        self.predictors = predictors

    def measure(self, images: Tensor) -> dict[str, np.ndarray]:
        return self.predictors.measure(images.detach().float())

    def embed(self, images: Tensor) -> np.ndarray:
        return self.predictors.embed(images.detach().float())


def _device_of(module: Any) -> torch.device:
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")
