"""The benchmark's metrics, each defined once (docs/evaluation.md describes them).

All functions take batches (tensors or arrays) and return plain floats or per-row arrays, so that
every command and test uses the same definition.

Example:
    >>> import torch
    >>> mae(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]))
    0.25
    >>> round(psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4) + 0.2), 2)  # 0.1 on [0, 1]
    20.0
"""
from __future__ import annotations

import numpy as np
from scipy import linalg
from torch import Tensor

from dcfg_io.checks import is_integer

ArrayLike = Tensor | np.ndarray


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def mae(target: ArrayLike, measured: ArrayLike) -> float:
    """Mean absolute error between targets and measurements (effectiveness of do(t), do(i))."""
    t, m = _np(target), _np(measured)
    if t.shape != m.shape:
        raise ValueError(f"target has shape {t.shape} but measured has {m.shape}")
    return float(np.mean(np.abs(t - m)))


def accuracy(predicted: ArrayLike, target: ArrayLike) -> float:
    """Fraction of predictions equal to the target class (effectiveness of do(digit))."""
    p, t = _np(predicted), _np(target)
    if p.shape != t.shape:
        raise ValueError(f"predicted has shape {p.shape} but target has {t.shape}")
    return float(np.mean(p == t))


def to_unit(x: ArrayLike) -> np.ndarray:
    """Images in [-1, 1] -> [0, 1] float64."""
    return (np.clip(_np(x), -1.0, 1.0) + 1.0) / 2.0


def l1(x: ArrayLike, y: ArrayLike, scale: float = 1.0) -> np.ndarray:
    """Per-image mean |x - y| of [-1, 1] images, measured on [0, ``scale``] (1 or 255)."""
    a, b = to_unit(x), to_unit(y)
    if a.shape != b.shape:
        raise ValueError(f"images have shapes {a.shape} and {b.shape}")
    return np.abs(a - b).reshape(len(a), -1).mean(1) * scale


