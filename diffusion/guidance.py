"""Classifier-free guidance (CFG) and decoupled CFG (DCFG), as pure functions of an eps-model.

``eps_model(x, t, attrs, keep_mask)`` is :meth:`ConditionalUNet.eps`'s signature: ``keep_mask[name]`` is a bool
tensor ``(B,)`` that nulls that attribute's embedding block where False.

CFG (Ho & Salimans 2022), one global weight w:

    eps = eps(x, null) + w * (eps(x, c) - eps(x, null))

DCFG (arXiv 2506.14399, the decoupled guidance equation), attributes partitioned into groups G_1..G_M with weights
w_1..w_M, and ``c^(m)`` the condition that keeps only group m's blocks (all other blocks nulled):

    eps = eps(x, null) + sum_{m=1..M} w_m * (eps(x, c^(m)) - eps(x, null))

With one group holding every conditioned attribute, c^(1) = c and DCFG is exactly CFG. Both functions stack the
M + 1 conditions along the batch and call the model ONCE on the (M + 1) * B rows (row block 0 is the null
condition, block m the condition c^(m)), so guidance costs one batched forward per sampling step.

DCFG anchored at the full condition (``anchor="full"``; this project's variant, not the paper's equation). With
``c^(-m)`` the condition that nulls group m only:

    eps = eps(x, c) + sum_{m=1..M} (w_m - 1) * (eps(x, c) - eps(x, c^(-m)))

Each group's direction is taken *given all the other groups*: ``eps(x, c) - eps(x, c^(-m))`` is (minus, scaled)
the score of the implicit classifier ``p(c_m | x, c_(-m))``, while the paper's ``eps(x, c^(m)) - eps(x, null)``
is that of ``p(c_m | x)``. The two agree when the groups are conditionally independent given ``x``
(``p(x | c)`` factorises into the groups' experts); when they are not, amplifying ``p(c_m | x)`` also moves the
attributes that co-vary with group m, which is the spurious change DCFG exists to avoid. Weight 1 on every group
is exactly the plain conditional ``eps(x, c)`` (with ``anchor="null"`` it is the product of the groups' experts),
one group is exactly CFG again, and a group at weight 1 costs nothing: the forward has ``1 + #{m: w_m != 1}``
row blocks instead of ``M + 1``.

Example:
    >>> import torch
    >>> def eps_model(x, t, attrs, keep_mask):  # a toy model: eps = x + sum of kept attribute values
    ...     kept = sum(v * keep_mask[k] for k, v in attrs.items())
    ...     return x + kept[:, None, None, None]
    >>> x, t = torch.zeros(2, 1, 1, 1), torch.tensor([5, 5])
    >>> attrs = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([10.0, 10.0])}
    >>> dcfg(eps_model, x, t, attrs, groups=[["a"], ["b"]], weights=[2.0, 0.5]).flatten().tolist()
    [7.0, 7.0]
    >>> cfg(eps_model, x, t, attrs, w=2.0).flatten().tolist()
    [22.0, 22.0]
    >>> dcfg(eps_model, x, t, attrs, groups=[["a"], ["b"]], weights=[2.0, 1.0], anchor="full").flatten().tolist()
    [12.0, 12.0]

Guidance variants (``guided_eps_fn(..., variant=, interval=)``; docs/guidance.md). Each one recombines the same
batched forward, which :func:`cfg_parts` / :func:`dcfg_parts` return as :class:`GuidanceParts`: the anchor eps,
and per guided direction m its difference ``d_m`` (CFG: ``eps(c) - eps(null)``; DCFG, null anchor:
``eps(c^(m)) - eps(null)``; full anchor: ``eps(c) - eps(c^(-m))``), its conditional side ``v_m`` (``eps(c)``,
``eps(c^(m))``, ``eps(c)``) and its weight ``w_m``. ``eps_1`` below is the weight-1 prediction (``eps(c)``; with
the null anchor and several groups ``eps(null) + sum_m d_m``, the groups' product of experts).

* CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance", their eq. for the DDIM step):
  the clean-image estimate comes from the guided eps and the re-noising from the anchor eps,

      x_s = sqrt(abar_s) x0_hat(eps_guided) + sqrt(1 - abar_s) eps_anchor,

  so its eps is a :class:`GuidedEps` pair ``(denoise=eps_guided, renoise=eps_anchor)``. The anchor is the paper's
  ``eps(null)`` for CFG and DCFG anchored at null, and ``eps(c)`` for DCFG anchored at the full condition (whose
  guidance starts from the full condition, so weight 1 there stays plain DDIM). Its inversion swaps the roles
  (``ddim_invert`` does it), which is the exact inverse of the sampling step. The paper's ``lambda`` in [0, 1]
  is this module's weight: CFG++ at ``w`` guides more strongly than CFG at ``w``.
* APG (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance Scales in Diffusion
  Models", Algorithm 1), on each difference in the denoised space (``D = (x - sqrt(1 - abar) eps) / sqrt(abar)``,
  so ``Delta_m = -sqrt((1 - abar) / abar) d_m`` and ``V_m = D(v_m)``), see :func:`apg_update`:

      r_m <- Delta_m + beta r_m                                   (momentum; Delta_m := r_m)
      Delta_m <- Delta_m min(1, tau / ||Delta_m||)                (norm threshold, per image over C, H, W)
      Delta_m = Delta_par + Delta_orth,  Delta_par = (<Delta_m, V_m> / <V_m, V_m>) V_m
      Delta_m' = Delta_orth + eta Delta_par
      eps = eps_1 + sum_m (w_m - 1) d_m',  d_m' = -sqrt(abar / (1 - abar)) Delta_m'

  With ``eta = 1``, no threshold and no momentum it is CFG / DCFG again (up to rounding).
* Guidance interval (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
  Distribution Quality in Diffusion Models"): guided eps where ``lo <= t <= hi`` (timesteps of the schedule),
  the plain conditional ``eps(x, c)`` elsewhere, which costs one row block instead of the guidance's.

    >>> parts = cfg_parts(eps_model, x, t, attrs)
    >>> [p.flatten().tolist() for p in (parts.anchor, parts.diffs[0], parts.conds[0])], parts.weights
    ([[0.0, 0.0], [11.0, 11.0], [11.0, 11.0]], (1.0,))
    >>> fn = guided_eps_fn(eps_model, attrs, "cfg", scale=2.0, variant="cfgpp")
    >>> [e.flatten().tolist() for e in fn(x, t)]  # (denoise, renoise) = (eps(null) + 2 d, eps(null))
    [[22.0, 22.0], [0.0, 0.0]]
    >>> abar = torch.linspace(0.99, 0.01, 10, dtype=torch.float64)
    >>> fn = guided_eps_fn(eps_model, attrs, "cfg", scale=2.0, interval=(0, 4), alphas_cumprod=abar)
    >>> fn(x, t).flatten().tolist()  # t = 5 is outside [0, 4]: the plain conditional eps(x, c)
    [11.0, 11.0]
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from dcfg_io.checks import is_number

EpsModel = Callable[[Tensor, Tensor, Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]
GUIDANCE_MODES = ("none", "cfg", "dcfg")
DCFG_ANCHORS = ("null", "full")
#: guidance variants of :func:`guided_eps_fn` (``None``: plain CFG / DCFG)
VARIANTS = ("apg", "cfgpp")
#: APG defaults: the parallel part removed (the paper's eta = 0), the paper's negative momentum, and a norm threshold
#: on the denoised-space difference (per image, L2 over C, H, W, images on [-1, 1]); see :func:`apg_update`.
APG_ETA = 0.0
APG_MOMENTUM = -0.5
APG_THRESHOLD = 15.0  # see apg_update: caps the first, noisiest steps of a 28x28 model


class GuidedEps(NamedTuple):
    """The two roles of eps in one deterministic DDIM step, when a guidance gives them different values (CFG++).

    ``x_s = sqrt(abar_s) x0_hat(denoise) + sqrt(1 - abar_s) renoise`` with ``x0_hat(e) = (x_t - sqrt(1 - abar_t)
    e) / sqrt(abar_t)``. :func:`diffusion.ddim.ddim_sample` uses the roles as named; :func:`diffusion.ddim.
    ddim_invert` swaps them (predicting the clean image with ``renoise``, re-noising with ``denoise``), which is
    the algebraic inverse of the sampling step. A plain tensor plays both roles.
    """

    denoise: Tensor
    renoise: Tensor


class GuidanceParts(NamedTuple):
    """One guided forward, taken apart: what CFG, DCFG and their variants combine.

    Attributes:
        anchor: the eps the guidance starts from: ``eps(null)`` (CFG, DCFG anchored at null) or ``eps(c)``
            (DCFG anchored at the full condition).
        diffs: per guided direction m, ``d_m = v_m - (its reference)``: ``eps(c) - eps(null)`` (CFG),
            ``eps(c^(m)) - eps(null)`` (DCFG, null) or ``eps(c) - eps(c^(-m))`` (DCFG, full; the groups at
            weight 1 are left out).
        conds: per direction, its conditional side ``v_m``: ``eps(c)``, ``eps(c^(m))`` or ``eps(c)``.
        weights: per direction, its guidance weight ``w_m``.
        full: anchored at the full condition (``guided = anchor + sum_m (w_m - 1) d_m``), else at null
            (``guided = anchor + sum_m w_m d_m``).
    """

    anchor: Tensor
    diffs: tuple[Tensor, ...]
    conds: tuple[Tensor, ...]
    weights: tuple[float, ...]
    full: bool = False

    def guided(self) -> Tensor:
        """The CFG / DCFG eps (the same arithmetic as :func:`cfg` and :func:`dcfg`)."""
        out = self.anchor
        for w, d in zip(self.weights, self.diffs):
            out = out + ((w - 1.0) if self.full else w) * d
        return out

    def conditional(self) -> Tensor:
        """The weight-1 prediction ``eps_1``: ``eps(c)``, or with the null anchor and several groups the groups'
        product of experts ``eps(null) + sum_m d_m``."""
        if self.full:
            return self.anchor
        if len(self.diffs) == 1:
            return self.conds[0]
        out = self.anchor
        for d in self.diffs:
            out = out + d
        return out

    def recombine(self, diffs: Sequence[Tensor]) -> Tensor:
        """``eps_1 + sum_m (w_m - 1) diffs[m]``: the guidance with replaced directions (APG's form)."""
        out = self.conditional()
        for w, d in zip(self.weights, diffs):
            out = out + (w - 1.0) * d
        return out


def _timesteps(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps t have shape {tuple(t.shape)}; expected () or ({batch},)")
    return t


def _check_weight(w: Any, what: str) -> float:
    if not is_number(w):
        raise ValueError(f"{what}={w!r} must be a finite number (e.g. 3.0; 1.0 = plain conditioning)")
    return float(w)


def check_groups(attrs: Mapping[str, Tensor], groups: Sequence[Sequence[str]], weights: Sequence[float]
                 ) -> tuple[list[list[str]], list[float]]:
    """Validate that ``groups`` partition ``attrs``' keys and that there is one finite weight per group.

    Returns:
        ``(groups, weights)`` as lists.

    Example:
        >>> import torch
        >>> check_groups({"a": torch.zeros(1), "b": torch.zeros(1)}, [["a"], ["b"]], [2, 1])
        ([['a'], ['b']], [2.0, 1.0])
    """
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError(f"groups must be a list of lists of attribute names, got {groups!r}")
    out = []
    for g in groups:
        if isinstance(g, str) or not isinstance(g, Sequence) or not all(isinstance(n, str) for n in g):
            raise TypeError(f"each group must be a list of attribute names, got {g!r} (e.g. [['thickness'], "
                            f"['digit']])")
        if not g:
            raise ValueError(f"groups {list(map(list, groups))} contain an empty group; drop it")
        out.append(list(g))
    names = [n for g in out for n in g]
    conditioned = list(attrs)
    unknown = [n for n in names if n not in attrs]
    if unknown:
        raise ValueError(f"groups name {unknown}, which are not among the conditioned attributes {conditioned}; "
                         f"add them to attrs or drop them from the groups")
    repeated = sorted({n for n in names if names.count(n) > 1})
    missing = [n for n in conditioned if n not in names]
    if repeated or missing:
        raise ValueError(f"groups {out} must partition the conditioned attributes {conditioned} (each exactly once): "
                         + (f"{repeated} appear in several groups" if repeated else "")
                         + ("; " if repeated and missing else "")
                         + (f"{missing} are in no group" if missing else ""))
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a list of numbers, one per group, got {weights!r}")
    if len(weights) != len(out):
        raise ValueError(f"got {len(weights)} weights for {len(out)} groups; give one weight per group")
    return out, [_check_weight(w, f"weights[{i}]") for i, w in enumerate(weights)]


def cfg(eps_model: EpsModel, x: Tensor, t: Tensor | int, attrs: Mapping[str, Tensor], w: float) -> Tensor:
    """Classifier-free guidance with one global weight ``w``, in one batched forward of 2B rows.

    Args:
        eps_model: ``eps_model(x, t, attrs, keep_mask) -> eps`` (e.g. ``ConditionalUNet.eps``).
        x: noisy images ``(B, C, H, W)``.
        t: int64 timesteps ``(B,)`` or a scalar.
        attrs: the condition, name -> ``(B,)``.
        w: guidance weight (1 = plain conditional, 0 = unconditional).

    Returns:
        ``eps(x, null) + w * (eps(x, c) - eps(x, null))``.

    Example:
        >>> import torch
        >>> toy = lambda x, t, a, m: x + (a["y"] * m["y"])[:, None]
        >>> cfg(toy, torch.zeros(1, 1), 0, {"y": torch.tensor([2.0])}, w=3.0).item()
        6.0
    """
    return cfg_parts(eps_model, x, t, attrs, w).guided()


def cfg_parts(eps_model: EpsModel, x: Tensor, t: Tensor | int, attrs: Mapping[str, Tensor], w: float = 1.0
              ) -> GuidanceParts:
    """CFG's forward (2B rows, once) taken apart: anchor ``eps(null)``, one direction ``eps(c) - eps(null)``.

    Example:
        >>> import torch
        >>> toy = lambda x, t, a, m: x + (a["y"] * m["y"])[:, None]
        >>> p = cfg_parts(toy, torch.zeros(1, 1), 0, {"y": torch.tensor([2.0])}, w=3.0)
        >>> p.anchor.item(), p.diffs[0].item(), p.conds[0].item(), p.guided().item()
        (0.0, 2.0, 2.0, 6.0)
    """
    w = _check_weight(w, "w")
    B = x.shape[0]
    t = _timesteps(t, B, x.device)
    off, on = torch.zeros(B, dtype=torch.bool, device=x.device), torch.ones(B, dtype=torch.bool, device=x.device)
    e = eps_model(torch.cat([x, x]), torch.cat([t, t]), {k: torch.cat([v, v]) for k, v in attrs.items()},
                  {k: torch.cat([off, on]) for k in attrs})
    e_null, e_cond = e[:B], e[B:]
    return GuidanceParts(e_null, (e_cond - e_null,), (e_cond,), (w,), False)


def check_anchor(anchor: Any) -> str:
    """Validate DCFG's ``anchor``: ``"null"`` (the paper's equation) or ``"full"`` (see the module docstring)."""
    if not isinstance(anchor, str) or anchor not in DCFG_ANCHORS:
        raise ValueError(f"anchor={anchor!r} must be 'null' (the paper's DCFG: eps(null) + sum_m w_m (eps(c^m) - "
                         f"eps(null))) or 'full' (eps(c) + sum_m (w_m - 1) (eps(c) - eps(c^-m)))")
    return anchor


def dcfg_rows(groups: Sequence[Sequence[str]], weights: Sequence[float], anchor: str = "null") -> int:
    """Row blocks of one DCFG forward (network evaluations per image and step).

    Example:
        >>> dcfg_rows([["t"], ["i"], ["y"]], [3.0, 1.0, 1.0]), dcfg_rows([["t"], ["i"], ["y"]], [3.0, 1.0, 1.0], "full")
        (4, 2)
    """
    if check_anchor(anchor) == "null":
        return len(groups) + 1
    return 1 + sum(1 for w in weights if float(w) != 1.0)


def dcfg(eps_model: EpsModel, x: Tensor, t: Tensor | int, attrs: Mapping[str, Tensor],
         groups: Sequence[Sequence[str]], weights: Sequence[float], anchor: str = "null") -> Tensor:
    """Decoupled classifier-free guidance: one weight per attribute group, in one batched forward.

    ``anchor="null"`` (default), the paper's equation (arXiv 2506.14399):
    ``eps = eps(x, null) + sum_m weights[m] * (eps(x, c^(m)) - eps(x, null))``, where ``c^(m)`` keeps only
    ``groups[m]``. ``anchor="full"``: ``eps = eps(x, c) + sum_m (weights[m] - 1) * (eps(x, c) - eps(x, c^(-m)))``,
    where ``c^(-m)`` nulls only ``groups[m]``: each group is amplified given the others, and weight 1 on every
    group is the plain conditional (see the module docstring). The groups must partition ``attrs``' keys; to
    leave an attribute unconditioned, leave it out of ``attrs``.

    Args:
        eps_model: ``eps_model(x, t, attrs, keep_mask) -> eps``.
        x: noisy images ``(B, C, H, W)``.
        t: int64 timesteps ``(B,)`` or a scalar.
        attrs: the condition, name -> ``(B,)``.
        groups: M lists of attribute names partitioning ``attrs``.
        weights: M guidance weights.
        anchor: ``"null"`` or ``"full"``.

    Returns:
        The guided noise prediction ``(B, C, H, W)``.

    Example:
        >>> import torch
        >>> toy = lambda x, t, a, m: x + sum(a[k] * m[k] for k in a)[:, None]
        >>> dcfg(toy, torch.zeros(1, 1), 0, {"a": torch.tensor([1.0]), "b": torch.tensor([2.0])},
        ...      [["a"], ["b"]], [3.0, 1.0]).item()
        5.0
        >>> dcfg(toy, torch.zeros(1, 1), 0, {"a": torch.tensor([1.0]), "b": torch.tensor([2.0])},
        ...      [["a"], ["b"]], [3.0, 1.0], anchor="full").item()
        5.0
    """
    return dcfg_parts(eps_model, x, t, attrs, groups, weights, anchor).guided()


def dcfg_parts(eps_model: EpsModel, x: Tensor, t: Tensor | int, attrs: Mapping[str, Tensor],
               groups: Sequence[Sequence[str]], weights: Sequence[float], anchor: str = "null") -> GuidanceParts:
    """DCFG's forward (one batched call) taken apart into :class:`GuidanceParts`.

    ``anchor="null"``: anchor ``eps(null)``, direction m ``eps(c^(m)) - eps(null)`` with conditional side
    ``eps(c^(m))``, for every group. ``anchor="full"``: anchor ``eps(c)``, direction m ``eps(c) - eps(c^(-m))``
    with conditional side ``eps(c)``, for the groups whose weight is not 1 only (they cost no rows).

    Example:
        >>> import torch
        >>> toy = lambda x, t, a, m: x + sum(a[k] * m[k] for k in a)[:, None]
        >>> attrs = {"a": torch.tensor([1.0]), "b": torch.tensor([2.0])}
        >>> p = dcfg_parts(toy, torch.zeros(1, 1), 0, attrs, [["a"], ["b"]], [3.0, 1.0])
        >>> [d.item() for d in p.diffs], p.guided().item(), p.conditional().item()
        ([1.0, 2.0], 5.0, 3.0)
        >>> p = dcfg_parts(toy, torch.zeros(1, 1), 0, attrs, [["a"], ["b"]], [3.0, 1.0], anchor="full")
        >>> p.anchor.item(), [d.item() for d in p.diffs], p.weights
        (3.0, [1.0], (3.0,))
    """
    groups, weights = check_groups(attrs, groups, weights)
    anchor = check_anchor(anchor)
    B, M = x.shape[0], len(groups)
    t = _timesteps(t, B, x.device)
    if anchor == "full":
        return _dcfg_full_parts(eps_model, x, t, attrs, groups, weights)
    # rows [0, B): the null condition; rows [m B, (m + 1) B): keep group m only
    keep = {k: torch.cat([torch.zeros(B, dtype=torch.bool, device=x.device)]
                         + [torch.full((B,), k in g, dtype=torch.bool, device=x.device) for g in groups])
            for k in attrs}
    e = eps_model(torch.cat([x] * (M + 1)), torch.cat([t] * (M + 1)),
                  {k: torch.cat([v] * (M + 1)) for k, v in attrs.items()}, keep)
    e = e.view(M + 1, B, *e.shape[1:])
    e_null = e[0]
    return GuidanceParts(e_null, tuple(e[m + 1] - e_null for m in range(M)), tuple(e[m + 1] for m in range(M)),
                         tuple(weights), False)


def _dcfg_full_parts(eps_model: EpsModel, x: Tensor, t: Tensor, attrs: Mapping[str, Tensor],
                     groups: list[list[str]], weights: list[float]) -> GuidanceParts:
    """``eps(x, c) + sum_m (w_m - 1) (eps(x, c) - eps(x, c^(-m)))``; groups at weight 1 get no rows."""
    B = x.shape[0]
    amplified = [m for m, w in enumerate(weights) if w != 1.0]
    # rows [0, B): the full condition; rows [(j + 1) B, (j + 2) B): the condition without group amplified[j]
    keep = {k: torch.cat([torch.ones(B, dtype=torch.bool, device=x.device)]
                         + [torch.full((B,), k not in groups[m], dtype=torch.bool, device=x.device) for m in amplified])
            for k in attrs}
    K = len(amplified) + 1
    e = eps_model(torch.cat([x] * K), torch.cat([t] * K), {k: torch.cat([v] * K) for k, v in attrs.items()}, keep)
    e = e.view(K, B, *e.shape[1:])
    e_full = e[0]
    return GuidanceParts(e_full, tuple(e_full - e[j + 1] for j in range(len(amplified))),
                         (e_full,) * len(amplified), tuple(weights[m] for m in amplified), True)


# ---------------------------------------------------------------------------------------------- variants
def check_variant(variant: Any) -> str | None:
    """Validate a guidance variant: ``None`` (or ``"none"``), ``"apg"`` or ``"cfgpp"``.

    Example:
        >>> check_variant("apg"), check_variant("none")
        ('apg', None)
    """
    if variant is None or variant == "none":
        return None
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} must be None, 'apg' (adaptive projected guidance) or 'cfgpp' (CFG++)")
    return variant


def check_interval(interval: Any, num_timesteps: int | None = None) -> tuple[float, float] | None:
    """Validate a guidance interval ``(lo, hi)``: numbers with ``0 <= lo < hi <= T`` (``T = num_timesteps``).

    Example:
        >>> check_interval([200, 800], 1000)
        (200.0, 800.0)
        >>> check_interval((800, 200), 1000)
        Traceback (most recent call last):
        ...
        ValueError: interval=(800, 200) must be (lo, hi) with lo < hi: guidance applies where lo <= t <= hi
    """
    if interval is None:
        return None
    bound = "" if num_timesteps is None else f" <= {int(num_timesteps)}"
    if (isinstance(interval, (str, bytes)) or not isinstance(interval, Sequence) or len(interval) != 2
            or not all(is_number(v) for v in interval)):
        raise ValueError(f"interval={interval!r} must be two numbers (lo, hi) with 0 <= lo < hi{bound}, in timesteps "
                         f"of the schedule (e.g. (200, 800))")
    lo, hi = float(interval[0]), float(interval[1])
    if lo >= hi:
        raise ValueError(f"interval={interval!r} must be (lo, hi) with lo < hi: guidance applies where lo <= t <= hi")
    if lo < 0 or (num_timesteps is not None and hi > num_timesteps):
        raise ValueError(f"interval={interval!r} is outside [0, {num_timesteps if num_timesteps is not None else 'T'}]"
                         f": give 0 <= lo < hi{bound} (timesteps of the model's schedule)")
    return lo, hi


def check_apg(eta: Any = APG_ETA, threshold: Any = APG_THRESHOLD, momentum: Any = APG_MOMENTUM
              ) -> tuple[float, float | None, float]:
    """Validate APG's settings: ``0 <= eta <= 1``, ``threshold >= 0`` or ``None`` (0 / None: off),
    ``-1 < momentum < 1``.

    Example:
        >>> check_apg(0.5, 0, -0.5)
        (0.5, None, -0.5)
    """
    if not is_number(eta, 0.0, 1.0):
        raise ValueError(f"apg_eta={eta!r} must be a number in [0, 1] (the weight of the guidance's part parallel to "
                         f"the conditional prediction: 0 removes it, 1 is plain CFG)")
    if threshold is not None and not is_number(threshold, 0):
        raise ValueError(f"apg_threshold={threshold!r} must be a non-negative number, or 0 / None for no norm "
                         f"threshold")
    if not is_number(momentum, -1.0, 1.0, low_open=True, high_open=True):
        raise ValueError(f"apg_momentum={momentum!r} must be a number in (-1, 1) (the paper's is -0.5; 0: none)")
    return float(eta), (float(threshold) or None) if threshold is not None else None, float(momentum)


def apg_update(d: Tensor, v: Tensor, eta: float = APG_ETA, threshold: float | None = None, momentum: float = 0.0,
               state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """APG's update of one guidance difference ``d`` against the conditional prediction ``v`` (Sadat et al. 2024,
    Algorithm 1), per image over ``(C, H, W)``:

    1. momentum: ``r = d + momentum * state`` (``state``: the previous step's ``r``; none at the first step), ``d = r``;
    2. norm threshold: ``d = d * min(1, threshold / ||d||)`` (``threshold`` None or 0: off);
    3. projection: ``d_par = (<d, v> / <v, v>) v``, ``d_orth = d - d_par``, and ``d' = d_orth + eta * d_par``.

    Args:
        d: the difference ``(B, ...)``.
        v: the prediction it is projected onto, same shape.
        eta: weight of the parallel part, in [0, 1] (0: removed, the paper's default; 1: kept).
        threshold: the largest norm of ``d`` per image.
        momentum: ``beta`` of the running average (the paper's is negative, -0.5).
        state: the running average of the previous step (``None``: start afresh).

    Returns:
        ``(d', r)``: the updated difference, and the running average to pass as ``state`` at the next step.

    Example:
        >>> import torch
        >>> d, v = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
        >>> apg_update(d, v, eta=0.0)[0].tolist(), apg_update(d, v, eta=0.5)[0].tolist()
        ([[0.0, 4.0]], [[1.5, 4.0]])
        >>> apg_update(d, v, eta=1.0, threshold=2.5)[0].tolist()  # ||d|| = 5 capped at 2.5
        [[1.5, 2.0]]
        >>> r = apg_update(d, v, eta=1.0, momentum=-0.5)[1]        # first step: r = d
        >>> apg_update(torch.tensor([[1.0, 2.0]]), v, eta=1.0, momentum=-0.5, state=r)[0].tolist()
        [[-0.5, 0.0]]
    """
    if state is not None and momentum != 0.0:
        d = d + momentum * state
    r = d
    dims = tuple(range(1, d.dim()))
    if threshold:
        norm = d.pow(2).sum(dims, keepdim=True).sqrt()
        d = d * torch.clamp(threshold / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0)
    vv = v.pow(2).sum(dims, keepdim=True)
    coef = torch.where(vv > 0, (d * v).sum(dims, keepdim=True) / vv.clamp_min(torch.finfo(vv.dtype).tiny),
                       torch.zeros_like(vv))
    par = coef * v
    return (d - par) + eta * par, r


def apg_guidance(parts: GuidanceParts, x: Tensor, abar: Tensor, eta: float = APG_ETA,
                 threshold: float | None = APG_THRESHOLD, momentum: float = APG_MOMENTUM,
                 states: Sequence[Tensor | None] | None = None) -> tuple[Tensor, list[Tensor]]:
    """APG applied to every direction of ``parts``, in the denoised space as in the paper.

    With ``k = sqrt((1 - abar) / abar)``: ``Delta_m = -k d_m``, ``V_m = (x - sqrt(1 - abar) v_m) / sqrt(abar)``,
    ``Delta_m' = apg_update(Delta_m, V_m, ...)`` and ``eps = eps_1 + sum_m (w_m - 1) (-Delta_m' / k)``
    (``eps_1``: :meth:`GuidanceParts.conditional`). The arithmetic is float64.

    Args:
        parts: the forward's parts (:func:`cfg_parts`, :func:`dcfg_parts`).
        x: the noisy images the forward saw, ``(B, C, H, W)``.
        abar: alpha-bar at each row's timestep, ``(B,)``.
        eta, threshold, momentum: see :func:`apg_update`.
        states: the running averages of the previous step, one per direction (``None``: start afresh).

    Returns:
        ``(eps, states)``: the guided eps (``x``'s dtype) and the new running averages.

    Example:
        >>> import torch
        >>> toy = lambda x, t, a, m: x + (a["y"] * m["y"])[:, None, None, None]
        >>> x = torch.tensor([[[[0.0, 1.0]]]])
        >>> parts = cfg_parts(toy, x, 0, {"y": torch.tensor([2.0])}, w=3.0)
        >>> eps, _ = apg_guidance(parts, x, torch.tensor([0.5]), eta=1.0, threshold=None, momentum=0.0)
        >>> eps.flatten().tolist() == parts.guided().flatten().tolist()  # eta = 1, no threshold, no momentum: CFG
        True
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    a = torch.as_tensor(abar, dtype=torch.float64, device=x.device).reshape(shape)
    k = ((1.0 - a) / a).sqrt()
    xd = x.to(torch.float64)
    states = list(states) if states is not None else [None] * len(parts.diffs)
    new_diffs, new_states = [], []
    for d, v, st in zip(parts.diffs, parts.conds, states):
        delta = -k * d.to(torch.float64)
        V = (xd - (1.0 - a).sqrt() * v.to(torch.float64)) / a.sqrt()
        delta, r = apg_update(delta, V, eta, threshold, momentum, st)
        new_diffs.append((-delta / k).to(d.dtype))
        new_states.append(r)
    return parts.recombine(new_diffs), new_states


def cfgpp_eps(parts: GuidanceParts) -> GuidedEps:
    """CFG++'s pair: the clean image predicted with the guided eps, re-noised with the anchor eps.

    Example:
        >>> import torch
        >>> toy = lambda x, t, a, m: x + (a["y"] * m["y"])[:, None]
        >>> e = cfgpp_eps(cfg_parts(toy, torch.zeros(1, 1), 0, {"y": torch.tensor([2.0])}, w=3.0))
        >>> e.denoise.item(), e.renoise.item()
        (6.0, 0.0)
    """
    return GuidedEps(parts.guided(), parts.anchor)


def in_interval(t: Tensor, interval: tuple[float, float] | None) -> Tensor:
    """Whether each timestep is inside the guidance interval (``lo <= t <= hi``; no interval: everywhere)."""
    if interval is None:
        return torch.ones_like(torch.as_tensor(t), dtype=torch.bool)
    t = torch.as_tensor(t)
    return (t >= interval[0]) & (t <= interval[1])


def guided_rows(guidance: str, groups: Sequence[Sequence[str]] | None = None, weights: Sequence[float] | None = None,
                anchor: str = "null", t: int | None = None, interval: tuple[float, float] | None = None) -> int:
    """Row blocks of the guided forward at timestep ``t`` (network evaluations per image): 1 (none, or outside
    the guidance interval), 2 (CFG), :func:`dcfg_rows` (DCFG). The variants APG and CFG++ cost their base's rows.

    Example:
        >>> guided_rows("cfg"), guided_rows("cfg", t=900, interval=(100, 800)), guided_rows("dcfg", [["a"], ["b"]])
        (2, 1, 3)
    """
    if guidance == "none" or (interval is not None and t is not None and not interval[0] <= t <= interval[1]):
        return 1
    if guidance == "cfg":
        return 2
    if guidance == "dcfg":
        if not groups:
            raise ValueError("guidance='dcfg' needs its groups to count its network evaluations")
        return dcfg_rows(groups, weights if weights is not None else [1.0] * len(groups), anchor)
    raise ValueError(f"guidance={guidance!r} is not one of {GUIDANCE_MODES}")


class GuidedEpsFn:
    """The ``eps_fn(x, t)`` of a guidance variant (built by :func:`guided_eps_fn`): one batched forward per call.

    It returns a tensor, or a :class:`GuidedEps` pair for CFG++. APG's running averages (one per direction) are
    carried from call to call, and start afresh when a call's timestep is not below the previous call's (a new
    sampling run: samplers go from high noise to low), when the batch changes, or on :meth:`reset`.
    """

    def __init__(self, eps_model: EpsModel, attrs: Mapping[str, Tensor], parts: Callable[..., GuidanceParts],
                 variant: str | None, interval: tuple[float, float] | None, apg: tuple[float, float | None, float],
                 alphas_cumprod: Tensor | None) -> None:
        self.eps_model, self.attrs, self.parts = eps_model, dict(attrs), parts
        self.variant, self.interval = variant, interval
        self.apg_eta, self.apg_threshold, self.apg_momentum = apg
        self.alphas_cumprod = alphas_cumprod
        self.reset()

    def reset(self) -> None:
        """Forget APG's running averages."""
        self._states: list[Tensor] | None = None
        self._last: tuple[float, tuple[int, ...]] | None = None

    def _guided(self, x: Tensor, t: Tensor) -> Tensor | GuidedEps:
        parts = self.parts(self.eps_model, x, t, self.attrs)
        if self.variant == "cfgpp":
            return cfgpp_eps(parts)
        if self.variant == "apg":
            now = (float(t.max()), tuple(x.shape))
            if self._last is None or now[1] != self._last[1] or now[0] >= self._last[0]:
                self._states = None
            self._last = now
            abar = self.alphas_cumprod.to(t.device)[t]
            eps, self._states = apg_guidance(parts, x, abar, self.apg_eta, self.apg_threshold, self.apg_momentum,
                                             self._states)
            return eps
        return parts.guided()

    def __call__(self, x: Tensor, t: Tensor | int) -> Tensor | GuidedEps:
        t = _timesteps(t, x.shape[0], x.device)
        if self.interval is None:
            return self._guided(x, t)
        inside = in_interval(t, self.interval)
        if bool(inside.all()):
            return self._guided(x, t)
        on = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        cond = self.eps_model(x, t, self.attrs, {k: on for k in self.attrs})
        if not bool(inside.any()):
            return cond  # outside the interval: the plain conditional, one row block
        g = self._guided(x, t)  # rows on both sides of the interval in one call: both, row by row
        m = inside.reshape((-1,) + (1,) * (x.dim() - 1))
        if isinstance(g, GuidedEps):
            return GuidedEps(torch.where(m, g.denoise, cond), torch.where(m, g.renoise, cond))
        return torch.where(m, g, cond)


def guided_eps_fn(model: Any, attrs: Mapping[str, Tensor], guidance: str = "none", scale: float = 1.0,
                  groups: Sequence[Sequence[str]] | None = None, weights: Sequence[float] | None = None,
                  anchor: str = "null", variant: str | None = None, interval: Sequence[float] | None = None,
                  apg_eta: float = APG_ETA, apg_threshold: float | None = APG_THRESHOLD,
                  apg_momentum: float = APG_MOMENTUM, alphas_cumprod: Tensor | None = None
                  ) -> Callable[[Tensor, Tensor], Tensor | GuidedEps]:
    """The ``eps_fn(x, t)`` closure for :func:`ddim_sample` / :func:`ddim_invert` under a guidance mode.

    Args:
        model: a :class:`ConditionalUNet` (its ``eps`` is used) or any ``eps_model(x, t, attrs, keep_mask)``.
        attrs: the condition, name -> ``(B,)``; attributes left out are unconditioned.
        guidance: ``"none"`` (plain conditional), ``"cfg"`` (weight ``scale``) or ``"dcfg"`` (``groups`` with
            ``weights``, default ``scale`` for every group).
        scale: the CFG weight, and the default DCFG weight.
        groups: DCFG's attribute groups (required for ``"dcfg"``); they must partition ``attrs``.
        weights: DCFG's per-group weights.
        anchor: DCFG's formulation, ``"null"`` (the paper's) or ``"full"`` (see :func:`dcfg`).
        variant: ``None``, ``"apg"`` (adaptive projected guidance on each direction) or ``"cfgpp"`` (CFG++: the
            closure returns :class:`GuidedEps` pairs); see the module docstring. Not with ``guidance="none"``.
        interval: ``(lo, hi)``: guide only where ``lo <= t <= hi`` (``0 <= lo < hi <= T``), the plain
            conditional elsewhere. Not with ``guidance="none"``.
        apg_eta, apg_threshold, apg_momentum: APG's settings (see :func:`apg_update`).
        alphas_cumprod: the schedule (default: ``model.alphas_cumprod``); APG and the interval need it.

    Returns:
        ``eps_fn(x, t) -> eps`` (or a :class:`GuidedEps`). Arguments are validated now, before any model call.

    Example:
        >>> import torch
        >>> from diffusion import AttributeSpec, ConditionalUNet, ImageModelConfig, ddim_sample
        >>> net = ConditionalUNet(ImageModelConfig(image_shape=(1, 8, 8), block_out_channels=(8, 8),
        ...     attention_levels=(False, False), mid_attention=False, norm_num_groups=4, block_dim=4,
        ...     attributes=(AttributeSpec("t", "continuous"), AttributeSpec("y", "categorical", cardinality=3))))
        >>> attrs = {"t": torch.tensor([0.5]), "y": torch.tensor([2])}
        >>> fn = guided_eps_fn(net, attrs, "dcfg", groups=[["t"], ["y"]], weights=[1.0, 3.0])
        >>> ddim_sample(fn, torch.randn(1, 1, 8, 8), net.alphas_cumprod, steps=2).shape
        torch.Size([1, 1, 8, 8])
        >>> fn = guided_eps_fn(net, attrs, "cfg", scale=3.0, variant="apg", interval=(100, 900))
        >>> ddim_sample(fn, torch.randn(1, 1, 8, 8), net.alphas_cumprod, steps=4).shape
        torch.Size([1, 1, 8, 8])
    """
    eps_model = getattr(model, "eps", model)
    if not callable(eps_model):
        raise TypeError(f"model must be a ConditionalUNet or a callable eps_model(x, t, attrs, keep_mask), "
                        f"got {type(model).__name__}")
    attrs = dict(attrs)
    if guidance not in GUIDANCE_MODES:
        raise ValueError(f"guidance={guidance!r} is not one of {GUIDANCE_MODES}")
    if guidance != "dcfg" and (groups is not None or weights is not None):
        raise ValueError(f"groups/weights only apply to guidance='dcfg', not {guidance!r}")
    anchor = check_anchor(anchor)
    variant = check_variant(variant)
    if guidance == "none" and (variant is not None or interval is not None):
        what = f"variant={variant!r}" if variant is not None else f"interval={interval!r}"
        raise ValueError(f"{what} modifies guidance, but guidance='none' has none; use guidance='cfg' or 'dcfg'")
    abar = getattr(model, "alphas_cumprod", None) if alphas_cumprod is None else alphas_cumprod
    if abar is not None:
        abar = torch.as_tensor(abar, dtype=torch.float64)
    if (variant == "apg" or interval is not None) and abar is None:
        raise ValueError(f"{'variant=apg' if variant == 'apg' else f'interval={interval!r}'} needs the schedule: "
                         f"pass alphas_cumprod= (the model has no .alphas_cumprod)")
    interval = check_interval(interval, None if abar is None else len(abar))
    apg = check_apg(apg_eta, apg_threshold, apg_momentum)
    if guidance == "none":
        return lambda x, t: eps_model(x, t, attrs, None)
    scale = _check_weight(scale, "scale")
    if guidance == "cfg":
        if variant is None and interval is None:
            return lambda x, t: cfg(eps_model, x, t, attrs, scale)
        return GuidedEpsFn(eps_model, attrs, lambda m, x, t, a: cfg_parts(m, x, t, a, scale), variant, interval,
                           apg, abar)
    if groups is None:
        raise ValueError("guidance='dcfg' needs groups: lists of attribute names partitioning "
                         f"{list(attrs)}, e.g. {[[k] for k in attrs]}")
    groups, weights = check_groups(attrs, groups, [scale] * len(groups) if weights is None else weights)
    if variant is None and interval is None:
        return lambda x, t: dcfg(eps_model, x, t, attrs, groups, weights, anchor)
    return GuidedEpsFn(eps_model, attrs, lambda m, x, t, a: dcfg_parts(m, x, t, a, groups, weights, anchor),
                       variant, interval, apg, abar)
