"""Supports of the node kinds: constraint transforms and boundary checks of user values.

* :func:`support_transform` maps the real line onto a node's support (identity, ``exp``, or a
  sigmoid followed by an affine map onto ``[low, high]``). Built-in flows end with it.
* :func:`as_values` turns user input (tensor, array, list, pandas Series, number) for one node into
  a tensor of shape ``(B,)`` and checks it lies in the support; errors name the node, the bad value,
  the row, the allowed range and the fix.

Example:
    >>> import torch
    >>> t = support_transform(NodeSpec("interval", low=0.0, high=10.0))
    >>> t(torch.tensor([0.0])).item()
    5.0
    >>> as_values("digit", NodeSpec("categorical", cardinality=10), [1.0, 3.0], what="obs")
    tensor([1, 3])
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from pyro.distributions import transforms as T
from torch import Tensor

from scm.graph import NodeSpec


def support_transform(spec: NodeSpec) -> T.Transform:
    """The bijection from the real line onto the support of a continuous node.

    Args:
        spec: a ``real``, ``positive`` or ``interval`` node spec.

    Returns:
        ``identity`` for real, ``exp`` for positive, ``low + (high - low) * sigmoid`` for interval.
    """
    if spec.kind == "real":
        return T.ComposeTransform([])
    if spec.kind == "positive":
        return T.ExpTransform()
    if spec.kind == "interval":
        assert spec.low is not None and spec.high is not None
        return T.ComposeTransform([T.SigmoidTransform(), T.AffineTransform(spec.low, spec.high - spec.low)])
    raise ValueError(f"kind {spec.kind!r} has no continuous support transform")


def _to_tensor(name: str, value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "to_numpy"):  # pandas Series / Index
        value = value.to_numpy()
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if isinstance(value, (numbers.Number, np.ndarray, list, tuple)):
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError, OverflowError) as e:  # ragged nested lists
            raise TypeError(f"node {name!r}: {what} values {value!r:.80} are not a flat list of numbers ({e}); "
                            f"pass a number, a 1-D tensor/array/list, or a pandas Series") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise TypeError(f"node {name!r}: {what} values must be numeric, got dtype {arr.dtype} "
                            f"(value {value!r:.80}); pass numbers or a tensor")
        if arr.dtype == np.bool_:
            arr = arr.astype(np.int64)
        return torch.tensor(arr)  # a copy: never alias (or warn about) read-only arrays
    raise TypeError(f"node {name!r}: {what} value of type {type(value).__name__} is not supported; pass a "
                    f"number, a 1-D tensor/array/list, or a pandas Series")


def as_values(name: str, spec: NodeSpec, value: Any, *, what: str, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None, allow_scalar: bool = False) -> Tensor:
    """Convert one node's values to a checked tensor.

    Args:
        name: node name, for error messages.
        spec: the node's spec (not ``image``).
        value: tensor, numpy array, list, pandas Series, or (with ``allow_scalar``) a number.
        what: what the values are (``"obs"``, ``"do"``, ``"data"``), for error messages.
        dtype: float dtype of continuous outputs; discrete outputs are always ``int64``.
        device: output device (default: the input's device, else CPU).
        allow_scalar: accept 0-d input (returned 0-d); otherwise the result must be 1-D.

    Returns:
        A ``(B,)`` (or 0-d) tensor: ``dtype`` for continuous nodes, ``int64`` class indices otherwise.

    Raises:
        TypeError: non-numeric input.
        ValueError: wrong shape, NaN/inf, value outside the support, non-integer class.
    """
    t = _to_tensor(name, value, what)
    if t.is_complex():
        raise TypeError(f"node {name!r}: {what} values must be real numbers, got dtype {t.dtype}")
    if t.dim() > 1 and t.shape[-1] == 1 and t.dim() == 2:
        t = t.reshape(-1)
    if t.dim() != 1 and not (allow_scalar and t.dim() == 0):
        shape = "(B,) or a number" if allow_scalar else "(B,)"
        raise ValueError(f"node {name!r}: {what} values must have shape {shape}, got shape {tuple(t.shape)}")
    if device is not None:
        t = t.to(device)
    tf = t.to(torch.float64) if t.is_floating_point() or t.dtype == torch.bool else t
    bad = ~torch.isfinite(tf) if tf.is_floating_point() else torch.zeros_like(tf, dtype=torch.bool)
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        raise ValueError(f"node {name!r}: {what} value {tf.reshape(-1)[i].item()} at row {i} is not finite; "
                         f"allowed: {spec.describe()}. Remove or impute NaN/inf rows")
    if spec.is_discrete:
        card = spec.cardinality or 2
        if tf.is_floating_point():
            frac = tf != torch.round(tf)
            if bool(frac.any()):
                i = int(frac.reshape(-1).nonzero()[0])
                raise ValueError(f"node {name!r}: {what} value {tf.reshape(-1)[i].item()} at row {i} is not an "
                                 f"integer class; allowed: {spec.describe()}")
        idx = tf.to(torch.int64)
        out = (idx < 0) | (idx >= card)
        if bool(out.any()):
            i = int(out.reshape(-1).nonzero()[0])
            raise ValueError(f"node {name!r}: {what} class {idx.reshape(-1)[i].item()} at row {i} is out of "
                             f"range; allowed: {spec.describe()}")
        return idx
    if not spec.is_continuous:
        raise ValueError(f"node {name!r} is an {spec.kind} node; the SCM models only attribute nodes")
    tf = tf.to(torch.float64)
    if spec.kind == "positive":
        out = tf <= 0
        fix = "pass values > 0"
    elif spec.kind == "interval":
        out = (tf < spec.low) | (tf > spec.high)
        fix = f"clip values to [{spec.low}, {spec.high}]"
    else:
        out = torch.zeros_like(tf, dtype=torch.bool)
        fix = ""
    if bool(out.any()):
        i = int(out.reshape(-1).nonzero()[0])
        raise ValueError(f"node {name!r}: {what} value {tf.reshape(-1)[i].item()} at row {i} is outside the "
                         f"support of this {spec.kind} node; allowed: {spec.describe()}; {fix}")
    # A value in the support may leave it once cast to the model's dtype (1e40 -> inf, 1e-300 -> 0 in float32).
    result = t.to(dtype)
    rf = result.to(torch.float64)
    lost = ~torch.isfinite(rf)
    if spec.kind == "positive":
        lost |= rf <= 0
    if bool(lost.any()):
        i = int(lost.reshape(-1).nonzero()[0])
        raise ValueError(f"node {name!r}: {what} value {tf.reshape(-1)[i].item()} at row {i} becomes "
                         f"{rf.reshape(-1)[i].item()} in {dtype}, outside the support; allowed: {spec.describe()}, "
                         f"representable in {dtype}")
    return result
