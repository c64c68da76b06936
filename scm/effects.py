"""Causal effects between attribute nodes with dowhy: identify, estimate and refute in one call.

:func:`estimate_effect` runs dowhy's four steps (model, identify, estimate, refute) on a
:class:`~scm.CausalGraph`'s attribute graph and returns an :class:`EffectEstimate` with its
:class:`Refutation` results. The conversions to and from dowhy live in :mod:`scm.dowhy` and the graph
falsification in :mod:`scm.falsify`; both are re-exported here, so ``from scm.effects import to_dowhy,
falsify_graph`` keeps working.

Example (the toy graph used throughout: a confounder ``z`` of the effect of ``t`` on ``y``)::

        z
       / \\
      v   v
      t -> y          t = z + e_t,   y = 2 t + 1.5 z + e_y

    >>> import numpy as np
    >>> from scm import CausalGraph
    >>> g = CausalGraph.from_edges([("z", "t"), ("z", "y"), ("t", "y")], {v: {"kind": "real"} for v in "zty"})
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=2000); t = z + rng.normal(size=2000); y = 2 * t + 1.5 * z + rng.normal(size=2000)
    >>> res = estimate_effect(g, {"z": z, "t": t, "y": y}, "t", "y", num_simulations=20)
    >>> round(res.value, 1), res.passed
    (2.0, True)
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from dcfg_io.checks import is_integer
from scm.dowhy import (
    attribute_frame,
    causal_model,
    check_graph,
    check_level,
    check_pair,
    check_seed,
    gcm_frame,
    graph_from_dowhy,
    graph_from_gcm,
    seeded,
    to_dowhy,
    to_gcm,
)
from scm.falsify import CI_TESTS, CORRECTIONS, FalsificationReport, IndependenceResult, falsify_graph
from scm.graph import CausalGraph
from scm.support import as_values

__all__ = [
    "CI_TESTS",
    "CORRECTIONS",
    "EffectEstimate",
    "FalsificationReport",
    "IDENTIFIERS",
    "IndependenceResult",
    "REFUTERS",
    "Refutation",
    "estimate_effect",
    "falsify_graph",
    "gcm_frame",
    "graph_from_dowhy",
    "graph_from_gcm",
    "to_dowhy",
    "to_gcm",
]

#: The identification strategies a ``method`` may start with (``"<identifier>.<estimator>"``).
IDENTIFIERS: tuple[str, ...] = ("backdoor", "iv", "frontdoor", "general_adjustment")
#: The refuters :func:`estimate_effect` runs (those that report a p-value).
REFUTERS: tuple[str, ...] = ("placebo_treatment_refuter", "random_common_cause", "data_subset_refuter",
                             "bootstrap_refuter")


# ================================================================================ result types
@dataclass(frozen=True)
class Refutation:
    """The outcome of one dowhy refuter.

    Attributes:
        name: the refuter (e.g. ``"placebo_treatment_refuter"``).
        estimated_effect: the estimate that was refuted.
        new_effect: the mean effect over the refuter's simulated data sets (about 0 for a placebo).
        p_value: dowhy's significance test of the refuter (None if it reports none).
        passed: True when the refuter finds no problem, i.e. dowhy's test is not significant
            (``p_value > significance_level``): for the placebo refuter, 0 lies inside the placebo
            effects; for the others, the estimate lies inside the re-estimated effects.
        result: the ``dowhy`` ``CausalRefutation`` object.
    """

    name: str
    estimated_effect: float
    new_effect: float
    p_value: float | None
    passed: bool
    result: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class EffectEstimate:
    """One causal effect: ``E[outcome | do(treatment = treatment_value)] - E[... control_value]``.

    Attributes:
        treatment: the treatment node.
        outcome: the outcome node.
        value: the estimated effect.
        confidence_interval: ``(low, high)`` at ``confidence_level`` (None when not computed).
        confidence_level: level of the interval (e.g. 0.95).
        control_value: the reference treatment value.
        treatment_value: the alternative treatment value.
        method: the dowhy estimation method, e.g. ``"backdoor.linear_regression"``.
        estimand: the identified estimand, as dowhy prints it.
        adjustment_set: the backdoor adjustment set dowhy used (empty for other identifiers).
        refutations: refuter name -> :class:`Refutation`.
        identified_estimand: the ``dowhy`` ``IdentifiedEstimand`` object.
        dowhy_estimate: the ``dowhy`` ``CausalEstimate`` object.
        causal_model: the ``dowhy.CausalModel`` (for further ``refute_estimate`` calls).
    """

    treatment: str
    outcome: str
    value: float
    confidence_interval: tuple[float, float] | None
    confidence_level: float
    control_value: float
    treatment_value: float
    method: str
    estimand: str
    adjustment_set: tuple[str, ...]
    refutations: Mapping[str, Refutation]
    identified_estimand: Any = field(default=None, repr=False, compare=False)
    dowhy_estimate: Any = field(default=None, repr=False, compare=False)
    causal_model: Any = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        """True when every refuter passed (vacuously True without refuters)."""
        return all(r.passed for r in self.refutations.values())

    def __str__(self) -> str:
        ci = ("" if self.confidence_interval is None else
              f", {self.confidence_level:.0%} CI [{self.confidence_interval[0]:.4g}, "
              f"{self.confidence_interval[1]:.4g}]")
        lines = [f"effect of do({self.treatment}: {self.control_value:g} -> {self.treatment_value:g}) on "
                 f"{self.outcome}: {self.value:.4g}{ci}  ({self.method}, adjusting for "
                 f"{list(self.adjustment_set)})"]
        for r in self.refutations.values():
            p = "n/a" if r.p_value is None else f"{r.p_value:.3g}"
            lines.append(f"  {r.name}: new effect {r.new_effect:.4g}, p = {p}, "
                         f"{'passed' if r.passed else 'FAILED'}")
        return "\n".join(lines)


# ================================================================================ estimation
def _check_method(method: Any) -> str:
    if not isinstance(method, str) or "." not in method:
        raise ValueError(f"method must be '<identifier>.<estimator>' with identifier in {list(IDENTIFIERS)}, "
                         f"got {method!r}; e.g. 'backdoor.linear_regression'")
    identifier, estimator = method.split(".", 1)
    if identifier not in IDENTIFIERS:
        raise ValueError(f"method {method!r} has unknown identifier {identifier!r}; allowed: {list(IDENTIFIERS)}, "
                         f"e.g. 'backdoor.linear_regression'")
    if "." not in estimator:  # a dowhy estimator; econml/causalml paths are resolved by dowhy itself
        from dowhy import causal_estimators

        try:
            causal_estimators.get_class_object(estimator + "_estimator")
        except ImportError:
            raise ValueError(f"method {method!r}: dowhy has no estimator {estimator!r}; built-in estimators "
                             f"include linear_regression, generalized_linear_model, propensity_score_matching, "
                             f"propensity_score_stratification, propensity_score_weighting, distance_matching, "
                             f"instrumental_variable, two_stage_regression") from None
    return method


def _check_refuters(refuters: Any, params: Any) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    if refuters is None:
        refuters = ()
    if isinstance(refuters, str):
        refuters = (refuters,)
    refuters = tuple(refuters)
    for r in refuters:
        if r not in REFUTERS:
            raise ValueError(f"unknown refuter {r!r}; allowed: {list(REFUTERS)} (they report a p-value)")
    if len(set(refuters)) != len(refuters):
        raise ValueError(f"refuters lists a refuter twice: {list(refuters)}")
    params = dict(params or {})
    for r, p in params.items():
        if r not in refuters:
            raise ValueError(f"refuter_params has refuter {r!r}, which is not in refuters {list(refuters)}")
        if not isinstance(p, Mapping):
            raise TypeError(f"refuter_params[{r!r}] must be a dict of keyword arguments, got {type(p).__name__}")
    return refuters, {r: dict(params.get(r, {})) for r in refuters}


def _arm_values(graph: CausalGraph, frame: pd.DataFrame, treatment: str, control_value: Any,
                treatment_value: Any) -> tuple[float, float]:
    """Default and validate the two treatment values (see :func:`estimate_effect`)."""
    spec = graph.spec(treatment)
    if control_value is None and treatment_value is None:
        if spec.is_discrete:
            control_value, treatment_value = 0, 1
        else:
            median = float(np.median(frame[treatment].to_numpy()))
            control_value, treatment_value = median, median + 1.0
            for v in (control_value, treatment_value):
                if spec.kind == "interval" and not (spec.low <= v <= spec.high):  # type: ignore[operator]
                    raise ValueError(f"the default treatment values (median {median:g} and median + 1) of interval "
                                     f"node {treatment!r} leave its support {spec.describe()}; pass control_value= "
                                     f"and treatment_value= inside it")
    elif control_value is None or treatment_value is None:
        raise ValueError(f"pass both control_value and treatment_value for {treatment!r} (got control_value="
                         f"{control_value!r}, treatment_value={treatment_value!r}), or neither for the default")
    values = []
    for name, v in (("control_value", control_value), ("treatment_value", treatment_value)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.number)):
            raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
        try:
            t = as_values(treatment, spec, v, what=name, allow_scalar=True, dtype=torch.float64)
        except ValueError as e:
            raise ValueError(f"{name} {v!r} is not a valid value of treatment {treatment!r}: {e}") from None
        values.append(int(t) if spec.is_discrete else float(t))
    if values[0] == values[1]:
        raise ValueError(f"control_value and treatment_value are both {values[0]!r}; the effect of no change is 0 by "
                         f"definition, pass two different values of {treatment!r}")
    return values[0], values[1]


def estimate_effect(graph: CausalGraph, data: Any, treatment: str, outcome: str,
                    method: str = "backdoor.linear_regression",
                    refuters: Sequence[str] | None = ("placebo_treatment_refuter", "random_common_cause"),
                    control_value: float | None = None, treatment_value: float | None = None,
                    confidence_intervals: bool = True, seed: int = 0, *, num_simulations: int = 100,
                    significance_level: float = 0.05, confidence_level: float = 0.95,
                    method_params: Mapping[str, Any] | None = None,
                    refuter_params: Mapping[str, Mapping[str, Any]] | None = None) -> EffectEstimate:
    """Identify, estimate and refute the effect of ``treatment`` on ``outcome`` with dowhy.

    Steps (dowhy's four): **model** (:func:`to_dowhy`), **identify** (``identify_effect``: the
    backdoor set, instruments, front-door set), **estimate** (``estimate_effect`` with ``method``)
    and **refute** (``refute_estimate`` once per refuter).

    The effect is ``E[outcome | do(treatment := treatment_value)] - E[outcome | do(treatment :=
    control_value)]``. Without values: ``0 -> 1`` for a binary/categorical treatment, and
    ``median -> median + 1`` (a one-unit increase from the typical value) for a continuous one.

    No directed path from treatment to outcome: like dowhy, the effect is 0 by the graph; we warn
    (``UserWarning``), return ``value = 0.0`` with no confidence interval, and skip the refuters.

    The placebo refuter permutes the treatment (``placebo_type="permute"``) unless
    ``refuter_params`` says otherwise: dowhy's default placebo for a float treatment draws from
    ``N(0, 0)``, a constant, which tests nothing. Refuters get a clean copy of the data: dowhy's
    propensity estimators write their score column into the model's data, and a placebo refit
    through ``CausalModel.refute_estimate`` reuses the true treatment's scores (with
    ``backdoor.propensity_score_weighting`` that gave a placebo effect of -2.7 for a true effect of 2).

    Args:
        graph: the causal DAG (its image node, if any, is dropped).
        data: a dict node -> ``(N,)`` values or a DataFrame, one column per attribute node.
        treatment: the treatment node.
        outcome: the outcome node.
        method: dowhy's ``"<identifier>.<estimator>"``, e.g. ``"backdoor.linear_regression"``,
            ``"backdoor.propensity_score_weighting"`` (binary treatment), ``"iv.instrumental_variable"``.
        refuters: names among ``placebo_treatment_refuter``, ``random_common_cause``,
            ``data_subset_refuter``, ``bootstrap_refuter`` (empty or None: no refutation).
        control_value: the reference treatment value.
        treatment_value: the alternative treatment value.
        confidence_intervals: compute the confidence interval (analytic for linear regression,
            bootstrap otherwise).
        seed: seed of dowhy's random draws (refuters, bootstrap); global RNG states are restored.
        num_simulations: simulations per refuter (dowhy's default 100).
        significance_level: level of the refuters' tests.
        confidence_level: level of the confidence interval.
        method_params: passed to dowhy's ``estimate_effect(method_params=...)``.
        refuter_params: refuter -> extra keyword arguments of ``refute_estimate``.

    Returns:
        An :class:`EffectEstimate`.

    Raises:
        TypeError: graph, data, names, values or seed of the wrong type.
        ValueError: unknown or image treatment/outcome, treatment == outcome, unknown method or
            refuter, bad columns or values, treatment values outside the support or equal, an
            estimand that the method cannot use (e.g. no instrument for ``iv.*``).

    Example:
        >>> import numpy as np
        >>> from scm import CausalGraph
        >>> g = CausalGraph.from_edges([("z", "t"), ("z", "y"), ("t", "y")], {v: {"kind": "real"} for v in "zty"})
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=1000); t = z + rng.normal(size=1000); y = 2 * t + z + rng.normal(size=1000)
        >>> res = estimate_effect(g, {"z": z, "t": t, "y": y}, "t", "y", num_simulations=10)
        >>> lo, hi = res.confidence_interval
        >>> bool(lo < 2.0 < hi), res.adjustment_set, sorted(res.refutations)
        (True, ('z',), ['placebo_treatment_refuter', 'random_common_cause'])
    """
    # --- validate everything before touching dowhy
    graph = check_graph(graph)
    t, y = check_pair(graph, treatment, outcome)
    method = _check_method(method)
    refuters, r_params = _check_refuters(refuters, refuter_params)
    seed = check_seed(seed)
    if not is_integer(num_simulations, 2):
        raise ValueError(f"num_simulations must be an integer >= 2, got {num_simulations!r}")
    significance_level = check_level(significance_level, "significance_level")
    confidence_level = check_level(confidence_level, "confidence_level")
    if method_params is not None and not isinstance(method_params, Mapping):
        raise TypeError(f"method_params must be a dict, got {type(method_params).__name__}")
    frame = attribute_frame(graph, data)
    control, treated = _arm_values(graph, frame, t, control_value, treatment_value)

    from dowhy import causal_refuters

    with seeded(seed):
        # 1. Model
        model = causal_model(graph, frame, t, y)
        # 2. Identify
        estimand = model.identify_effect()
        if estimand.no_directed_path:
            warnings.warn(f"no directed path from {t!r} to {y!r} in the graph: the effect is 0 by the graph (dowhy's "
                          f"convention); returning 0.0 without confidence interval or refutation", UserWarning,
                          stacklevel=2)
            return EffectEstimate(t, y, 0.0, None, confidence_level, control, treated, method, str(estimand), (),
                                  MappingProxyType({}), estimand, None, model)
        identifier = method.split(".", 1)[0]
        if estimand.estimands.get(identifier) is None:
            found = [k for k, v in estimand.estimands.items() if v is not None and k in IDENTIFIERS]
            raise ValueError(f"method {method!r} needs a {identifier!r} estimand, but the graph gives none for "
                             f"{t!r} -> {y!r} (identified: {found}); choose a method starting with one of {found}")
        # 3. Estimate (dowhy's propensity estimators write a score column into the model's data; the
        #    refuters get a clean copy, so that a placebo refit does not reuse the true treatment's scores)
        clean = frame.copy()
        params = dict(method_params or {})
        if "." not in method.split(".", 1)[1]:  # a dowhy estimator: the ATE needs no per-stratum estimates
            params["init_params"] = {"need_conditional_estimates": False, **dict(params.get("init_params", {}))}
        estimate = model.estimate_effect(estimand, method_name=method, control_value=control,
                                         treatment_value=treated, confidence_intervals=bool(confidence_intervals),
                                         method_params=params)
        if estimate.value is None:
            raise ValueError(f"dowhy could not estimate the effect of {t!r} on {y!r} with {method!r}")
        ci = None
        if confidence_intervals:
            lo, hi = np.asarray(estimate.get_confidence_intervals(confidence_level=confidence_level),
                                dtype=float).reshape(-1)[:2]
            ci = (float(lo), float(hi))
        # 4. Refute
        refutations: dict[str, Refutation] = {}
        for r in refuters:
            kwargs: dict[str, Any] = {"num_simulations": int(num_simulations), "random_state": seed}
            if r == "placebo_treatment_refuter":
                kwargs["placebo_type"] = "permute"
            kwargs.update(r_params[r])
            refuter = causal_refuters.get_class_object(r)(clean.copy(), identified_estimand=estimand,
                                                          estimate=estimate, **kwargs)
            res = refuter.refute_estimate(show_progress_bar=False)
            sig = res.refutation_result or {}
            p = None if sig.get("p_value") is None else float(sig["p_value"])
            refutations[r] = Refutation(r, float(res.estimated_effect), float(np.mean(res.new_effect)), p,
                                        bool(p is None or p > significance_level), res)
    adjustment = tuple(estimand.get_adjustment_set() or ()) if identifier == "backdoor" else ()
    return EffectEstimate(t, y, float(np.asarray(estimate.value).reshape(-1)[0]), ci, confidence_level, control,
                          treated, method, str(estimand), adjustment, MappingProxyType(refutations), estimand,
                          estimate, model)
