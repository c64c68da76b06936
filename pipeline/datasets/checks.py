"""Does a dataset fit a causal graph? Every check names the column and the first offending row.

:func:`check_attributes` holds each attribute column against its node's kind, before anything is trained or
written:

* ``binary``: 0 or 1 (a column of -1/1 gets the remap ``(x + 1) / 2``; booleans are read as 0/1);
* ``categorical``: integer class indices ``0 .. cardinality - 1`` (text classes map to their sorted order);
* ``positive``: finite and > 0;
* ``interval``: finite and within ``[low, high]``;
* ``real``: finite.

Example:
    >>> import torch
    >>> from scm import CausalGraph
    >>> g = CausalGraph.from_dict({"nodes": {"smiling": {"kind": "binary"}}, "edges": []})
    >>> check_attributes({"smiling": torch.tensor([1.0, -1.0])}, g)
    Traceback (most recent call last):
    ...
    ValueError: column 'smiling' is binary in the graph but holds -1 at row 1; binary nodes take 0/1:
        this column is coded -1/1, remap it with (x + 1) / 2
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

__all__ = ["check_attributes"]


def check_attributes(attributes: Mapping[str, Any], graph: Any,
                     where: Callable[[int], str] | None = None) -> None:
    """Raise ``ValueError`` (naming the column and row) unless every attribute node's values fit its kind.

    Args:
        attributes: column -> ``(N,)`` values (tensors or arrays).
        graph: the :class:`scm.CausalGraph`; its attribute nodes must all be present.
        where: row index -> a phrase naming the row for the message (default ``"row k"``).
    """
    where = where or (lambda row: f"row {row}")
    for node in graph.attribute_nodes():
        if node not in attributes:
            raise ValueError(f"the data has no column {node!r}, a node of the graph; columns: {sorted(attributes)}")
        spec = graph.spec(node)
        values = torch.as_tensor(attributes[node]).detach().cpu().double().numpy().reshape(-1)
        if values.size == 0:
            raise ValueError(f"column {node!r} has no rows")
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"column {node!r} holds {values[row]} at {where(row)}; values must be finite numbers")
        if spec.kind == "binary":
            bad = ~np.isin(values, (0.0, 1.0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                hint = "this column is coded -1/1, remap it with (x + 1) / 2" \
                    if np.isin(values, (-1.0, 1.0)).all() else "recode it as 0/1 (or declare the node categorical)"
                raise ValueError(f"column {node!r} is binary in the graph but holds {values[row]:g} at {where(row)}; "
                                 f"binary nodes take 0/1: {hint}")
        elif spec.kind == "categorical":
            k = int(spec.cardinality)
            bad = (values != np.round(values)) | (values < 0) | (values >= k)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"column {node!r} holds class {values[row]:g} at {where(row)}, outside the graph's "
                                 f"{k} classes 0..{k - 1}; raise the node's cardinality or fix the row")
        elif spec.kind == "positive":
            bad = values <= 0
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"column {node!r} is positive in the graph but holds {values[row]:g} at "
                                 f"{where(row)}; declare it real, or fix the row")
        elif spec.kind == "interval":
            bad = (values < spec.low) | (values > spec.high)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"column {node!r} holds {values[row]:g} at {where(row)}, outside the graph's "
                                 f"interval [{spec.low:g}, {spec.high:g}]; widen the interval or fix the row")
