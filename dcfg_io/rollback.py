"""Fits that roll back: :func:`restored_on_error` puts modules trained in place back as they were on failure."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

__all__ = ["restored_on_error"]


@contextlib.contextmanager
def restored_on_error(*modules: Any) -> Iterator[None]:
    """Run a block that trains ``modules`` in place; on any exception (Ctrl-C included) every parameter, buffer,
    gradient, device and train/eval mode is put back as it was, then the exception propagates.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> before = net.weight.detach().clone()
        >>> try:
        ...     with restored_on_error(net):
        ...         _ = net.weight.data.add_(1.0)
        ...         raise RuntimeError("the fit failed")
        ... except RuntimeError:
        ...     pass
        >>> bool(torch.equal(net.weight, before))
        True
    """
    import torch

    saved = []
    for m in modules:
        if m is None:
            continue
        tensors = [(t, t.data.clone(), None if getattr(t, "grad", None) is None else t.grad.clone())
                   for t in list(m.parameters()) + list(m.buffers())]
        sub = {}
        for mod in m.modules():
            sub[id(mod)] = (mod, mod.training, dict(mod._buffers))
        saved.append((tensors, sub))
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for tensors, sub in saved:
                for mod, training, buffers in sub.values():
                    mod.training = training
                    for name, buf in buffers.items():  # a buffer replaced by a new tensor object
                        mod._buffers[name] = buf
                for t, data, grad in tensors:
                    t.data = data
                    if isinstance(t, torch.nn.Parameter) or t.requires_grad:
                        t.grad = grad
        raise
