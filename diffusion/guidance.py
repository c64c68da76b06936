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
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

EpsModel = Callable[[Tensor, Tensor, Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]
GUIDANCE_MODES = ("none", "cfg", "dcfg")
DCFG_ANCHORS = ("null", "full")


def _timesteps(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps t have shape {tuple(t.shape)}; expected () or ({batch},)")
    return t


def _check_weight(w: Any, what: str) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
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
    w = _check_weight(w, "w")
    B = x.shape[0]
    t = _timesteps(t, B, x.device)
    off, on = torch.zeros(B, dtype=torch.bool, device=x.device), torch.ones(B, dtype=torch.bool, device=x.device)
    e = eps_model(torch.cat([x, x]), torch.cat([t, t]), {k: torch.cat([v, v]) for k, v in attrs.items()},
                  {k: torch.cat([off, on]) for k in attrs})
    e_null, e_cond = e[:B], e[B:]
    return e_null + w * (e_cond - e_null)


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
    groups, weights = check_groups(attrs, groups, weights)
    anchor = check_anchor(anchor)
    B, M = x.shape[0], len(groups)
    t = _timesteps(t, B, x.device)
    if anchor == "full":
        return _dcfg_full(eps_model, x, t, attrs, groups, weights)
    # rows [0, B): the null condition; rows [m B, (m + 1) B): keep group m only
    keep = {k: torch.cat([torch.zeros(B, dtype=torch.bool, device=x.device)]
                         + [torch.full((B,), k in g, dtype=torch.bool, device=x.device) for g in groups])
            for k in attrs}
    e = eps_model(torch.cat([x] * (M + 1)), torch.cat([t] * (M + 1)),
                  {k: torch.cat([v] * (M + 1)) for k, v in attrs.items()}, keep)
    e = e.view(M + 1, B, *e.shape[1:])
    e_null = e[0]
    out = e_null
    for m in range(M):
        out = out + weights[m] * (e[m + 1] - e_null)
    return out


def _dcfg_full(eps_model: EpsModel, x: Tensor, t: Tensor, attrs: Mapping[str, Tensor],
               groups: list[list[str]], weights: list[float]) -> Tensor:
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
    out = e_full
    for j, m in enumerate(amplified):
        out = out + (weights[m] - 1.0) * (e_full - e[j + 1])
    return out


def guided_eps_fn(model: Any, attrs: Mapping[str, Tensor], guidance: str = "none", scale: float = 1.0,
                  groups: Sequence[Sequence[str]] | None = None, weights: Sequence[float] | None = None,
                  anchor: str = "null") -> Callable[[Tensor, Tensor], Tensor]:
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

    Returns:
        ``eps_fn(x, t) -> eps``. Arguments are validated now, before any model call.

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
    if guidance == "none":
        return lambda x, t: eps_model(x, t, attrs, None)
    scale = _check_weight(scale, "scale")
    if guidance == "cfg":
        return lambda x, t: cfg(eps_model, x, t, attrs, scale)
    if groups is None:
        raise ValueError("guidance='dcfg' needs groups: lists of attribute names partitioning "
                         f"{list(attrs)}, e.g. {[[k] for k in attrs]}")
    groups, weights = check_groups(attrs, groups, [scale] * len(groups) if weights is None else weights)
    return lambda x, t: dcfg(eps_model, x, t, attrs, groups, weights, anchor)
