"""Image-level causal effects: the effect of an intervention on an outcome measured on the image.

An attribute-level effect (``scm.effects.estimate_effect``, ``SCM.average_causal_effect``) answers
"how much does intensity change under do(thickness)?". An image-level effect answers the same question
for a quantity read off the *image*, such as the stroke area or a classifier's probability, which no
attribute records. It is estimated unit by unit from counterfactual images:

1. **Abduction.** The SCM's noise of each unit, and its image noise ``x_T`` (DDIM inversion under the
   factual parents), once for both arms.
2. **Action.** ``do`` (and, for a contrast of two interventions, ``control``) applied to the SCM.
3. **Prediction.** Counterfactual parents, then counterfactual images decoded from ``x_T`` with the
   pipeline's guidance.
4. **Outcome.** The individual effect of unit ``b`` is ``outcome(x_b under do) - outcome(baseline_b)``,
   the baseline being the factual image (``control=None``) or the counterfactual under ``control``.
   Their mean is the average effect; its confidence interval is a percentile bootstrap over units (or a
   normal interval).

Ground truth comes from a renderer that can re-draw a unit under ``do`` (the Morpho-MNIST benchmark's,
:func:`morpho_true_effect`, or any function of :func:`effect_from_images`); :func:`compare_effects` sets
an estimate beside the truth or beside an attribute-level estimate.

Outcomes are callables ``(B, C, H, W) -> (B,)`` on images in [-1, 1]: :class:`StrokeArea`,
:class:`Morphometric` (measured thickness, intensity or slant), :class:`ClassifierProbability`, or your
own. The names ``"stroke_area"``, ``"thickness"``, ``"intensity"`` and ``"slant"`` are accepted too.

Example:
    >>> import torch
    >>> x = torch.full((2, 1, 4, 4), -1.0); x[0, 0, :2, :2] = 1.0     # 4 stroke pixels, then 0
    >>> StrokeArea()(x).tolist()
    [4.0, 0.0]
    >>> res = effect_from_images(x.flip(0), x, "stroke_area", ci="normal")  # swap the two images
    >>> res.individual.tolist(), res.value
    ([-4.0, 4.0], 0.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from dcfg_io.checks import is_integer, is_number
from diffusion.solvers import nfe as solver_nfe

__all__ = ["Outcome", "StrokeArea", "Morphometric", "ClassifierProbability", "resolve_outcome", "ImageEffect",
           "EffectComparison", "image_effect", "effect_from_images", "morpho_true_effect", "compare_effects",
           "confidence_interval", "CI_METHODS"]

Outcome = Callable[[Tensor], Tensor]
CI_METHODS = ("bootstrap", "normal")
_MORPHOMETRICS = ("thickness", "intensity", "slant")


# ================================================================================ outcomes
class StrokeArea:
    """The stroke area of each image: the number of pixels brighter than ``threshold`` (on [0, 1]).

    Args:
        threshold: brightness on [0, 1] above which a pixel counts as stroke (default 0.5; on the
            project's [-1, 1] images that is 0).

    Example:
        >>> import torch
        >>> x = -torch.ones(1, 1, 3, 3); x[0, 0, 1] = 0.8              # one row of 3 bright pixels
        >>> StrokeArea()(x).tolist(), StrokeArea(threshold=0.95)(x).tolist()
        ([3.0], [0.0])
    """

    def __init__(self, threshold: float = 0.5) -> None:
        if not is_number(threshold, 0.0, 1.0, high_open=True):
            raise ValueError(f"threshold={threshold!r} must be a number in [0, 1) (brightness on [0, 1]), e.g. 0.5")
        self.threshold = float(threshold)
        self.name = "stroke_area" if self.threshold == 0.5 else f"stroke_area(>{self.threshold:g})"

    def __call__(self, images: Tensor) -> Tensor:
        unit = (images.detach().double() + 1.0) / 2.0
        return (unit > self.threshold).flatten(1).sum(1).double()

    def __repr__(self) -> str:
        return f"StrokeArea(threshold={self.threshold:g})"


class Morphometric:
    """A Morpho-MNIST measurement of each image: ``"thickness"`` (px), ``"intensity"`` (0..255) or ``"slant"`` (rad).

    Args:
        name: which measurement (:func:`pipeline.morphometry.measure`).
        n_jobs: processes of the thickness measurement (``None``: all CPUs).

    Example:
        >>> import torch
        >>> x = -torch.ones(1, 1, 28, 28); x[0, 0, 6:22, 12:15] = 0.6    # a bar of intensity 204
        >>> [round(v, 2) for v in Morphometric("intensity")(x).tolist()]
        [204.0]
    """

    def __init__(self, name: str, n_jobs: int | None = 1) -> None:
        if name not in _MORPHOMETRICS:
            raise ValueError(f"unknown morphometric {name!r}; allowed: {list(_MORPHOMETRICS)}")
        self.name, self.n_jobs = name, n_jobs

    def __call__(self, images: Tensor) -> Tensor:
        from pipeline.morphometry import measure_intensity, measure_slant, measure_thickness

        x = images.detach().float().cpu()
        if self.name == "thickness":
            values = measure_thickness(x, n_jobs=self.n_jobs)
        elif self.name == "intensity":
            values = measure_intensity(x)
        else:
            values = measure_slant(x)
        return torch.as_tensor(np.round(values, 6), dtype=torch.float64)

    def __repr__(self) -> str:
        return f"Morphometric({self.name!r})"


class ClassifierProbability:
    """A classifier's probability of class ``target`` for each image (softmax of its logits).

    Args:
        classifier: a module mapping images ``(B, C, H, W)`` in [-1, 1] to logits ``(B, K)`` (e.g. the
            pipeline's :class:`~pipeline.classifier.DigitClassifier`).
        target: the class index.
        batch_size: images per forward.

    Example:
        >>> import torch
        >>> from pipeline.classifier import DigitClassifier
        >>> p = ClassifierProbability(DigitClassifier(), target=3)(torch.zeros(2, 1, 28, 28))
        >>> p.shape, bool(((p >= 0) & (p <= 1)).all())
        (torch.Size([2]), True)
    """

    def __init__(self, classifier: torch.nn.Module, target: int, batch_size: int = 512) -> None:
        if not callable(classifier):
            raise TypeError(f"classifier must be a callable module (images -> logits), got {type(classifier).__name__}")
        if not is_integer(target, 0):
            raise ValueError(f"target={target!r} must be a class index (an integer >= 0)")
        self.classifier, self.target, self.batch_size = classifier, int(target), int(batch_size)
        self.name = f"p(class {self.target})"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        was = getattr(self.classifier, "training", False)
        if hasattr(self.classifier, "eval"):
            self.classifier.eval()
        try:
            device = next(self.classifier.parameters()).device  # type: ignore[union-attr]
        except (AttributeError, StopIteration):
            device = images.device
        out = []
        try:
            for start in range(0, len(images), self.batch_size):
                logits = self.classifier(images[start:start + self.batch_size].float().to(device))
                if logits.dim() != 2 or self.target >= logits.shape[1]:
                    raise ValueError(f"the classifier returned logits of shape {tuple(logits.shape)}; class "
                                     f"{self.target} needs (B, K) with K > {self.target}")
                out.append(torch.softmax(logits.double(), dim=1)[:, self.target].cpu())
        finally:  # the classifier's train/eval mode as it was, also after an error
            if hasattr(self.classifier, "train"):
                self.classifier.train(was)
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"ClassifierProbability(target={self.target})"


def resolve_outcome(outcome: str | Outcome) -> tuple[str, Outcome]:
    """``(name, callable)`` of an outcome given by name (``"stroke_area"``, a morphometric) or as a callable.

    Example:
        >>> resolve_outcome("stroke_area")[0], resolve_outcome("intensity")[0]
        ('stroke_area', 'intensity')
        >>> resolve_outcome(lambda x: x.mean((1, 2, 3)))[0]
        '<lambda>'
    """
    if isinstance(outcome, str):
        if outcome == "stroke_area":
            return "stroke_area", StrokeArea()
        if outcome in _MORPHOMETRICS:
            return outcome, Morphometric(outcome)
        raise ValueError(f"unknown outcome {outcome!r}; use 'stroke_area', one of {list(_MORPHOMETRICS)}, or a "
                         f"callable mapping images (B, C, H, W) in [-1, 1] to one number per image (B,)")
    if not callable(outcome):
        raise TypeError(f"outcome must be a name or a callable images -> (B,) values, got {type(outcome).__name__}")
    name = getattr(outcome, "name", None) or getattr(outcome, "__name__", None) or type(outcome).__name__
    return str(name), outcome


def _evaluate(outcome: Outcome, name: str, images: Tensor) -> Tensor:
    values = outcome(images)
    values = torch.as_tensor(values).detach().reshape(-1) if not isinstance(values, Tensor) else values.detach()
    if values.dim() != 1 or values.shape[0] != images.shape[0]:
        raise ValueError(f"outcome {name!r} returned shape {tuple(values.shape)} for {images.shape[0]} images; it "
                         f"must return one number per image, shape ({images.shape[0]},)")
    values = values.double().cpu()
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"outcome {name!r} is NaN or infinite for {bad} image(s) (e.g. a blank image has no "
                         f"thickness); choose an outcome defined on every image")
    return values


# ================================================================================ intervals
def confidence_interval(values: Tensor | np.ndarray | Sequence[float], method: str = "bootstrap",
                        confidence_level: float = 0.95, n_bootstrap: int = 2000,
                        seed: int | torch.Generator = 0) -> tuple[float, float]:
    """Confidence interval of the mean of ``values``: percentile bootstrap or normal (``mean +- z sd / sqrt(n)``).

    Example:
        >>> lo, hi = confidence_interval([1.0, 2.0, 3.0, 4.0], method="normal")
        >>> round(lo, 3), round(hi, 3)
        (1.235, 3.765)
    """
    if method not in CI_METHODS:
        raise ValueError(f"unknown ci method {method!r}; allowed: {list(CI_METHODS)}")
    if not is_number(confidence_level, 0.0, 1.0, low_open=True, high_open=True):
        raise ValueError(f"confidence_level={confidence_level!r} must be a number in (0, 1), e.g. 0.95")
    v = torch.as_tensor(np.asarray(values, dtype=np.float64) if not isinstance(values, Tensor) else values,
                        dtype=torch.float64).reshape(-1).cpu()
    n = v.numel()
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 units, got {n}")
    alpha = 1.0 - float(confidence_level)
    if method == "normal":
        from scipy.stats import norm

        half = float(norm.ppf(1.0 - alpha / 2.0)) * float(v.std(unbiased=True)) / math.sqrt(n)
        m = float(v.mean())
        return m - half, m + half
    if not is_integer(n_bootstrap, 100):
        raise ValueError(f"n_bootstrap={n_bootstrap!r} must be an integer >= 100, e.g. 2000")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (int(n_bootstrap), n), generator=gen)
    means = v[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([alpha / 2.0, 1.0 - alpha / 2.0], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


# ================================================================================ results
@dataclass(frozen=True)
class ImageEffect:
    """An image-level effect: per-unit outcome differences and their average with a confidence interval.

    Attributes:
        outcome: the outcome's name.
        do: the intervention of the treated arm.
        control: the intervention of the baseline arm; ``None`` when the baseline is the factual image.
        individual: ``(B,)`` float64, ``outcome(treated_b) - outcome(baseline_b)`` per unit.
        treated_outcome: ``(B,)`` outcome of the treated images.
        baseline_outcome: ``(B,)`` outcome of the baseline images.
        value: the average effect, ``individual.mean()``.
        confidence_interval: ``(low, high)`` of the average at ``confidence_level``.
        confidence_level: e.g. 0.95.
        ci_method: ``"bootstrap"`` (percentile, over units) or ``"normal"``.
        source: where the images came from (``"pipeline"``, ``"ground truth"``, ...).
        images: the treated images ``(B, C, H, W)``.
        baseline_images: the baseline images.
        groups: guidance groups used for the treated arm (empty outside a pipeline).
        weights: their weights.
        settings: guidance, scale and steps used (empty outside a pipeline).
    """

    outcome: str
    do: Mapping[str, Any]
    control: Mapping[str, Any] | None
    individual: Tensor
    treated_outcome: Tensor
    baseline_outcome: Tensor
    value: float
    confidence_interval: tuple[float, float]
    confidence_level: float
    ci_method: str
    source: str = "pipeline"
    images: Tensor | None = field(default=None, repr=False, compare=False)
    baseline_images: Tensor | None = field(default=None, repr=False, compare=False)
    groups: list[list[str]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of units."""
        return int(self.individual.numel())

    def describe_arms(self) -> str:
        """``do(...)`` vs the baseline, in words."""
        base = "factual" if self.control is None else _fmt_do(self.control)
        return f"{_fmt_do(self.do)} vs {base}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no images)."""
        return {"outcome": self.outcome, "arms": self.describe_arms(), "source": self.source, "n": self.n,
                "value": self.value, "confidence_interval": list(self.confidence_interval),
                "confidence_level": self.confidence_level, "ci_method": self.ci_method,
                "treated_mean": float(self.treated_outcome.mean()),
                "baseline_mean": float(self.baseline_outcome.mean()),
                "groups": self.groups, "weights": self.weights, "settings": dict(self.settings)}

    def __str__(self) -> str:
        lo, hi = self.confidence_interval
        return (f"{self.source}: effect of {self.describe_arms()} on {self.outcome}: {self.value:.4g} "
                f"({self.confidence_level:.0%} {self.ci_method} CI [{lo:.4g}, {hi:.4g}], {self.n} units)")


def _fmt_do(do: Mapping[str, Any]) -> str:
    parts = []
    for k, v in do.items():
        if callable(v) and not isinstance(v, Tensor):
            parts.append(f"{k} := f({k})")
        elif isinstance(v, Tensor) and v.numel() > 1:
            parts.append(f"{k} := per-unit values")
        else:
            parts.append(f"{k} := {float(torch.as_tensor(v).reshape(-1)[0]):g}")
    return "do(" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class EffectComparison:
    """An effect estimate set beside a reference (ground truth or an attribute-level estimate).

    Attributes:
        name: what is compared, e.g. ``"pipeline vs ground truth"``.
        estimate: the estimate's value.
        estimate_ci: its confidence interval (None if it has none).
        reference: the reference value.
        reference_ci: the reference's confidence interval (None if it has none).
        difference: ``estimate - reference``.
        covered: the reference value lies inside the estimate's interval (None without one).
        overlap: the two intervals overlap (None unless both exist).
        unit_mae: mean ``|individual_estimate - individual_reference|`` over units (unit-level references only).
        unit_correlation: Pearson correlation of the individual effects (unit-level references only).
    """

    name: str
    estimate: float
    estimate_ci: tuple[float, float] | None
    reference: float
    reference_ci: tuple[float, float] | None
    difference: float
    covered: bool | None
    overlap: bool | None
    unit_mae: float | None = None
    unit_correlation: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def __str__(self) -> str:
        def ci(c: tuple[float, float] | None) -> str:
            return "" if c is None else f" [{c[0]:.4g}, {c[1]:.4g}]"

        text = (f"{self.name}: estimate {self.estimate:.4g}{ci(self.estimate_ci)} vs reference "
                f"{self.reference:.4g}{ci(self.reference_ci)}; difference {self.difference:+.4g}")
        if self.covered is not None:
            text += f"; reference {'inside' if self.covered else 'OUTSIDE'} the estimate's CI"
        if self.unit_mae is not None:
            text += f"; per-unit MAE {self.unit_mae:.4g}"
        if self.unit_correlation is not None:
            text += f", correlation {self.unit_correlation:.3f}"
        return text


# ================================================================================ estimation
def _summarise(name: str, do: Mapping[str, Any], control: Mapping[str, Any] | None, treated: Tensor,
               baseline: Tensor, ci: str, confidence_level: float, n_bootstrap: int, seed: int, source: str,
               **extra: Any) -> ImageEffect:
    individual = treated - baseline
    interval = confidence_interval(individual, ci, confidence_level, n_bootstrap, seed)
    return ImageEffect(name, dict(do), None if control is None else dict(control), individual, treated, baseline,
                       float(individual.mean()), interval, float(confidence_level), ci, source, **extra)


def effect_from_images(treated_images: Tensor, baseline_images: Tensor, outcome: str | Outcome = "stroke_area", *,
                       do: Mapping[str, Any] | None = None, control: Mapping[str, Any] | None = None,
                       ci: str = "bootstrap", confidence_level: float = 0.95, n_bootstrap: int = 2000,
                       seed: int = 0, source: str = "ground truth") -> ImageEffect:
    """The image-level effect between two given sets of images, unit by unit (e.g. from a renderer).

    Args:
        treated_images: ``(B, C, H, W)`` in [-1, 1], each unit under the intervention.
        baseline_images: the same units under the baseline (factual, or another intervention).
        outcome: a name (see :func:`resolve_outcome`) or a callable ``images -> (B,)``.
        do: the intervention, recorded in the result.
        control: the baseline intervention, recorded (``None``: factual).
        ci: ``"bootstrap"`` or ``"normal"``.
        confidence_level: level of the interval.
        n_bootstrap: bootstrap resamples.
        seed: seed of the bootstrap.
        source: label of the result.

    Returns:
        An :class:`ImageEffect`.

    Example:
        >>> import torch
        >>> x = -torch.ones(3, 1, 8, 8); y = x.clone(); y[:, :, 2:4, 2:4] = 1.0   # 4 more pixels each
        >>> effect_from_images(y, x, "stroke_area", ci="normal").value
        4.0
    """
    for label, imgs in (("treated_images", treated_images), ("baseline_images", baseline_images)):
        if not isinstance(imgs, Tensor) or imgs.dim() != 4:
            raise TypeError(f"{label} must be a (B, C, H, W) tensor in [-1, 1], got "
                            f"{type(imgs).__name__}{tuple(imgs.shape) if isinstance(imgs, Tensor) else ''}")
    if treated_images.shape != baseline_images.shape:
        raise ValueError(f"treated_images {tuple(treated_images.shape)} and baseline_images "
                         f"{tuple(baseline_images.shape)} must have the same shape: one of each per unit")
    name, fn = resolve_outcome(outcome)
    return _summarise(name, do or {}, control, _evaluate(fn, name, treated_images),
                      _evaluate(fn, name, baseline_images), ci, confidence_level, n_bootstrap, seed, source,
                      images=treated_images, baseline_images=baseline_images)


@torch.no_grad()
def image_effect(pipeline: Any, images: Tensor, parents: Mapping[str, Any], do: Mapping[str, Any],
                 outcome: str | Outcome = "stroke_area", *, control: Mapping[str, Any] | None = None,
                 guidance: str | None = None, scale: float | None = None, steps: int | None = None,
                 invariant_weight: float | None = None, seed: int = 0, ci: str = "bootstrap",
                 confidence_level: float = 0.95, n_bootstrap: int = 2000, chunk_size: int | None = None,
                 progress: bool = False) -> ImageEffect:
    """Estimate the effect of ``do`` on an image-level ``outcome`` from counterfactual images, unit by unit.

    Each unit is abducted once (SCM noise and DDIM inversion under its factual parents); the treated arm
    (and the ``control`` arm, if given) is decoded from the same ``x_T`` with the pipeline's guidance. The
    individual effect is ``outcome(treated) - outcome(baseline)``, where the baseline is the factual image
    (``control=None``) or the counterfactual under ``control``. Contrasting two counterfactual arms
    cancels most of the model's reconstruction error and matches an attribute-level ATE between two
    treatment values (``E[Y | do(t = b)] - E[Y | do(t = a)]``).

    Args:
        pipeline: a :class:`~pipeline.core.CounterfactualPipeline`.
        images: factual images ``(B, C, H, W)`` in [-1, 1], one per unit.
        parents: their attributes, every attribute node -> ``(B,)``.
        do: the intervention (values as in ``CounterfactualPipeline.counterfactual``).
        outcome: a name (``"stroke_area"``, ``"thickness"``, ``"intensity"``, ``"slant"``) or a callable
            ``images -> (B,)`` (e.g. :class:`ClassifierProbability`).
        control: a baseline intervention (``None``: the factual image).
        guidance: ``"dcfg"``, ``"cfg"`` or ``"none"`` (default: the pipeline's).
        scale: guidance scale (default: the pipeline's default for the intervened nodes).
        steps: DDIM steps (default: the pipeline's).
        invariant_weight: DCFG weight of the invariant group (default: the pipeline's).
        seed: seed of the SCM's abduction of discrete noise and of the bootstrap.
        ci: ``"bootstrap"`` (percentile, over units) or ``"normal"``.
        confidence_level: level of the interval.
        n_bootstrap: bootstrap resamples.
        chunk_size: rows per batched network call (default: the pipeline's).
        progress: tqdm bar over network evaluations.

    Returns:
        An :class:`ImageEffect` (``source="pipeline"``) with the treated and baseline images.

    Raises:
        TypeError, ValueError: bad images, parents, interventions, outcome or settings (checked before any
            network call).

    Example:
        >>> from pipeline import CounterfactualPipeline                                  # doctest: +SKIP
        >>> from pipeline.datasets import MorphoMNIST                                    # doctest: +SKIP
        >>> pipe, test = CounterfactualPipeline.pretrained(), MorphoMNIST("test", max_sources=20)  # doctest: +SKIP
        >>> eff = image_effect(pipe, test.images, test.attributes, {"thickness": 3.0}, "stroke_area",
        ...                    control={"thickness": 2.0}, steps=20)                     # doctest: +SKIP
        >>> print(eff)                                                                   # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from pipeline.evaluation.engine import QueryEngine, nfe_per_step
    from pipeline.groups import resolve_guidance
    from pipeline.options import inversion_predictor

    # --- validate everything before any network call
    config = pipeline.config
    name, fn = resolve_outcome(outcome)
    if ci not in CI_METHODS:
        raise ValueError(f"unknown ci method {ci!r}; allowed: {list(CI_METHODS)}")
    images = pipeline._check_images(images)
    batch = images.shape[0]
    if batch < 2:
        raise ValueError(f"an average effect with a confidence interval needs at least 2 units, got {batch} image")
    parents = pipeline._check_parents(parents, batch)
    if not isinstance(do, Mapping) or not do:
        raise ValueError(f"do={do!r} must be a non-empty dict node -> value, e.g. {{'thickness': 3.0}}")
    arms: dict[str, dict[str, Any]] = {"treated": pipeline._check_do(do)}
    if control is not None:
        if not isinstance(control, Mapping) or not control:
            raise ValueError(f"control={control!r} must be None (the factual image) or a non-empty dict node -> "
                             f"value, e.g. {{'thickness': 2.0}}")
        arms["control"] = pipeline._check_do(control)
    guidance = config.guidance if guidance is None else guidance
    steps = config.steps if steps is None else steps
    if not is_integer(steps, 1, python_int=True):
        raise ValueError(f"steps={steps!r} must be a positive integer (e.g. 50)")
    iw = config.invariant_weight if invariant_weight is None else invariant_weight
    plans = {}
    for arm, arm_do in arms.items():
        arm_scale = config.default_scale(list(arm_do)) if scale is None else scale
        groups, weights = resolve_guidance(pipeline.graph, list(arm_do), guidance, arm_scale, None, None, iw,
                                           config.descendant_weight)
        plans[arm] = (arm_do, arm_scale, groups, weights)

    refine = int(getattr(config, "refine_steps", 0) or 0)
    dcfg_form = getattr(config, "dcfg_form", "paper")
    inversion = solver_nfe(getattr(config, "solver", "ddim"), steps, refine, inversion_predictor(config, refine))[0]
    total = batch * (inversion
                     + steps * sum(nfe_per_step(guidance, p[2], p[3], dcfg_form) for p in plans.values()))
    bar = tqdm(total=total, unit="nfe", unit_scale=True, desc=f"image effect on {name}", disable=not progress)
    try:
        engine = QueryEngine(pipeline, chunk_size=chunk_size, bar=bar)
        # 1. Abduction (attributes), 2. Action, 3. Prediction (attributes): cheap, and they check the
        #    intervention values against the nodes' supports before any network call.
        u = pipeline.scm.abduct(parents, seed=seed)
        cf = {arm: pipeline.scm.predict(u, do=plan[0]) for arm, plan in plans.items()}
        # 1. Abduction (image): one DDIM inversion per unit, shared by both arms.
        x_T = engine.invert(images, parents, steps)
        # 3. Prediction (image): decode the shared x_T under each arm's counterfactual parents.
        decoded = {arm: engine.decode(x_T, cf[arm], guidance, plan[2], plan[3], steps) for arm, plan in plans.items()}
    finally:
        bar.close()
    # 4. Outcome, unit by unit.
    treated = _evaluate(fn, name, decoded["treated"])
    baseline_images = decoded.get("control", images)
    baseline = _evaluate(fn, name, baseline_images)
    _, scale_t, groups_t, weights_t = plans["treated"]
    settings = {"guidance": guidance, "scale": float(scale_t), "steps": int(steps), "invariant_weight": float(iw)}
    return _summarise(name, do, control, treated, baseline, ci, confidence_level, n_bootstrap, seed, "pipeline",
                      images=decoded["treated"], baseline_images=baseline_images, groups=groups_t,
                      weights=[float(w) for w in weights_t], settings=settings)


def morpho_true_effect(dataset: Any, rows: Any, do: Mapping[str, Any], outcome: str | Outcome = "stroke_area", *,
                       control: Mapping[str, Any] | None = None, ci: str = "bootstrap",
                       confidence_level: float = 0.95, n_bootstrap: int = 2000, seed: int = 0) -> ImageEffect:
    """The ground-truth image-level effect on Morpho-MNIST rows, from the benchmark's renderer.

    Each row is re-rendered with its own recorded noise under ``do`` (and under ``control``, else its
    factual image is the baseline): :meth:`MorphoMNIST.true_counterfactual`.

    Args:
        dataset: a :class:`~pipeline.datasets.MorphoMNIST`.
        rows: the dataset rows (ints, a slice or an index tensor).
        do: intervention on ``thickness`` and/or ``intensity``.
        outcome: as in :func:`image_effect`.
        control: a baseline intervention (``None``: the factual images).
        ci: ``"bootstrap"`` or ``"normal"``.
        confidence_level: level of the interval.
        n_bootstrap: bootstrap resamples.
        seed: seed of the bootstrap.

    Example:
        >>> from pipeline.datasets import MorphoMNIST
        >>> ds = MorphoMNIST("test", max_sources=8, progress=False, n_jobs=1, cache=False)
        >>> truth = morpho_true_effect(ds, range(8), {"thickness": 3.5}, control={"thickness": 1.5})
        >>> truth.value > 0    # thicker strokes cover more pixels
        True
    """
    index = torch.as_tensor(list(rows) if isinstance(rows, range) else rows).long().reshape(-1) \
        if not isinstance(rows, slice) else torch.arange(len(dataset))[rows]
    noise = dataset.noise_of(index)
    _, treated = dataset.true_counterfactual(noise, do)
    baseline = dataset.images[index] if control is None else dataset.true_counterfactual(noise, control)[1]
    return effect_from_images(treated, baseline, outcome, do=do, control=control, ci=ci,
                              confidence_level=confidence_level, n_bootstrap=n_bootstrap, seed=seed,
                              source="ground truth (renderer)")


# ================================================================================ comparison
def _as_reference(ref: Any) -> tuple[float, tuple[float, float] | None, Tensor | None]:
    if isinstance(ref, ImageEffect):
        return ref.value, ref.confidence_interval, ref.individual
    if hasattr(ref, "value") and hasattr(ref, "confidence_interval"):  # scm.effects.EffectEstimate
        ci = ref.confidence_interval
        return float(ref.value), None if ci is None else (float(ci[0]), float(ci[1])), None
    if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[1], (tuple, list)):
        return float(ref[0]), (float(ref[1][0]), float(ref[1][1])), None
    if isinstance(ref, Tensor) and ref.numel() == 1:
        return float(ref), None, None
    if is_number(ref, finite=False):
        return float(ref), None, None
    raise TypeError(f"cannot compare with a {type(ref).__name__}: pass an ImageEffect, an EffectEstimate "
                    f"(scm.effects), a number, or (value, (low, high))")


def compare_effects(estimate: Any, reference: Any, name: str | None = None) -> EffectComparison:
    """Set an effect estimate beside a reference: ground truth, or an attribute-level estimate.

    Both may be an :class:`ImageEffect`, an ``scm.effects.EffectEstimate`` (dowhy), a number (e.g.
    ``SCM.average_causal_effect``) or ``(value, (low, high))``. Two :class:`ImageEffect` over the same units
    are also compared unit by unit (MAE and correlation of the individual effects).

    Example:
        >>> c = compare_effects((10.0, (8.0, 12.5)), 11.0, name="image vs SCM ATE")
        >>> c.covered, c.difference
        (True, -1.0)
    """
    est, est_ci, est_units = _as_reference(estimate)
    ref, ref_ci, ref_units = _as_reference(reference)
    covered = None if est_ci is None else bool(est_ci[0] <= ref <= est_ci[1])
    overlap = None if est_ci is None or ref_ci is None else bool(est_ci[0] <= ref_ci[1] and ref_ci[0] <= est_ci[1])
    mae = corr = None
    if est_units is not None and ref_units is not None:
        if est_units.shape != ref_units.shape:
            raise ValueError(f"the two effects have {est_units.numel()} and {ref_units.numel()} units; a unit-level "
                             f"comparison needs the same units in the same order")
        mae = float((est_units - ref_units).abs().mean())
        if float(est_units.std()) > 0 and float(ref_units.std()) > 0 and est_units.numel() > 2:
            corr = float(np.corrcoef(est_units.numpy(), ref_units.numpy())[0, 1])
    if name is None:
        name = f"{getattr(estimate, 'source', 'estimate')} vs {getattr(reference, 'source', 'reference')}"
    return EffectComparison(name, est, est_ci, ref, ref_ci, est - ref, covered, overlap, mae, corr)