def psnr(x: ArrayLike, y: ArrayLike) -> float:
    """Mean PSNR (dB) of [-1, 1] images measured on [0, 1]; identical images give +inf."""
    a, b = to_unit(x), to_unit(y)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        vals = 10.0 * np.log10(1.0 / mse)
    return float(np.mean(vals))


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (FID's formula).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``.
    """
    a, b = _np(feats_a), _np(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D; got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each feature set needs at least 2 rows")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s_a)) * eps
        covmean = linalg.sqrtm((s_a + off) @ (s_b + off))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean), 0.0))


# ---------------------------------------------------------------------------- change of what must not change
def abs_change(factual: ArrayLike, counterfactual: ArrayLike) -> float:
    """Mean ``|m(x') - m(x)|`` of a measured attribute that must not change (spurious change).

    Example:
        >>> abs_change([2.0, 3.0], [2.5, 2.0])
        0.75
    """
    return mae(factual, counterfactual)


def excess_change(factual: ArrayLike, counterfactual: ArrayLike, implied_factual: ArrayLike,
                  implied_counterfactual: ArrayLike) -> float:
    """Mean change of a measured attribute beyond the change the SCM implies.

    ``mean |(m(x') - m(x)) - (a' - a)|`` where ``m`` is the oracle's measurement of the factual (``x``) and
    counterfactual (``x'``) images and ``a -> a'`` is the SCM's factual and counterfactual value (e.g. the
    intensity change that do(thickness) causes through thickness -> intensity).

    Example:
        >>> excess_change([100.0], [130.0], [100.0], [120.0])  # measured +30, implied +20
        10.0
    """
    f, c, a, b = (_np(v) for v in (factual, counterfactual, implied_factual, implied_counterfactual))
    if not (f.shape == c.shape == a.shape == b.shape):
        raise ValueError(f"all four arrays need one shape; got {f.shape}, {c.shape}, {a.shape}, {b.shape}")
    return float(np.mean(np.abs((c - f) - (b - a))))


def flip_rate(predicted: ArrayLike, factual: ArrayLike) -> float:
    """Fraction of counterfactuals whose predicted class differs from the factual class (1 - accuracy).

    Example:
        >>> flip_rate([3, 3, 5, 3], [3, 3, 3, 3])
        0.25
    """
    return 1.0 - accuracy(predicted, factual)


# ---------------------------------------------------------------------------- equal-effectiveness comparison
def pareto_front(effectiveness: ArrayLike, spurious: ArrayLike,
                 higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """The non-dominated points of a trade-off curve, sorted by oriented effectiveness.

    Effectiveness is oriented so that larger is better (``-MAE`` for an error, accuracy as is). A point is
    dominated when another point is at least as effective and at most as spurious, one of them strictly.
    Along the returned front both the oriented effectiveness and the spurious change increase.

    Returns:
        ``(oriented_effectiveness, spurious)`` of the front, ascending.

    Example:
        >>> e, s = pareto_front([0.9, 0.5, 0.3, 0.6], [0.1, 0.2, 0.3, 0.4], higher_is_better=False)
        >>> (-e).tolist(), s.tolist()   # (MAE 0.6, spurious 0.4) is dominated by (0.5, 0.2)
        ([0.9, 0.5, 0.3], [0.1, 0.2, 0.3])
    """
    e, s = _np(effectiveness).ravel(), _np(spurious).ravel()
    if e.shape != s.shape or len(e) == 0:
        raise ValueError(f"effectiveness and spurious need the same non-zero length; got {e.shape} and {s.shape}")
    if not (np.isfinite(e).all() and np.isfinite(s).all()):
        raise ValueError("trade-off points must be finite")
    e = e if higher_is_better else -e
    keep = []
    for k in range(len(e)):
        dominated = np.any((e >= e[k]) & (s <= s[k]) & ((e > e[k]) | (s < s[k])))
        duplicate = np.any((e[:k] == e[k]) & (s[:k] == s[k]))
        if not dominated and not duplicate:
            keep.append(k)
    order = sorted(keep, key=lambda k: e[k])
    return e[order], s[order]


def _at_baseline_best(ea: np.ndarray, sa: np.ndarray, eb: np.ndarray, sb: np.ndarray, sign: float) -> dict:
    """The method's front against the baseline's at the baseline's most effective point (oriented arrays)."""
    e_star, s_b = float(eb[-1]), float(sb[-1])
    out: dict = {"effectiveness": sign * e_star, "method": None, "baseline": s_b, "ratio": None, "reason": None}
    if e_star > ea[-1]:
        out["reason"] = (f"the method's front {_span(sign * ea[0], sign * ea[-1])} does not reach the baseline's "
                         f"best effectiveness {sign * e_star:.4g}")
        return out
    out["method"] = float(np.interp(e_star, ea, sa))  # below the front's range: its least spurious point
    if s_b <= 0.0:
        out["reason"] = "the baseline has no spurious change at its best effectiveness (ratio undefined)"
        return out
    out["ratio"] = out["method"] / s_b
    return out


def _span(a: float, b: float) -> str:
    lo, hi = sorted((float(a), float(b)))
    return f"[{lo:.4g}, {hi:.4g}]"


def equal_effectiveness_ratio(method: tuple[ArrayLike, ArrayLike], baseline: tuple[ArrayLike, ArrayLike],
                              higher_is_better: bool, grid: int = 101) -> dict:
    """Spurious change of ``method`` over ``baseline`` at equal effectiveness (e.g. DCFG / CFG).

    Definition (used by ``dcfg evaluate``):

    1. Each method's sweep gives points ``(effectiveness, spurious)``, one per guidance scale.
    2. Keep each method's Pareto front (:func:`pareto_front`): the best spurious change it reaches at each
       effectiveness; ``s_m(e)`` interpolates it linearly in the oriented effectiveness ``e``.
    3. The common range is ``[max(lo_A, lo_B), min(hi_A, hi_B)]`` of the two fronts' effectiveness.
    4. ``ratio = mean_g s_A(e_g) / mean_g s_B(e_g)`` over ``grid`` evenly spaced ``e_g`` of the common range
       (the ratio of the areas under the two fronts there; a single shared point if the range is one value).

    The ratio is ``None`` (with a ``reason``) when the ranges do not overlap or the baseline has no spurious
    change there. Without overlap, ``nearest`` still compares the two fronts at their nearest ends (the
    least effective point of the more effective method against the most effective point of the other):
    ``{"ratio": s_A / s_B, "method_more_effective": bool}``; it is not a ratio at equal effectiveness.

    ``at_baseline_best`` is the same comparison at one effectiveness, the baseline's best (the most
    effective point of its front, where a user of the baseline would run it): ``{"effectiveness",
    "method", "baseline", "ratio", "reason"}`` with ``method = s_A(e*)`` interpolated on the method's front
    and ``baseline = s_B(e*)``. Where the method's whole front is more effective than ``e*``, ``method`` is
    its least spurious point (it is at least as effective there); ``ratio`` is ``None`` (with a ``reason``)
    when the method's front does not reach ``e*``. Both curves start from the same unguided point at weight
    1, so the mean over the whole common range always includes a stretch where the ratio is near 1 by
    construction; the ratio at the baseline's best compares the two where guidance is actually used.

    Args:
        method: ``(effectiveness, spurious)`` arrays of the method (numerator), e.g. DCFG.
        baseline: the same for the baseline (denominator), e.g. CFG.
        higher_is_better: whether larger effectiveness is better (accuracy) or not (an MAE).
        grid: number of evaluation points in the common range.

    Returns:
        ``{"ratio", "range", "method_mean", "baseline_mean", "reason", "nearest"}``; ``range`` is in the
        metric's own units (un-oriented), lowest first.

    Example:
        >>> cfg = ([1.0, 0.5, 0.2], [0.2, 0.4, 0.6])      # thickness MAE, spurious
        >>> dcfg = ([1.0, 0.5, 0.2], [0.1, 0.2, 0.3])
        >>> res = equal_effectiveness_ratio(dcfg, cfg, higher_is_better=False)
        >>> round(res["ratio"], 6), res["at_baseline_best"]["effectiveness"], res["at_baseline_best"]["ratio"]
        (0.5, 0.2, 0.5)
    """
    if not is_integer(grid, 2, python_int=True):
        raise ValueError(f"grid={grid!r} must be an integer >= 2")
    ea, sa = pareto_front(*method, higher_is_better=higher_is_better)
    eb, sb = pareto_front(*baseline, higher_is_better=higher_is_better)
    lo, hi = max(ea[0], eb[0]), min(ea[-1], eb[-1])
    sign = 1.0 if higher_is_better else -1.0
    out: dict = {"ratio": None, "range": None, "method_mean": None, "baseline_mean": None, "reason": None,
                 "nearest": None, "at_baseline_best": _at_baseline_best(ea, sa, eb, sb, sign)}
    if lo > hi:
        out["reason"] = ("the two methods' effectiveness ranges do not overlap: "
                         + _span(sign * ea[0], sign * ea[-1]) + " vs " + _span(sign * eb[0], sign * eb[-1]))
        better = bool(ea[0] > eb[-1])  # the method's least effective point beats the baseline's best
        s_a, s_b = (sa[0], sb[-1]) if better else (sa[-1], sb[0])
        out["nearest"] = {"ratio": float(s_a / s_b) if s_b > 0 else None, "method_more_effective": better}
        return out
    g = np.linspace(lo, hi, grid) if hi > lo else np.array([lo])
    ma, mb = float(np.mean(np.interp(g, ea, sa))), float(np.mean(np.interp(g, eb, sb)))
    out.update(range=sorted([float(sign * lo), float(sign * hi)]), method_mean=ma, baseline_mean=mb)
    if mb <= 0.0:
        out["reason"] = "the baseline has no spurious change on the common range (ratio undefined)"
        return out
    out["ratio"] = ma / mb
    return out
