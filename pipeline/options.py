"""The values of the guidance options that a pipeline's config, its queries, the evaluation and the CLI share.

* ``dcfg_form``, DCFG's formulation: ``"paper"`` (the paper's equation, each group against the unconditional
  prediction: ``eps(null) + sum_m w_m (eps(c^m) - eps(null))``) or ``"conditional"`` (each group amplified given
  the others: ``eps(c) + sum_m (w_m - 1) (eps(c) - eps(c^-m))``). :mod:`diffusion.guidance` names the same choice
  by the eps each equation starts from, its ``anchor``: ``"null"`` and ``"full"`` (:func:`diffusion_anchor`).
* ``descendant_weight``, the DCFG weight of the intervention's descendants among the image's parents: a number,
  or ``"scale"`` (they share the intervention's scale: the paper's grouping).
* A query argument left out means the pipeline's config: its default is :data:`FROM_CONFIG`.

The spellings used before, ``dcfg_anchor`` / ``anchor`` with ``"null"`` / ``"full"``, ``descendant_weight=None``
in a query and ``"config"``, still work and warn with a :class:`DeprecationWarning` naming the new spelling.

Example:
    >>> check_dcfg_form("conditional"), diffusion_anchor("paper"), check_descendant_weight(1)
    ('conditional', 'null', 1.0)
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

from dcfg_io.checks import is_number

__all__ = ["DCFG_FORMS", "FROM_CONFIG", "check_dcfg_form", "diffusion_anchor", "check_descendant_weight",
           "warn_deprecated", "renamed_arguments", "anchor_renamed",
           "former_anchor", "form_from_former", "inversion_predictor",
           "grid_power"]

#: DCFG's formulations: the paper's equation, or each group amplified given the others
DCFG_FORMS = ("paper", "conditional")
#: the formulations' former names (``dcfg_anchor`` / ``anchor`` values) -> their names now
_FORMER_FORMS = {"null": "paper", "full": "conditional"}
#: each formulation -> :mod:`diffusion.guidance`'s ``anchor``: the eps its equation starts from
_ANCHORS = {"paper": "null", "conditional": "full"}

F = TypeVar("F", bound=Callable[..., Any])


class _FromConfig:
    """The type of :data:`FROM_CONFIG`."""

    def __repr__(self) -> str:
        return "<the pipeline's config>"

    def __reduce__(self) -> str:
        return "FROM_CONFIG"


#: the default of a query argument whose omission means the pipeline's config (never passed explicitly)
FROM_CONFIG: Any = _FromConfig()


def warn_deprecated(message: str, stacklevel: int = 3) -> None:
    """Warn with a :class:`DeprecationWarning` (``stacklevel`` counted from the caller of this function's caller)."""
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)


def check_dcfg_form(value: Any, name: str = "dcfg_form", *, warn: bool = True) -> str:
    """Validate a DCFG formulation: ``"paper"`` or ``"conditional"``.

    The former values ``"null"`` and ``"full"`` are mapped to them, with a :class:`DeprecationWarning` unless
    ``warn`` is false (files written before keep loading silently).

    Raises:
        ValueError: any other value, naming ``name``.
    """
    if isinstance(value, str) and value in _FORMER_FORMS:
        if warn:
            warn_deprecated(f"{name}={value!r} is deprecated: use dcfg_form={_FORMER_FORMS[value]!r}")
        return _FORMER_FORMS[value]
    if not isinstance(value, str) or value not in DCFG_FORMS:
        raise ValueError(f"{name}={value!r:.80} must be 'paper' (the paper's DCFG: eps(null) + sum_m w_m (eps(c^m) - "
                         f"eps(null))) or 'conditional' (each group amplified given the others: eps(c) + sum_m "
                         f"(w_m - 1) (eps(c) - eps(c^-m)))")
    return value


def diffusion_anchor(dcfg_form: Any) -> str:
    """:mod:`diffusion.guidance`'s ``anchor`` of a formulation: ``"null"`` (paper) or ``"full"`` (conditional)."""
    return _ANCHORS[check_dcfg_form(dcfg_form)]


def former_anchor(dcfg_form: str) -> str:
    """The former name (``"null"`` / ``"full"``) of a formulation, for the deprecated ``anchor`` readers."""
    return _ANCHORS[dcfg_form]


def check_descendant_weight(value: Any, name: str = "descendant_weight") -> float | str:
    """Validate a descendant weight: a finite number (returned as a float) or ``"scale"``.

    Raises:
        ValueError: any other value, naming ``name``.
    """
    if isinstance(value, str) and value == "scale":
        return "scale"
    if not is_number(value):
        raise ValueError(f"{name}={value!r:.80} must be a finite number (e.g. 1.0) or 'scale' (the intervention's "
                         f"scale: the paper's grouping)")
    return float(value)


def form_from_former(value: Any) -> Any:
    """A formulation's name now for a former one (``"null"`` -> ``"paper"``, ``"full"`` -> ``"conditional"``);
    any other value as it is."""
    return _FORMER_FORMS.get(value, value) if isinstance(value, str) else value


def renamed_arguments(**renames: str | tuple[str, Callable[[Any], Any]]) -> Callable[[F], F]:
    """Decorate a function (or a class's ``__init__``) so that it also takes the keyword arguments it had before.

    ``renames`` maps each former keyword to its name now, or to ``(name, convert)`` where its values were renamed
    too; a call that uses a former keyword warns with a :class:`DeprecationWarning` and is passed on under the new
    name (which it then overrides, so that ``dataclasses.replace(config, former=value)`` works too).

    Example:
        >>> @renamed_arguments(old="new")
        ... def f(new=0):
        ...     return new
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     f(old=2)
        2
    """
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, rename in renames.items():
                if old in kwargs:
                    new, convert = (rename, None) if isinstance(rename, str) else rename
                    value = kwargs.pop(old)
                    if convert is None:
                        warn_deprecated(f"the argument {old}= is deprecated: use {new}=")
                    else:
                        value = convert(value)
                        warn_deprecated(f"the argument {old}= is deprecated: use {new}={value!r}")
                    kwargs[new] = value
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


#: :func:`renamed_arguments` of the functions whose ``anchor`` argument (``"null"`` / ``"full"``) is now
#: ``dcfg_form`` (``"paper"`` / ``"conditional"``)
anchor_renamed = renamed_arguments(anchor=("dcfg_form", form_from_former))


def inversion_predictor(config: Any, refine_steps: int, predictor: str | None = None) -> str:
    """The DDIM inversion predictor a pipeline with ``config`` uses for ``refine_steps`` refinements: ``predictor``
    or the config's ``invert_predictor``, and ``"explicit"`` (plain DDIM inversion) without refinement."""
    if not refine_steps:
        return "explicit"
    return getattr(config, "invert_predictor", "explicit") if predictor is None else predictor


def grid_power(config: Any, solver: str | None = None) -> float:
    """The DDIM grid exponent a pipeline with ``config`` uses with ``solver`` (default: the config's): its
    ``timestep_power`` for DDIM, 1 (the uniform grid of diffusers' schedulers) for the others."""
    solver = getattr(config, "solver", "ddim") if solver is None else solver
    return float(getattr(config, "timestep_power", 1.0)) if solver == "ddim" else 1.0
