"""The benchmark's counterfactual metrics on batches, for any pipeline whose dataset provides oracles.

Each function scores one batch of counterfactuals (see ``pipeline.evaluation`` for the definitions):

* :func:`effectiveness`: did the intervened attribute (and its descendants) take the target value?
* :func:`spurious_change`: did anything change that should not have?
* :func:`ground_truth_error`: L1 and PSNR against the true counterfactual images;
* :func:`realism`: Frechet distance to real images in the oracle's feature space;
* :func:`composition`: invert-then-decode under the image's own parents, repeated;
* :func:`reversibility`: ``do(a')`` then ``do(a)`` back.

The roles of the image's parents follow the DAG: *intervened* nodes, their *descendants* (they change
through the SCM, e.g. intensity under do(thickness)) and the *invariant* rest.

Example:
    >>> import numpy as np
    >>> from pipeline.presets import morphomnist_graph
    >>> g = morphomnist_graph()
    >>> target = {"thickness": np.array([4.0, 2.0]), "intensity": np.array([200.0, 120.0]),
    ...           "digit": np.array([3, 5])}
    >>> measured = {"thickness": np.array([3.8, 2.0]), "intensity": np.array([190.0, 120.0]),
    ...             "digit": np.array([3, 5])}
    >>> {k: round(v, 6) for k, v in effectiveness(g, ["thickness"], target, measured).items()}
    {'thickness_mae': 0.1, 'intensity_mae': 5.0}
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from torch import Tensor

from dcfg_io.checks import is_integer
from pipeline.evaluation.metrics import abs_change, accuracy, excess_change, flip_rate, frechet_distance, l1, mae, psnr
from pipeline.options import anchor_renamed

__all__ = ["roles", "effectiveness", "spurious_change", "ground_truth_error", "realism", "composition",
           "reversibility"]


def _arr(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def roles(graph: Any, intervened: Sequence[str]) -> dict[str, str]:
    """Role of each image parent under ``do(intervened)``: ``intervened``, ``descendant`` or ``invariant``.

    Example:
        >>> from pipeline.presets import morphomnist_graph
        >>> roles(morphomnist_graph(), ["thickness"])
        {'thickness': 'intervened', 'intensity': 'descendant', 'digit': 'invariant'}
    """
    nodes = set(graph.attribute_nodes())
    unknown = [n for n in intervened if n not in nodes]
    if unknown:
        raise ValueError(f"intervened node(s) {unknown} are not attribute nodes of the graph {sorted(nodes)}")
    changed = {d for n in intervened for d in graph.descendants(n)}
    out = {}
    for p in graph.image_parents():
        out[p] = "intervened" if p in intervened else "descendant" if p in changed else "invariant"
    return out


def _discrete(graph: Any, name: str) -> bool:
    return bool(graph.spec(name).is_discrete)


def effectiveness(graph: Any, intervened: Sequence[str], target: Mapping[str, Any],
                  measured: Mapping[str, Any]) -> dict[str, float]:
    """Effectiveness: how well the counterfactuals carry their target attributes.

    For every intervened image parent and every descendant: ``<name>_mae`` between the target (the SCM's
    counterfactual value: the intervention value, or for a descendant the value the SCM propagates, e.g.
    intensity ``i'`` under do(thickness)) and the oracle's measurement; for categorical ones
    ``<name>_accuracy`` of the oracle's prediction against the target class.

    Args:
        graph: the causal graph.
        intervened: intervened node names.
        target: counterfactual attributes (``CounterfactualResult.parents``), name -> (B,).
        measured: oracle measurements of the counterfactual images, name -> (B,).
    """
    out: dict[str, float] = {}
    for name, role in roles(graph, intervened).items():
        if role == "invariant":
            continue
        if _discrete(graph, name):
            out[f"{name}_accuracy"] = accuracy(_arr(measured[name]).astype(np.int64),
                                               _arr(target[name]).astype(np.int64))
        else:
            out[f"{name}_mae"] = mae(_arr(target[name]), _arr(measured[name]))
    return out


def spurious_change(graph: Any, intervened: Sequence[str], factual: Mapping[str, Any],
                    factual_measured: Mapping[str, Any], target: Mapping[str, Any],
                    measured: Mapping[str, Any]) -> dict[str, float]:
    """Spurious change (minimality): change in what the intervention should not change.

    * invariant continuous parent ``a``: ``a_abs_change = mean |m_a(x') - m_a(x)|`` (measured on the
      counterfactual ``x'`` and on the factual ``x``);
    * invariant categorical parent: ``a_flip_rate``, the fraction whose predicted class differs from the
      factual class;
    * continuous descendant ``a`` (it should change, but only as much as the SCM says):
      ``a_excess_change = mean |(m_a(x') - m_a(x)) - (a' - a)|`` with ``a -> a'`` the SCM's factual and
      counterfactual values.

    Args:
        graph: the causal graph.
        intervened: intervened node names.
        factual: factual attributes, name -> (B,).
        factual_measured: oracle measurements of the factual images.
        target: counterfactual attributes.
        measured: oracle measurements of the counterfactual images.
    """
    out: dict[str, float] = {}
    for name, role in roles(graph, intervened).items():
        if role == "intervened":
            continue
        discrete = _discrete(graph, name)
        if role == "invariant":
            if discrete:
                out[f"{name}_flip_rate"] = flip_rate(_arr(measured[name]).astype(np.int64),
                                                     _arr(factual[name]).astype(np.int64))
            else:
                out[f"{name}_abs_change"] = abs_change(_arr(factual_measured[name]), _arr(measured[name]))
        elif not discrete:
            out[f"{name}_excess_change"] = excess_change(
                _arr(factual_measured[name]), _arr(measured[name]), _arr(factual[name]), _arr(target[name]))
    return out


def ground_truth_error(counterfactual: Tensor, truth: Tensor) -> dict[str, float]:
    """``{"gt_l1", "gt_psnr"}``: mean L1 on [0, 1] and mean PSNR (dB) against the true counterfactuals.

    Example:
        >>> import torch
        >>> x = torch.full((2, 1, 4, 4), -1.0)
        >>> {k: round(v, 4) for k, v in ground_truth_error(x + 0.2, x).items()}
        {'gt_l1': 0.1, 'gt_psnr': 20.0}
    """
    return {"gt_l1": float(np.mean(l1(counterfactual, truth))), "gt_psnr": psnr(counterfactual, truth)}


def realism(features: Any, reference_features: Any) -> float:
    """Frechet distance between counterfactual features and real-image features (the oracle's ``embed``).

    Example:
        >>> import numpy as np
        >>> f = np.random.default_rng(0).normal(size=(500, 4))
        >>> realism(f, f)
        0.0
    """
    return frechet_distance(features, reference_features)


def _engine(pipe: Any, engine: Any, chunk_size: int | None) -> Any:
    from pipeline.evaluation.engine import QueryEngine

    return engine if engine is not None else QueryEngine(pipe, chunk_size=chunk_size)


def composition(pipe: Any, images: Tensor, parents: Mapping[str, Tensor], cycles: int = 10, steps: int = 50,
                x_T: Tensor | None = None, engine: Any = None, chunk_size: int | None = None) -> np.ndarray:
    """Composition: L1 (0..255) between ``x`` and ``cycle^k(x)``, ``cycle = decode(invert(., pa), pa)``.

    Each cycle inverts under the image's own parents and decodes under the same parents with no guidance
    (the null counterfactual). Cycles compose: cycle ``k`` starts from cycle ``k - 1``'s output.

    Args:
        pipe: the pipeline.
        images: factual images (B, C, H, W) in [-1, 1].
        parents: their attributes (every image parent).
        cycles: number of cycles K.
        steps: DDIM steps of both directions.
        x_T: optional precomputed inversion of ``images`` at ``steps`` (saves the first inversion).
        engine: optional :class:`~pipeline.evaluation.engine.QueryEngine` (counts NFEs, progress).
        chunk_size: rows per batched call (when no engine is given).

    Returns:
        ``(B, K)`` per-image L1 on 0..255 after 1..K cycles.

    Example:
        >>> curve = composition(pipe, x, parents, cycles=10, steps=50)  # doctest: +SKIP
        >>> curve.mean(0)[[0, 9]]  # after 1 and 10 cycles              # doctest: +SKIP
    """
    if not is_integer(cycles, 1, python_int=True):
        raise ValueError(f"cycles={cycles!r} must be a positive integer (the benchmark uses 10)")
    eng = _engine(pipe, engine, chunk_size)
    out = np.zeros((len(images), cycles))
    x = images
    for k in range(cycles):
        z = x_T if (k == 0 and x_T is not None) else eng.invert(x, parents, steps)
        x = eng.decode(z, parents, "none", None, None, steps)
        out[:, k] = l1(x, images, scale=255.0)
    return out


@anchor_renamed
def reversibility(pipe: Any, images: Tensor, parents: Mapping[str, Tensor], do: Mapping[str, Any],
                  guidance: str = "dcfg", scale: float = 3.0, steps: int = 50, *,
                  counterfactual: Tensor | None = None, counterfactual_parents: Mapping[str, Tensor] | None = None,
                  invariant_weight: float = 1.0, groups: Any = None, weights: Any = None, seed: int | None = 0,
                  engine: Any = None, chunk_size: int | None = None, dcfg_form: str | None = None) -> np.ndarray:
    """Reversibility: L1 (0..255) between ``x`` and ``do(a')`` followed by ``do(a)`` back.

    The way there is the counterfactual query ``do(a = a')`` (given, or computed here); the way back is a
    second full query on the counterfactual: its attribute noise is abducted from ``a'``'s world and the
    intervention sets each intervened node back to its factual value; its image is inverted under the
    counterfactual parents and decoded under the returned parents, with the same guidance.

    Args:
        pipe: the pipeline.
        images: factual images (B, C, H, W).
        parents: factual attributes (every attribute node).
        do: the intervention there, node -> (B,) values.
        guidance, scale, invariant_weight, groups, weights: the guidance of both queries (see
            ``resolve_guidance``; explicit ``groups`` with ``weights`` are used as given).
        steps: DDIM steps.
        counterfactual, counterfactual_parents: the way there, if already computed.
        seed: seed of the SCM's abduction.
        engine, chunk_size: see :func:`composition`.
        dcfg_form: DCFG's formulation (default: the pipeline's ``config.dcfg_form``).

    Returns:
        ``(B,)`` per-image L1 on 0..255.

    Example:
        >>> d = reversibility(pipe, x, parents, {"thickness": t_new}, "dcfg", 3.0, steps=50)  # doctest: +SKIP
    """
    from pipeline.groups import resolve_guidance

    eng = _engine(pipe, engine, chunk_size)
    group_lists, weights = resolve_guidance(pipe.graph, list(do), guidance, scale, groups, weights, invariant_weight)
    if counterfactual is None or counterfactual_parents is None:
        cf_parents = pipe.scm.predict(pipe.scm.abduct(parents, seed=seed), do=dict(do))
        x_T = eng.invert(images, parents, steps)
        counterfactual = eng.decode(x_T, cf_parents, guidance, group_lists, weights, steps, dcfg_form=dcfg_form)
    else:
        cf_parents = dict(counterfactual_parents)
    back = pipe.scm.predict(pipe.scm.abduct(cf_parents, seed=seed), do={k: parents[k] for k in do})
    z = eng.invert(counterfactual, cf_parents, steps)
    x_back = eng.decode(z, back, guidance, group_lists, weights, steps, dcfg_form=dcfg_form)
    return l1(x_back, images, scale=255.0)
