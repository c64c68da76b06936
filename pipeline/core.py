"""The whole counterfactual query: a Pyro SCM for the attributes plus a diffusion image mechanism.

The three steps of a counterfactual (Pearl), as :meth:`CounterfactualPipeline.counterfactual` runs them:

1. **Abduction.** ``scm.abduct(parents)`` gives the exogenous noise of every attribute, and DDIM
   inversion of the image under its factual parents gives the image noise ``x_T``.
2. **Action.** ``do`` is applied to the SCM (``pyro.poutine.do`` inside ``scm.predict``).
3. **Prediction.** The modified SCM maps the noise to the counterfactual parents; ``x_T`` is decoded
   under them with DDIM and (decoupled) classifier-free guidance. DCFG's default groups come from the
   DAG: the intervened nodes and their descendants are amplified, the other parents are anchored.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from dcfg_io.atomic import atomic_write_bytes
from dcfg_io.checks import is_integer, is_number
from dcfg_io.folders import SavedKind, find_saved_dir, save_dir
from dcfg_io.reads import check_entry, check_keys, read_json
from diffusion import ConditionalUNet, ddim_sample, guided_eps_fn
from diffusion.ddim import PREDICTORS, check_power
from diffusion.guidance import APG_ETA, APG_MOMENTUM, APG_THRESHOLD, check_apg, check_interval, check_variant
from diffusion.solvers import check_solver
from diffusion.solvers import invert as solver_invert
from diffusion.solvers import sample as solver_sample
from scm import SCM, CausalGraph, DoValue
from scm.support import as_values

from .generate.interventions import check_interventions
from .groups import resolve_guidance
from .options import (
    FROM_CONFIG,
    anchor_renamed,
    check_dcfg_form,
    check_descendant_weight,
    diffusion_anchor,
    former_anchor,
    grid_power,
    inversion_predictor,
    renamed_arguments,
    warn_deprecated,
)

#: what scores a pipeline's counterfactuals: see :meth:`CounterfactualPipeline.make_oracles`
ORACLE_KINDS = ("morpho", "morpho-colour", "predictors")

_FORMAT_VERSION = 1
#: Bounds of PipelineConfig's counts (checked on creation and on load).
_COUNT_LIMITS = {"steps": 100_000, "chunk_size": 1_000_000, "refine_steps": 1000}
#: the top-level keys of a saved pipeline's config.json
_CONFIG_KEYS = ("format_version", "graph", "pipeline", "classifier", "predictors", "oracles", "card")


def _is_pipeline_config(c: Any) -> bool:
    return isinstance(c, dict) and {"format_version", "graph", "pipeline"} <= set(c)


#: a saved pipeline folder: its config.json (written last) has format_version, graph and pipeline entries
SAVED_KIND = SavedKind("pipeline", "config.json", _is_pipeline_config)


@dataclass(frozen=True)
class CounterfactualResult:
    """The answer to a counterfactual query.

    Attributes:
        image: counterfactual images, (B, C, H, W) in [-1, 1].
        parents: counterfactual attributes, name -> (B,) tensor (every SCM node).
        groups: guidance groups used to decode, name lists, with ``weights`` beside them.
        weights: guidance weight of each group.
        noise: abducted exogenous noise: every attribute's noise, plus ``"x_T"`` for the image.
        factual_parents: the attributes the query started from (copies: never the caller's tensors).
        dcfg_form: DCFG's formulation used to decode (``"paper"`` or ``"conditional"``; see
            :mod:`pipeline.options`); it does not apply to CFG or no guidance.
        variant: the guidance variant used (``None``, ``"apg"`` or ``"cfgpp"``; docs/guidance.md).
        interval: the guidance interval ``(lo, hi)`` used, or ``None`` (guidance at every step).
    """

    image: Tensor
    parents: dict[str, Tensor]
    groups: list[list[str]]
    weights: list[float]
    noise: dict[str, Tensor]
    factual_parents: dict[str, Tensor] = field(default_factory=dict)
    dcfg_form: str = "paper"
    variant: str | None = None
    interval: tuple[float, float] | None = None

    @property
    def anchor(self) -> str:
        """Deprecated: :attr:`dcfg_form` under its former name and values (``"null"``, ``"full"``)."""
        warn_deprecated(f"CounterfactualResult.anchor is deprecated: read dcfg_form ({self.dcfg_form!r})", 2)
        return former_anchor(self.dcfg_form)


@dataclass(frozen=True)
class PipelineConfig:
    """Defaults of a pipeline, saved in its ``config.json``.

    Attributes:
        guidance: default guidance method (``"dcfg"``, ``"cfg"`` or ``"none"``).
        scale: default guidance scale of the affected group (DCFG) or global scale (CFG).
        steps: default number of solver steps for inversion and decoding (28 with the default grid and
            inversion: 1 + 28 network calls to invert, 28 decoding steps).
        invariant_weight: DCFG weight of the invariant group.
        chunk_size: rows per batched forward; large queries are processed in chunks of this size so
            that peak memory does not grow with the number of images.
        attribute_scales: per-intervened-attribute default scales, used when a query gives no
            ``scale`` (with several intervened attributes, the smallest of theirs); attributes not
            listed fall back to ``scale``. Thickness, for instance, overshoots at a scale the
            digit needs.
        solver: the default solver of inversion and decoding: ``"ddim"`` (default), ``"dpmpp_2m"`` or
            ``"unipc"`` (:mod:`diffusion.solvers`; their measured quality and cost are in
            ``docs/benchmarks.md``).
        refine_steps: fixed-point iterations per DDIM inversion step (0 = plain DDIM inversion);
            each costs one more network call per step and makes inversion closer to exact (the default is
            one; docs/benchmarks.md has the measured gain).
        invert_predictor: the first guess the refinement starts from (:func:`diffusion.ddim.ddim_invert`):
            ``"extrapolated"`` (default; no network call, ``1 + refine_steps * steps`` calls per inversion) or
            ``"explicit"`` (one more call per step, ``(1 + refine_steps) * steps``). With ``refine_steps=0`` the
            inversion is plain DDIM whatever this says. A saved config without it loads as ``"explicit"``, the
            inversion it was saved with.
        timestep_power: the exponent p of the DDIM grid, ``tau_i = round(T (i / S)^p) - 1``
            (:func:`diffusion.ddim.ddim_timesteps`): 1 is uniform; the default 1.5 puts more of the steps at low
            noise, which at 28 steps reconstructs and follows interventions better than uniform 50 steps
            (docs/solvers.md). DDIM only (the diffusers solvers keep their uniform grid). A saved config without
            it loads as 1, the grid it was saved with.
        descendant_weight: DCFG weight of the affected image parents that are not intervened on (the
            intervention's descendants): a number, or ``"scale"`` (default, the paper's grouping), which gives
            them the intervention's scale. See :func:`pipeline.groups.resolve_guidance`. (``None``, its former
            spelling of ``"scale"``, is deprecated; a saved ``null`` loads as ``"scale"``.)
        dcfg_form: DCFG's formulation. ``"paper"`` (default) is the paper's equation,
            ``eps(null) + sum_m w_m (eps(c^m) - eps(null))``; ``"conditional"`` amplifies each group given the
            others, ``eps(c) + sum_m (w_m - 1) (eps(c) - eps(c^-m))``, so that weight 1 is the plain
            conditional and groups at weight 1 cost no network rows (see :mod:`pipeline.options`). Its former
            name ``dcfg_anchor`` (values ``"null"``, ``"full"``) still works, with a deprecation warning.
        anchor_scales: per-attribute DCFG anchor weights: when a query leaves an image parent invariant, that
            parent gets a group of its own at this weight (parents not listed share the invariant group at
            ``invariant_weight``). ``dcfg calibrate`` measures them, with ``attribute_scales``
            (:func:`pipeline.calibrate.calibrate_guidance`).
        variant: default guidance variant of queries: ``None`` (plain CFG / DCFG), ``"apg"`` (adaptive
            projected guidance) or ``"cfgpp"`` (CFG++, with its matching inversion); see docs/guidance.md. A
            query with guidance ``"none"`` ignores it.
        interval: default guidance interval ``(lo, hi)`` in timesteps of the image model's schedule
            (``0 <= lo < hi <= T``): guidance only where ``lo <= t <= hi``, the plain conditional elsewhere.
        apg_eta: APG's weight of the parallel part, in [0, 1] (0: removed, the paper's default).
        apg_threshold: APG's norm threshold on the denoised-space update per image (``None`` or 0: off).
        apg_momentum: APG's momentum, in (-1, 1) (the paper's -0.5; 0: none).
    """

    guidance: str = "dcfg"
    scale: float = 2.0
    steps: int = 28
    invariant_weight: float = 1.0
    chunk_size: int = 256
    refine_steps: int = 1
    invert_predictor: str = "extrapolated"
    timestep_power: float = 1.5
    solver: str = "ddim"
    attribute_scales: dict[str, float] = field(default_factory=dict)
    descendant_weight: float | str = "scale"
    dcfg_form: str = "paper"
    anchor_scales: dict[str, float] = field(default_factory=dict)
    variant: str | None = None
    interval: tuple[float, float] | None = None
    apg_eta: float = APG_ETA
    apg_threshold: float | None = APG_THRESHOLD
    apg_momentum: float = APG_MOMENTUM

    def __post_init__(self) -> None:
        def finite(name: str, value: Any) -> None:
            if not is_number(value):
                raise ValueError(f"pipeline config {name}={value!r} must be a finite number")

        def count(name: str, value: Any, low: int) -> None:
            high = _COUNT_LIMITS[name]
            if not is_integer(value, low, high, python_int=True):
                raise ValueError(f"pipeline config {name}={value!r:.80} must be an integer in {low}..{high}")

        if self.guidance not in ("dcfg", "cfg", "none"):
            raise ValueError(f"pipeline config guidance={self.guidance!r} must be one of 'dcfg', 'cfg', 'none'")
        finite("scale", self.scale)
        finite("invariant_weight", self.invariant_weight)
        if self.descendant_weight is None:
            warn_deprecated("PipelineConfig(descendant_weight=None) is deprecated: use descendant_weight='scale' "
                            "(the intervention's scale, the paper's grouping)", 5)
            object.__setattr__(self, "descendant_weight", "scale")
        try:
            object.__setattr__(self, "descendant_weight", check_descendant_weight(self.descendant_weight))
            object.__setattr__(self, "dcfg_form", check_dcfg_form(self.dcfg_form))
        except ValueError as e:
            raise ValueError(f"pipeline config {e}") from None
        count("steps", self.steps, 1)
        count("chunk_size", self.chunk_size, 1)
        count("refine_steps", self.refine_steps, 0)
        try:
            object.__setattr__(self, "timestep_power", check_power(self.timestep_power))
        except ValueError as e:
            raise ValueError(f"pipeline config timestep_{e}") from None
        if self.invert_predictor not in PREDICTORS:
            raise ValueError(f"pipeline config invert_predictor={self.invert_predictor!r:.80} is not one of "
                             f"{list(PREDICTORS)}")
        try:
            check_solver(self.solver)
        except ValueError as e:
            raise ValueError(f"pipeline config {e}") from None
        if not isinstance(self.attribute_scales, Mapping):
            raise ValueError(f"pipeline config attribute_scales={self.attribute_scales!r} must be a dict "
                             f"attribute -> scale")
        for name, value in self.attribute_scales.items():
            finite(f"attribute_scales[{name!r}]", value)
        if not isinstance(self.anchor_scales, Mapping):
            raise ValueError(f"pipeline config anchor_scales={self.anchor_scales!r} must be a dict attribute -> weight")
        for name, value in self.anchor_scales.items():
            finite(f"anchor_scales[{name!r}]", value)
            if value <= 0:
                raise ValueError(f"pipeline config anchor_scales[{name!r}]={value!r} must be positive")
        try:  # the variant's settings, normalised (a JSON interval is a list; "none" is None)
            object.__setattr__(self, "variant", check_variant(self.variant))
            object.__setattr__(self, "interval", check_interval(self.interval))
            eta, threshold, momentum = check_apg(self.apg_eta, self.apg_threshold, self.apg_momentum)
        except ValueError as e:
            raise ValueError(f"pipeline config {e}") from None
        object.__setattr__(self, "apg_eta", eta)
        object.__setattr__(self, "apg_threshold", threshold)
        object.__setattr__(self, "apg_momentum", momentum)

    def default_scale(self, intervened: Sequence[str]) -> float:
        """The scale a query on ``intervened`` uses when it passes none."""
        known = [float(self.attribute_scales[n]) for n in intervened if n in self.attribute_scales]
        return min(known) if known else float(self.scale)

    @property
    def dcfg_anchor(self) -> str:
        """Deprecated: :attr:`dcfg_form` under its former name and values (``"null"``, ``"full"``)."""
        warn_deprecated(f"PipelineConfig.dcfg_anchor is deprecated: read dcfg_form ({self.dcfg_form!r})", 2)
        return former_anchor(self.dcfg_form)

    @classmethod
    def from_saved(cls, settings: Mapping[str, Any]) -> "PipelineConfig":
        """The config of a saved ``config.json``'s ``pipeline`` entry; the spellings of earlier versions load
        silently (``dcfg_anchor`` ``"null"`` / ``"full"`` as ``dcfg_form``, ``descendant_weight: null`` as
        ``"scale"``)."""
        settings = dict(settings)
        if "dcfg_anchor" in settings:
            settings.setdefault("dcfg_form", check_dcfg_form(settings.pop("dcfg_anchor"), "dcfg_anchor", warn=False))
        elif "dcfg_form" in settings:
            settings["dcfg_form"] = check_dcfg_form(settings["dcfg_form"], warn=False)
        if "descendant_weight" in settings and settings["descendant_weight"] is None:
            settings["descendant_weight"] = "scale"
        settings.setdefault("invert_predictor", "explicit")  # saved before the extrapolated predictor existed
        settings.setdefault("timestep_power", 1.0)  # ... and before the grid had an exponent
        return cls(**settings)


#: the keys a saved config.json's ``pipeline`` entry may hold: PipelineConfig's fields, and the former dcfg_anchor
SAVED_SETTINGS = (*PipelineConfig.__dataclass_fields__, "dcfg_anchor")

# the former keyword dcfg_anchor= ("null" / "full") of PipelineConfig(...) and dataclasses.replace(config, ...)
PipelineConfig.__init__ = renamed_arguments(  # type: ignore[method-assign]
    dcfg_anchor=("dcfg_form", lambda v: check_dcfg_form(v, "dcfg_anchor", warn=False)))(PipelineConfig.__init__)


class CounterfactualPipeline:
    """SCM + conditional diffusion model answering image counterfactual queries.

    Args:
        graph: the causal graph; must contain exactly one image node whose parents are the
            attributes the image model is conditioned on.
        scm: the attribute SCM over the graph's non-image nodes.
        image_model: the conditional denoiser; its attribute names must equal the image's parents.
        config: defaults for guidance, scale, steps.
        classifier: optional digit classifier of the Morpho benchmarks (:class:`~pipeline.classifier.
            DigitClassifier`), stored beside the model and used by their oracles.
        predictors: optional :class:`~pipeline.predictors.PredictorSet`, one anti-causal predictor per
            image parent: the oracles of any dataset.
        oracles: what scores this pipeline's counterfactuals (:meth:`make_oracles`): ``"morpho"`` (morphometry
            and the digit classifier), ``"morpho-colour"`` (the colour benchmark's measurement) or
            ``"predictors"``; ``None`` picks ``"predictors"`` when there are predictors, else ``"morpho"``
            when there is a classifier.
        card: facts for the model card (``README.md`` of the saved folder): training command, data
            fingerprint, steps, loss, evaluation headline (see :mod:`pipeline.card`).

    Example:
        >>> pipe = CounterfactualPipeline.pretrained()  # doctest: +SKIP
        >>> from pipeline.datasets import MorphoMNIST  # doctest: +SKIP
        >>> ds = MorphoMNIST("test", samples_per_digit=1)  # doctest: +SKIP
        >>> x, a = ds.images[:4], {k: v[:4] for k, v in ds.attributes.items()}  # doctest: +SKIP
        >>> res = pipe.counterfactual(x, a, do={"thickness": 4.0}, steps=20)  # doctest: +SKIP
        >>> res.image.shape  # doctest: +SKIP
        torch.Size([4, 1, 28, 28])
    """

    def __init__(self, graph: CausalGraph, scm: SCM, image_model: ConditionalUNet,
                 config: PipelineConfig | None = None, classifier: torch.nn.Module | None = None,
                 predictors: Any = None, oracles: str | None = None, card: Mapping[str, Any] | None = None):
        if graph.image_node is None:
            raise ValueError("the graph has no node of kind 'image'; a pipeline needs one")
        model_attrs = [a.name for a in image_model.config.attributes]
        parents = list(graph.image_parents())
        if sorted(model_attrs) != sorted(parents):
            raise ValueError(
                f"the image model is conditioned on {model_attrs}, but the image node "
                f"{graph.image_node!r} has parents {parents}; they must be the same attributes")
        shape = tuple(graph.spec(graph.image_node).shape or ())
        if tuple(image_model.config.image_shape) != shape:
            raise ValueError(f"the image model makes images of shape {tuple(image_model.config.image_shape)}, but "
                             f"the image node {graph.image_node!r} has shape {shape}; they must be equal")
        for attr in image_model.config.attributes:
            spec = graph.spec(attr.name)
            want = "categorical" if spec.is_discrete else "continuous"
            if attr.kind != want or (spec.is_discrete and attr.cardinality != (spec.cardinality or 2)):
                raise ValueError(f"the image model treats {attr.name!r} as {attr.kind}"
                                 f"{f' with {attr.cardinality} classes' if attr.cardinality else ''}, but the "
                                 f"graph declares it {spec.to_dict()}; they must agree")
        if scm.graph != graph:
            raise ValueError("the SCM was built on another graph than the pipeline's; pass the same CausalGraph")
        self.graph = graph
        self.scm = scm
        self.image_model = image_model
        self.config = config or PipelineConfig()
        try:
            check_interval(self.config.interval, self.num_timesteps)
        except ValueError as e:
            raise ValueError(f"pipeline config {e}") from None
        self.classifier = classifier
        self.predictors = predictors
        if oracles is None:
            oracles = "predictors" if predictors is not None else "morpho" if classifier is not None else None
        if oracles not in (None,) + ORACLE_KINDS:
            raise ValueError(f"oracles={oracles!r} must be one of {ORACLE_KINDS} (or None)")
        self.oracles = oracles
        self.card = dict(card or {})

    def make_oracles(self, dataset: Any = None, *, marginals: Mapping[str, Tensor] | None = None,
                     n_jobs: int | None = None) -> Any:
        """The :class:`~pipeline.evaluation.oracles.Oracles` that score this pipeline's counterfactuals.

        Args:
            dataset: the evaluated data: a ``MorphoMNIST`` / ``MorphoColour`` (their ground truth), or any
                dataset with ``.attributes`` (the marginals of the predictors' intervention values).
            marginals: node -> values to draw intervention values from (default: ``dataset.attributes``).
            n_jobs: morphometry processes.

        Raises:
            ValueError: the pipeline has nothing to score with (no classifier, no predictors).
        """
        from .evaluation.oracles import ColourOracles, MorphoOracles, PredictorOracles

        if self.oracles == "morpho":
            return MorphoOracles(dataset, self.classifier, n_jobs=n_jobs)
        if self.oracles == "morpho-colour":
            return ColourOracles(dataset, self.classifier, n_jobs=n_jobs)
        if self.oracles == "predictors":
            if marginals is None:
                table = getattr(dataset, "attributes", None)
                if not isinstance(table, Mapping):
                    raise ValueError("the predictors' oracles draw intervention values from the data's marginals: "
                                     "pass a dataset with .attributes or marginals=")
                marginals = table
            cont = {k: torch.as_tensor(marginals[k]) for k in self.graph.image_parents()
                    if self.graph.spec(k).is_continuous and k in marginals}
            card = {k: int(self.graph.spec(k).cardinality or 2) for k in self.graph.image_parents()
                    if self.graph.spec(k).is_discrete}
            return PredictorOracles(self.predictors, cont, card)
        raise ValueError("this pipeline has no oracles (no digit classifier, no predictors) to score counterfactuals "
                         "with; train it with `dcfg train`, which trains one predictor per image parent")

    # ------------------------------------------------------------------ validation
    def _check_images(self, images: Any) -> Tensor:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor of shape (B, C, H, W) in [-1, 1], "
                            f"got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a float tensor in [-1, 1], got dtype {images.dtype}; "
                            f"convert uint8 with `x.float() / 127.5 - 1`")
        shape = tuple(self.graph.spec(self.graph.image_node).shape)
        if images.dim() == len(shape):
            raise ValueError(f"images must be batched (B, {', '.join(map(str, shape))}); got "
                             f"{tuple(images.shape)}: add a batch dimension with `x[None]`")
        if images.dim() != len(shape) + 1 or tuple(images.shape[1:]) != shape:
            raise ValueError(f"images have shape {tuple(images.shape)}, but the image node "
                             f"{self.graph.image_node!r} expects (B, {', '.join(map(str, shape))})")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch (B=0)")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"image values span [{lo:.3g}, {hi:.3g}], outside [-1, 1]; rescale "
                             f"0..255 images with `x / 127.5 - 1` and [0, 1] ones with `2 * x - 1`")
        return images.clamp(-1.0, 1.0)

    def _check_parents(self, parents: Mapping[str, Any], batch: int) -> dict[str, Tensor]:
        if not isinstance(parents, Mapping):
            raise TypeError(f"parents must be a dict of node name -> tensor (B,), got "
                            f"{type(parents).__name__}")
        needed = list(self.graph.attribute_nodes())
        unknown = [k for k in parents if k not in needed]
        if unknown:
            raise ValueError(f"parents has unknown node(s) {unknown}; the attribute nodes are {needed}")
        missing = [k for k in needed if k not in parents]
        if missing:
            raise ValueError(f"parents is missing node(s) {missing}: the SCM needs every attribute "
                             f"{needed} to abduct its noise")
        out: dict[str, Tensor] = {}
        for k in needed:
            try:
                v = torch.as_tensor(parents[k])
            except (TypeError, ValueError, RuntimeError) as e:
                raise TypeError(f"parents[{k!r}] = {parents[k]!r:.80} is not numeric ({e}); pass a (B,) tensor or "
                                f"a number") from None
            if v.dim() == 0:
                v = v.expand(batch)
            if v.dim() != 1 or v.shape[0] != batch:
                raise ValueError(f"parents[{k!r}] has shape {tuple(v.shape)}, expected ({batch},) "
                                 f"to match the {batch} images")
            # in the support, and in the form the models take: float values, int64 class indices
            out[k] = as_values(k, self.graph.spec(k), v, what="parents")
        return out

    def _check_do(self, do: Mapping[str, Any] | None, n: int | None = None) -> dict[str, Any]:
        """``do`` checked by :func:`pipeline.generate.check_interventions` (nodes and values by the SCM's own check;
        ``n``: the rows a tensor must have)."""
        return check_interventions(do, self.scm, n)

    # ------------------------------------------------------------------ the query
    @anchor_renamed
    def counterfactual(
        self,
        images: Tensor,
        parents: Mapping[str, Any],
        do: Mapping[str, DoValue] | None = None,
        guidance: str | None = None,
        scale: float | None = None,
        groups: Sequence[Sequence[str]] | str | None = None,
        weights: Sequence[float] | None = None,
        steps: int | None = None,
        seed: int | None = None,
        invariant_weight: float | None = None,
        chunk_size: int | None = None,
        progress: bool = False,
        descendant_weight: float | str = FROM_CONFIG,
        dcfg_form: str | None = None,
        variant: str | None = FROM_CONFIG,
        interval: Sequence[float] | None = FROM_CONFIG,
        apg_eta: float | None = None,
        apg_threshold: float | None = None,
        apg_momentum: float | None = None,
        solver: str | None = None,
    ) -> CounterfactualResult:
        """Answer "what would these images look like under ``do``?".

        Args:
            images: factual images (B, C, H, W) in [-1, 1].
            parents: factual attributes, every attribute node -> (B,) tensor (or a scalar).
            do: interventions, node -> number (broadcast), (B,) tensor, a shift of the factual value
                (:class:`~pipeline.generate.ShiftDo`, e.g. ``ShiftDo(1.0)``) or any callable of it (e.g.
                ``lambda t: t + 1``); per-image draws are drawn first (:func:`pipeline.generate.draw_interventions`).
                ``{}`` or ``None`` is the null query. A bool is refused (a class index is an integer), constants
                must lie in the node's support, and a shift needs a continuous node.
            guidance: ``"dcfg"`` (default), ``"cfg"`` (one global scale) or ``"none"``.
            scale: weight of the affected group (DCFG) or global weight (CFG), a finite number >= 0; by
                default the pipeline's per-attribute default for the intervened nodes (``config.default_scale``).
            groups: DCFG groups: ``None``/``"dag"`` (affected/invariant from the DAG),
                ``"per_attribute"``, or explicit lists of image-parent names.
            weights: one weight per explicit group.
            steps: DDIM steps used for both inversion and decoding.
            seed: seed for the SCM's abduction of discrete noise.
            invariant_weight: DCFG weight of the invariant group (default 1.0: conditioned, not
                amplified).
            chunk_size: rows per batched network call.
            progress: show tqdm bars.
            descendant_weight: DCFG weight of the intervention's descendants among the image's
                parents: a number, or ``"scale"`` (the intervention's scale, as in the paper); left out, the
                pipeline's ``config.descendant_weight``.
            dcfg_form: DCFG's formulation, ``"paper"`` or ``"conditional"`` (default: the pipeline's
                ``config.dcfg_form``; see :mod:`pipeline.options`).
            variant: guidance variant, ``None`` (none), ``"apg"`` or ``"cfgpp"``; left out, the pipeline's
                ``config.variant``, which guidance ``"none"`` ignores (an explicit variant with guidance
                ``"none"`` is an error). With ``"cfgpp"`` the image is inverted with CFG++'s pair at weight 1
                (:meth:`invert`), so that decoding at weight 1 under the factual parents reconstructs it.
            interval: guidance interval ``(lo, hi)`` in timesteps of the schedule, or ``None`` (every step); left
                out, the pipeline's ``config.interval``.
            apg_eta, apg_threshold, apg_momentum: APG's settings (``None``: the pipeline's; see
                :func:`diffusion.guidance.apg_update`; a threshold of 0 turns it off).
            solver: ``"ddim"``, ``"dpmpp_2m"`` or ``"unipc"`` for inversion and decoding (``None``: the
                pipeline's ``config.solver``); ``steps`` is then that solver's step count. ``"cfgpp"`` needs
                ``"ddim"``.

        The former spellings still work, with a deprecation warning: ``anchor="null"`` / ``"full"`` (now
        ``dcfg_form="paper"`` / ``"conditional"``), ``descendant_weight=None`` (now ``"scale"``) and ``"config"``
        for ``descendant_weight``, ``variant`` and ``interval`` (now: leave the argument out).

        Returns:
            A :class:`CounterfactualResult`.
        """
        config = self.config
        guidance = config.guidance if guidance is None else guidance
        if is_number(scale, finite=False) and scale < 0:
            raise ValueError(f"scale={scale!r} must be >= 0 (0: the unconditional prediction for the guided group, "
                             f"1: the plain conditional, above 1: amplified)")
        scale = config.default_scale(list(do or {})) if scale is None else scale
        steps = config.steps if steps is None else steps
        invariant_weight = config.invariant_weight if invariant_weight is None else invariant_weight
        descendant_weight = self._descendant_weight(descendant_weight)
        chunk_size = config.chunk_size if chunk_size is None else chunk_size
        dcfg_form = config.dcfg_form if dcfg_form is None else check_dcfg_form(dcfg_form)
        variant, interval, apg = self._variant_args(guidance, variant, interval, apg_eta, apg_threshold,
                                                    apg_momentum)
        solver = check_solver(config.solver if solver is None else solver)
        if solver != "ddim" and variant == "cfgpp":
            raise ValueError(f"variant='cfgpp' needs solver='ddim' (CFG++ gives two eps per step, which only the "
                             f"DDIM step takes); got solver={solver!r}")
        if not is_integer(steps, 1, python_int=True):
            raise ValueError(f"steps={steps!r} must be a positive integer (e.g. 50)")
        if not is_integer(chunk_size, 1, python_int=True):
            raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
        images = self._check_images(images)
        batch = images.shape[0]
        parents = self._check_parents(parents, batch)
        do = self._check_do(do, batch)
        group_lists, group_weights = resolve_guidance(
            self.graph, list(do), guidance, scale, groups, weights, invariant_weight, descendant_weight,
            anchor_scales=config.anchor_scales if guidance == "dcfg" and groups in (None, "dag") else None)

        # 1. Abduction (attributes): exogenous noise of every attribute node.
        u = self.scm.abduct(parents, seed=seed)
        # 2. Action + 3. Prediction (attributes): push the noise through the intervened SCM.
        cf_parents = self.scm.predict(u, do=do)
        image_parents = list(self.graph.image_parents())

        device = self.device
        images = images.to(device=device, dtype=torch.float32)
        out_images, x_T_all = [], []
        for start in range(0, batch, chunk_size):
            sl = slice(start, start + chunk_size)
            x0 = images[sl]
            fact = {k: parents[k][sl].to(device) for k in image_parents}
            cf = {k: cf_parents[k][sl].to(device) for k in image_parents}
            # 1. Abduction (image): DDIM inversion under the factual parents, no guidance (CFG++: its pair at
            #    weight 1, the inverse of decoding at weight 1).
            x_T = self.invert(x0, fact, steps=steps, progress=progress, variant=variant,
                              dcfg_form=dcfg_form if guidance == "dcfg" else "paper", interval=interval, solver=solver)
            # 3. Prediction (image): decode x_T under the counterfactual parents with guidance.
            x_cf = self.decode(x_T, cf, guidance=guidance, groups=group_lists,
                               weights=group_weights, steps=steps, progress=progress, dcfg_form=dcfg_form,
                               variant=variant, interval=interval, solver=solver, **apg)
            out_images.append(x_cf)
            x_T_all.append(x_T)
        noise = {k: v for k, v in u.items()}
        noise["x_T"] = torch.cat(x_T_all)
        return CounterfactualResult(
            image=torch.cat(out_images), parents=cf_parents, groups=group_lists,
            weights=group_weights, noise=noise, factual_parents={k: v.detach().clone() for k, v in parents.items()},
            dcfg_form=dcfg_form, variant=variant, interval=interval)

    # ------------------------------------------------------------------ image mechanism
    def set_inference(self, precision: str = "fp32", compile: bool = False) -> "CounterfactualPipeline":
        """Speed settings of the image model's inference (see :meth:`ConditionalUNet.set_inference`).

        They are runtime settings, not saved with the pipeline. ``precision="bf16"`` changes the numbers
        slightly; ``compile=True`` does not (beyond float rounding) and pays a one-time compilation on its first
        call.

        Example:
            >>> pipe = CounterfactualPipeline.pretrained().set_inference(compile=True)  # doctest: +SKIP
        """
        self.image_model.set_inference(precision=precision, compile=compile)
        return self

    def _alphas(self, device: torch.device) -> Tensor:
        return self.image_model.alphas_cumprod.to(device)

    @property
    def num_timesteps(self) -> int:
        """T, the image model's number of training timesteps (a guidance interval lies in [0, T])."""
        return int(self.image_model.config.num_train_timesteps)

    def _descendant_weight(self, value: Any) -> float | str:
        """A query's descendant weight: left out, the config's; the former ``"config"`` and ``None`` warn."""
        if isinstance(value, str) and value == "config":
            warn_deprecated("descendant_weight='config' is deprecated: leave the argument out for the pipeline's", 4)
            value = FROM_CONFIG
        elif value is None:
            warn_deprecated("descendant_weight=None is deprecated: use descendant_weight='scale' (the intervention's "
                            "scale, the paper's grouping)", 4)
            value = "scale"
        return self.config.descendant_weight if value is FROM_CONFIG else check_descendant_weight(value)

    def _variant_args(self, guidance: str, variant: Any, interval: Any, apg_eta: Any, apg_threshold: Any,
                      apg_momentum: Any) -> tuple[str | None, tuple[float, float] | None, dict[str, Any]]:
        """A query's variant, interval and APG settings, validated up front (left out, :data:`FROM_CONFIG`: the
        pipeline's; the former ``"config"`` warns)."""
        config = self.config
        for name, value in (("variant", variant), ("interval", interval)):
            if isinstance(value, str) and value == "config":
                warn_deprecated(f"{name}='config' is deprecated: leave the argument out for the pipeline's", 5)
        variant = FROM_CONFIG if isinstance(variant, str) and variant == "config" else variant
        interval = FROM_CONFIG if isinstance(interval, str) and interval == "config" else interval
        from_config = variant is FROM_CONFIG
        variant = check_variant(config.variant if from_config else variant)
        if interval is FROM_CONFIG:
            interval = config.interval if guidance != "none" else None
        if guidance == "none":
            if variant is not None and not from_config:
                raise ValueError(f"variant={variant!r} modifies guidance, but guidance='none' has none; use "
                                 f"guidance='cfg' or 'dcfg'")
            if interval is not None:
                raise ValueError(f"interval={interval!r} modifies guidance, but guidance='none' has none; use "
                                 f"guidance='cfg' or 'dcfg'")
            variant = None
        interval = check_interval(interval, self.num_timesteps)
        eta, threshold, momentum = check_apg(config.apg_eta if apg_eta is None else apg_eta,
                                             config.apg_threshold if apg_threshold is None else apg_threshold,
                                             config.apg_momentum if apg_momentum is None else apg_momentum)
        return variant, interval, {"apg_eta": eta, "apg_threshold": threshold or 0.0, "apg_momentum": momentum}

    @property
    def device(self) -> torch.device:
        """The image model's device: inputs of :meth:`counterfactual`, :meth:`invert`, :meth:`decode` and
        :meth:`sample` are moved there (as float32), and their images come back there."""
        try:
            return next(self.image_model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def to(self, device: str | torch.device) -> "CounterfactualPipeline":
        """Move the image model, the classifier and the predictors to ``device`` (the SCM stays on the CPU)."""
        self.image_model.to(device)
        if self.classifier is not None:
            self.classifier.to(device)
        if self.predictors is not None:
            self.predictors.to(device)
        return self

    def _on_device(self, x: Tensor, parents: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        dev = self.device
        return x.to(device=dev, dtype=torch.float32), {k: torch.as_tensor(v).to(dev) for k, v in parents.items()}

    @anchor_renamed
    @torch.no_grad()
    def invert(self, images: Tensor, parents: Mapping[str, Tensor], steps: int | None = None,
               refine_steps: int | None = None, progress: bool = False, variant: str | None = None,
               dcfg_form: str = "paper", interval: Sequence[float] | None = None,
               solver: str | None = None, predictor: str | None = None) -> Tensor:
        """Invert images to their noise ``x_T`` under the given parents (no guidance), with ``solver``'s
        inverter (default: ``config.solver``; DDIM with ``refine_steps`` fixed-point iterations started from
        ``predictor``'s guess, or DPM-Solver++'s inverse scheduler; see :mod:`diffusion.solvers`). ``None``:
        the config's; ``refine_steps=0`` is plain DDIM inversion whatever the predictor.

        ``variant="cfgpp"`` inverts with CFG++'s pair at weight 1 instead: the clean image predicted with
        ``eps(c)``, re-noised with the anchor eps, ``eps(null)`` (CFG, and DCFG's ``dcfg_form="paper"``) or
        ``eps(c)`` (``dcfg_form="conditional"``, which is the plain inversion), inside ``interval`` (plain outside).
        It is the inverse of decoding with CFG++ at weight 1 under the same parents, and costs 2 rows per step
        with the null anchor. Other variants invert as without one (APG at weight 1 is ``eps(c)``).
        """
        steps = self.config.steps if steps is None else steps
        refine = self.config.refine_steps if refine_steps is None else refine_steps
        predictor = inversion_predictor(self.config, refine, predictor)
        images, parents = self._on_device(images, parents)
        if check_variant(variant) == "cfgpp" and check_dcfg_form(dcfg_form) == "paper":
            eps_fn = guided_eps_fn(self.image_model, dict(parents), guidance="cfg", scale=1.0, variant="cfgpp",
                                   interval=interval)
        else:
            eps_fn = guided_eps_fn(self.image_model, dict(parents), guidance="none")
        solver = self.config.solver if solver is None else solver
        return solver_invert(eps_fn, images, self._alphas(images.device), steps, solver=solver, refine_steps=refine,
                             predictor=predictor, progress=progress, power=grid_power(self.config, solver))

    @anchor_renamed
    @torch.no_grad()
    def decode(self, x_T: Tensor, parents: Mapping[str, Tensor], guidance: str = "none",
               groups: Sequence[Sequence[str]] | None = None, weights: Sequence[float] | None = None,
               scale: float = 1.0, steps: int | None = None, progress: bool = False,
               dcfg_form: str | None = None, variant: str | None = None, interval: Sequence[float] | None = None,
               apg_eta: float | None = None, apg_threshold: float | None = None,
               apg_momentum: float | None = None, solver: str | None = None) -> Tensor:
        """Decode ``x_T`` under ``parents`` with no guidance, CFG or DCFG, with ``solver`` (default:
        ``config.solver``).

        ``dcfg_form`` is DCFG's formulation (default: ``config.dcfg_form``); it is ignored otherwise.
        ``variant`` (``None``, ``"apg"``, ``"cfgpp"``) and ``interval`` are used as given (``None``: none; the
        config's defaults apply to :meth:`counterfactual`); ``apg_*`` ``None`` are the config's.
        """
        steps = self.config.steps if steps is None else steps
        x_T, parents = self._on_device(x_T, parents)
        config = self.config
        extra = {"variant": variant, "interval": interval,
                 "apg_eta": config.apg_eta if apg_eta is None else apg_eta,
                 "apg_threshold": config.apg_threshold if apg_threshold is None else apg_threshold,
                 "apg_momentum": config.apg_momentum if apg_momentum is None else apg_momentum}
        if guidance == "dcfg":
            eps_fn = guided_eps_fn(self.image_model, dict(parents), guidance="dcfg",
                                   groups=[list(g) for g in groups], weights=list(weights),
                                   anchor=diffusion_anchor(config.dcfg_form if dcfg_form is None else dcfg_form),
                                   **extra)
        elif guidance == "cfg":
            w = weights[0] if weights else scale
            eps_fn = guided_eps_fn(self.image_model, dict(parents), guidance="cfg", scale=w, **extra)
        else:
            eps_fn = guided_eps_fn(self.image_model, dict(parents), guidance="none", **extra)
        solver = self.config.solver if solver is None else solver
        out = solver_sample(eps_fn, x_T, self._alphas(x_T.device), steps, solver=solver, progress=progress,
                            power=grid_power(self.config, solver))
        return out.clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample(self, n: int, parents: Mapping[str, Any] | None = None, guidance: str = "cfg",
               scale: float = 1.0, steps: int | None = None, seed: int | None = None,
               progress: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """Draw images from the model: parents from the SCM (or fixed), noise from N(0, I).

        Args:
            n: number of images.
            parents: optional fixed attribute values (scalars or (n,) tensors) for some nodes; the
                others are sampled from the SCM given them (by intervention).
            guidance: ``"none"`` or ``"cfg"`` (one global scale).
            scale: CFG scale.
            steps: DDIM steps (on the config's grid, ``timestep_power``).
            seed: seed of the SCM draw and the image noise.

        Returns:
            ``(images, attributes)``.
        """
        steps = self.config.steps if steps is None else steps
        do = self._check_do(parents or {}, n)
        attrs = self.scm.interventional_samples(do, n, seed=seed) if do else self.scm.sample(n, seed=seed)
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        shape = tuple(self.graph.spec(self.graph.image_node).shape)
        # the noise is drawn on the CPU, so that a seed gives the same images on every device
        x_T, cond = self._on_device(torch.randn((n, *shape), generator=gen),
                                    {k: attrs[k] for k in self.graph.image_parents()})
        if guidance == "cfg":
            eps_fn = guided_eps_fn(self.image_model, cond, guidance="cfg", scale=scale)
        elif guidance == "none":
            eps_fn = guided_eps_fn(self.image_model, cond, guidance="none")
        else:
            raise ValueError(f"guidance={guidance!r} for sampling must be 'none' or 'cfg'")
        # Generation from pure noise clamps each step's x_0 prediction to [-1, 1] (decoding abducted
        # noise does not: it must retrace the inversion).
        x = ddim_sample(eps_fn, x_T, self._alphas(x_T.device), steps, clip_denoised=True,
                        progress=progress, power=grid_power(self.config, "ddim"))
        return x.clamp(-1.0, 1.0), attrs

    # ------------------------------------------------------------------ persistence
    def calibrate_guidance(self, data: Any, oracles: Any = None, *, apply: bool = True, **kwargs: Any) -> Any:
        """Measure each image parent's DCFG amplified weight ``w_a`` and anchor weight ``v_a`` on validation data.

        Args:
            data: validation rows, never the test split: ``(images, parents)``, or an object with ``images``
                and ``parents`` (or ``attributes``), e.g. :func:`pipeline.evaluation.runner.load_evaluation_data`'s.
            oracles: what measures the images (default: :meth:`make_oracles` with the data's marginals).
            apply: store the weights in this pipeline's config (``attribute_scales``, ``anchor_scales``), where
                DCFG uses them by default; :meth:`save` then writes them.
            **kwargs: :func:`pipeline.calibrate.calibrate_guidance`'s options (``n``, ``weights``,
                ``anchor_weights``, ``steps``, ``seed``, ``progress``, ``log``...).

        Returns:
            The :class:`pipeline.calibrate.Calibration` (the chosen weights and the curves they were read off).
        """
        from dataclasses import replace

        from .calibrate import calibrate_guidance

        if isinstance(data, tuple) and len(data) == 2:
            images, parents = data
        else:
            images = getattr(data, "images", None)
            parents = getattr(data, "parents", None) or getattr(data, "attributes", None)
            if images is None or parents is None:
                raise TypeError("data must be (images, parents) or have .images and .parents/.attributes")
        if oracles is None:
            oracles = getattr(data, "oracles", None) or self.make_oracles(marginals=dict(parents))
        cal = calibrate_guidance(self, images, parents, oracles, **kwargs)
        if apply:
            self.config = replace(self.config, attribute_scales={**self.config.attribute_scales,
                                                                 **cal.attribute_scales},
                                  anchor_scales={**self.config.anchor_scales, **cal.anchor_scales})
        return cal

    def save(self, path: str | os.PathLike) -> Path:
        """Save to a directory: ``scm/``, ``image_model/``, ``classifier/`` and ``predictors/`` where present, the
        model card ``README.md``, and ``config.json`` (written last: it marks a complete save).

        ``path`` must be a new folder, an empty one, or an earlier saved pipeline (recognised by its
        ``config.json``), which is replaced as a whole. Anything else (a folder of other files, a file, ``.``,
        ``..``, ``/``, a symbolic link, a path below a file) is refused with a ``ValueError`` before anything is
        touched: remove it first, or give a new folder.

        The swap is crash-safe (:func:`dcfg_io.folders.save_dir`): the new pipeline is written to the hidden
        sibling ``.NAME.tmp-XXXX`` and fsynced, the old one renamed aside to ``.NAME.old-XXXX``, the new one
        renamed into place, the old one removed. A process killed at any point leaves the old or the new
        pipeline loadable from ``path`` (:meth:`load` finds it beside ``path`` after an interrupted swap; the next
        save puts it back and removes stale temporaries). The bytes are a function of the content: the same
        pipeline saved twice has the same sha256.
        """
        from .card import render_card

        saved = {"format_version": _FORMAT_VERSION, "graph": self.graph.to_dict(),
               "pipeline": self.config.__dict__,
               "classifier": self.classifier is not None,
               "predictors": self.predictors is not None,
               "oracles": self.oracles,
               "card": self.card}
        text = json.dumps(saved, indent=2)

        def write(tmp: Path) -> None:
            self.scm.save(tmp / "scm")
            self.image_model.save_pretrained(tmp / "image_model")
            if self.classifier is not None:
                self.classifier.save_pretrained(tmp / "classifier")
            if self.predictors is not None:
                self.predictors.save(tmp / "predictors")
            atomic_write_bytes(tmp / "README.md", render_card(self).encode())
            atomic_write_bytes(tmp / "config.json", text.encode())  # the marker of a complete save: last

        return save_dir(path, write, SAVED_KIND)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "CounterfactualPipeline":
        """Load a pipeline saved with :meth:`save` (never unpickles).

        Every file read must be a regular file inside ``path`` (a named pipe, a device or a symbolic link out of
        the folder is refused without being opened), every key of the configs known, every size within its
        documented bounds (:data:`diffusion.config.LIMITS`, :data:`scm.model.SCM_LIMITS`,
        :data:`pipeline.classifier.CLASSIFIER_LIMITS`), and the weight shapes in each safetensors header must
        match the config, all checked before a module is built. After an interrupted :meth:`save` the complete
        copy beside ``path`` is loaded.

        Raises:
            ValueError: a missing, incomplete, damaged or inconsistent folder (one line naming the file, and the
                key where there is one).
        """
        path = find_saved_dir(path, SAVED_KIND)
        if not path.is_dir():
            raise ValueError(f"pipeline directory {str(path)!r} does not exist; pass a directory "
                             f"written by CounterfactualPipeline.save()")
        cfg_file = path / "config.json"
        if not os.path.lexists(cfg_file):
            raise ValueError(f"{str(path)!r} has no config.json: it is not a saved pipeline")
        saved = read_json(cfg_file, path, what="pipeline config")
        if not isinstance(saved, dict) or not isinstance(saved.get("pipeline", {}), dict):
            raise ValueError(f"{cfg_file} is not a pipeline config (a JSON object with 'format_version', 'graph' "
                             f"and 'pipeline' entries, as written by CounterfactualPipeline.save)")
        check_keys(saved, _CONFIG_KEYS, str(cfg_file), "pipeline config")
        if saved.get("format_version") != _FORMAT_VERSION or isinstance(saved.get("format_version"), bool):
            raise ValueError(f"{cfg_file}: format_version {saved.get('format_version')!r:.80} is not "
                             f"supported (expected {_FORMAT_VERSION})")
        graph = CausalGraph.from_dict(saved.get("graph"))
        check_keys(saved.get("pipeline", {}), SAVED_SETTINGS, f"{cfg_file}: 'pipeline'", "pipeline settings")
        try:
            settings = PipelineConfig.from_saved(saved.get("pipeline", {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{cfg_file}: {e}") from None
        for flag in ("classifier", "predictors"):
            if not isinstance(saved.get(flag, False), bool):
                raise ValueError(f"{cfg_file}: {flag}={saved[flag]!r:.80} must be true or false")
        oracles = saved.get("oracles")
        if oracles is not None and (not isinstance(oracles, str) or oracles not in ORACLE_KINDS):
            raise ValueError(f"{cfg_file}: oracles={oracles!r:.80} must be one of {ORACLE_KINDS}")
        card = saved.get("card") or {}
        if not isinstance(card, dict):
            raise ValueError(f"{cfg_file}: 'card' must be a JSON object")
        for part in ("scm", "image_model") + tuple(p for p in ("classifier", "predictors") if saved.get(p)):
            if os.path.lexists(path / part):
                check_entry(path / part, path, folder=True)
        scm = SCM.load(path / "scm")
        if scm.graph.to_dict() != graph.to_dict():
            raise ValueError(f"{path}: the SCM's graph does not match the pipeline's config.json "
                             f"graph; the directory is inconsistent")
        try:
            image_model = ConditionalUNet.from_pretrained(path / "image_model").to(device).eval()
        except FileNotFoundError as e:
            raise ValueError(f"{path} is an incomplete pipeline: {e}") from None
        classifier = predictors = None
        if saved.get("classifier"):
            from .classifier import DigitClassifier
            classifier = DigitClassifier.from_pretrained(path / "classifier").to(device).eval()
        if saved.get("predictors"):
            from .predictors import PredictorSet
            predictors = PredictorSet.load(path / "predictors").to(device)
        return cls(graph, scm, image_model, settings, classifier, predictors=predictors, oracles=oracles, card=card)

    @classmethod
    def pretrained(cls, name: str = "morphomnist", device: str | torch.device = "cpu") -> "CounterfactualPipeline":
        """A bundled pipeline, read from package data (offline).

        Args:
            name: ``"morphomnist"`` (the default; also ``"morpho"``) or ``"morpho-colour"``.
            device: where the models go.

        Example:
            >>> pipe = CounterfactualPipeline.pretrained("morpho-colour")  # doctest: +SKIP
        """
        from importlib import resources

        folder = BUNDLED.get(name)
        if folder is None:
            raise ValueError(f"no bundled pipeline {name!r}: the bundled ones are {sorted(BUNDLED)}; load your own "
                             f"with CounterfactualPipeline.load(DIR)")
        root = resources.files("pipeline") / "pretrained" / folder
        with resources.as_file(root) as p:
            if not (Path(p) / "config.json").is_file():
                raise ValueError(
                    f"the bundled pipeline {name!r} is missing from this installation ({p}); reinstall dcfg or "
                    f"train one with `dcfg train --dataset {folder}`")
            return cls.load(p, device=device)


#: names of the bundled pipelines -> their folders in ``pipeline/pretrained``
BUNDLED = {"morphomnist": "morphomnist", "morpho": "morphomnist", "morpho-colour": "morpho-colour"}


def resolve_pipeline_path(text: str | os.PathLike | None) -> tuple[str | None, Path | None]:
    """``(bundled name, None)`` for a bundled pipeline's name (or ``None``: the default), else ``(None, path)``."""
    if text is None:
        return "morphomnist", None
    if str(text) in BUNDLED and not Path(text).exists():
        return str(text), None
    return None, Path(text)
