"""Structural equations ``x = f(parents, u)``: the interface and the built-in mechanisms.

Every non-image node of an :class:`~scm.SCM` has one :class:`Mechanism`. A mechanism owns the
distribution of its exogenous noise ``u`` and the map from ``(parents, u)`` to the node's value, and
knows how to go back (abduction). The SCM only ever calls these methods:

==========================================  ==================================================
method                                      contract
==========================================  ==================================================
``sample_noise(n, generator)``              ``n`` prior noise draws, shape ``(n, *noise_shape)``
``forward(parents, noise)``                 the node's value, shape ``(n,)``
``abduct(value, parents, generator)``       noise that reproduces ``value``: exact for
                                            invertible mechanisms, a posterior draw otherwise
``log_prob(value, parents)`` (optional)     ``log p(value | parents)``, shape ``(n,)``; needed
                                            by :meth:`SCM.fit` / :meth:`SCM.log_prob`
``noise_distribution(n)`` (optional)        the prior of ``u`` as a distribution (the Pyro
                                            program's noise site)
``initialize(value, parents)`` (optional)   data-dependent set-up before the first fit
``get_config()``                            JSON kwargs that rebuild the mechanism (save/load)
==========================================  ==================================================

``parents`` is always a dict ``name -> (n,)`` tensor with every parent of the node (categorical
parents as ``int64`` class indices). Noise is drawn on the CPU from a ``torch.Generator`` so that a
seed gives the same draw on every device; the SCM moves it to the model's device.

Built-ins (the defaults :class:`~scm.SCM` picks from a node's kind):

* :class:`FlowMechanism` for ``real``/``positive``/``interval`` nodes: ``u ~ N(0, 1)`` pushed through
  a rational-quadratic spline (conditional on the parents for a child), a conditional affine map,
  a fixed standardisation and the support's constraint transform (``exp`` or ``sigmoid``-affine).
* :class:`CategoricalMechanism` for ``binary``/``categorical`` nodes: logits from a small network of
  the parents, value by Gumbel-max, abduction by the truncated-Gumbel posterior (Oberst & Sontag 2019).

Known equations (closed-form, no learnable parameters): :class:`LinearGaussianMechanism`,
:class:`AffineSigmoidMechanism` and :class:`GammaMechanism`. Write your own by subclassing
:class:`Mechanism` (continuous, invertible) or :class:`GumbelMaxMechanism` (discrete, only
``logits`` to write). Subclasses register themselves by ``module:qualname`` so that
:meth:`SCM.load` can rebuild them, provided the defining module has been imported.

Example (a known structural equation ``y = 2 x + 0.5 u``):
    >>> import torch
    >>> m = LinearGaussianMechanism({"x": 2.0}, bias=0.0, scale=0.5)
    >>> x = torch.tensor([1.0, 2.0]); u = torch.tensor([0.0, 2.0])
    >>> y = m({"x": x}, u)
    >>> y
    tensor([2., 5.])
    >>> m.abduct(y, {"x": x})
    tensor([0., 2.])
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions import transforms as T
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from pyro.nn import DenseNN
from torch import Tensor, nn

from scm.graph import NodeSpec
from scm.support import support_transform

_REGISTRY: dict[str, type["Mechanism"]] = {}
# Pyro's splines add min_derivative = 1e-3 to softplus(raw); this raw value gives knot slopes of 1.
_SPLINE_SLOPE_ONE = math.log(math.expm1(1.0 - 1e-3))
# The conditional affine adds 1e-4 to softplus(raw); this offset makes its initial scale 1.
_AFFINE_SCALE_ONE = math.log(math.expm1(1.0 - 1e-4))


def mechanism_key(cls: type) -> str:
    """The registry key of a mechanism class, ``"module:QualName"`` (stored in ``config.json``)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def registered_mechanism(key: str) -> type["Mechanism"]:
    """Look a mechanism class up by :func:`mechanism_key`.

    Raises:
        ValueError: the class is not registered (its module has not been imported).
    """
    if key not in _REGISTRY:
        module = key.split(":", 1)[0]
        raise ValueError(f"mechanism class {key!r} is not registered; import the module {module!r} that defines "
                         f"it before loading (loading never imports or unpickles code), or pass it via "
                         f"SCM.load(path, mechanisms={{node: instance}})")
    return _REGISTRY[key]


def _gumbel(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Standard Gumbel draws in float64 on the CPU."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return -torch.log(-torch.log(u.clamp(torch.finfo(torch.float64).tiny, 1.0 - 1e-16)))


def _generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        g = torch.Generator()
        g.seed()
        return g
    return generator


class Mechanism(nn.Module):
    """A structural equation ``x = f(parents, u)`` with exogenous noise ``u``.

    Subclass it for known equations. Override ``sample_noise``, ``forward`` and ``abduct``; add
    ``log_prob`` to make the node fittable and scorable, ``noise_distribution`` to give the Pyro
    program a proper noise prior, and ``get_config`` (JSON-serialisable constructor kwargs) to make
    the mechanism savable.

    Attributes:
        discrete: True if the node's values are ``int64`` class indices.
        noise_shape: event shape of one row of noise (``()`` for a scalar).

    Example:
        >>> import torch
        >>> class Shift(Mechanism):
        ...     '''y = x + u, u ~ N(0, 1).'''
        ...     def sample_noise(self, n, generator=None):
        ...         return torch.randn(n, generator=generator)
        ...     def forward(self, parents, noise):
        ...         return parents["x"] + noise
        ...     def abduct(self, value, parents, generator=None):
        ...         return value - parents["x"]
        >>> Shift().abduct(torch.tensor([3.0]), {"x": torch.tensor([1.0])})
        tensor([2.])
    """

    discrete: ClassVar[bool] = False
    noise_shape: tuple[int, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[mechanism_key(cls)] = cls

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` rows of prior noise on the CPU, shape ``(n, *noise_shape)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample_noise(n, generator)")

    def forward(self, parents: Mapping[str, Tensor], noise: Tensor) -> Tensor:  # noqa: D102
        """The structural equation: the node's value ``(n,)`` from its parents and noise."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(parents, noise)")

    def abduct(self, value: Tensor, parents: Mapping[str, Tensor],
               generator: torch.Generator | None = None) -> Tensor:
        """Noise ``(n, *noise_shape)`` that reproduces ``value`` under ``parents``."""
        raise NotImplementedError(f"{type(self).__name__} must implement abduct(value, parents, generator)")

    def log_prob(self, value: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        """``log p(value | parents)``, shape ``(n,)``. Optional: needed by ``fit`` and ``log_prob``."""
        raise NotImplementedError(f"{type(self).__name__} has no log_prob; implement it to fit or score this node")

    def noise_distribution(self, n: int, device: torch.device | None = None,
                           dtype: torch.dtype = torch.float32) -> dist.Distribution:
        """The prior of ``n`` rows of noise (batch shape ``(n,)``). Default: an improper flat prior."""
        return dist.ImproperUniform(constraints.real, (n,), self.noise_shape)

    def initialize(self, value: Tensor, parents: Mapping[str, Tensor]) -> None:
        """Data-dependent set-up, called by :meth:`SCM.fit` before training. Default: nothing."""

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor kwargs: ``type(self)(**get_config())`` rebuilds it."""
        return {}


# ----------------------------------------------------------------------------------- built-ins
class _StandardNormalNoise:
    """Mixin for mechanisms whose exogenous noise is one standard normal per row."""

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, generator=_generator(generator))

    def noise_distribution(self, n: int, device: torch.device | None = None,
                           dtype: torch.dtype = torch.float32) -> dist.Distribution:
        return dist.Normal(torch.zeros(n, device=device, dtype=dtype), 1.0, validate_args=False)


class ParentEncoder(nn.Module):
    """Feature vector of a node's parents: standardised continuous values, 0/1 binaries, one-hots.

    The standardisation statistics are buffers set once from data by :meth:`initialize`.
    """

    def __init__(self, parents: Mapping[str, NodeSpec]) -> None:
        super().__init__()
        self.names = list(parents)
        self.specs = dict(parents)
        cont = [n for n in self.names if self.specs[n].is_continuous]
        self.continuous = cont
        self.register_buffer("mean", torch.zeros(len(cont)))
        self.register_buffer("std", torch.ones(len(cont)))
        self.dim = sum(1 if s.is_continuous or s.kind == "binary" else int(s.cardinality or 0)
                       for s in self.specs.values())

    def initialize(self, parents: Mapping[str, Tensor]) -> None:
        """Set the standardisation statistics from training data."""
        for i, n in enumerate(self.continuous):
            v = parents[n].to(self.mean.dtype)
            self.mean[i] = v.mean()
            self.std[i] = v.std().clamp_min(1e-6) if v.numel() > 1 else 1.0

    def forward(self, parents: Mapping[str, Tensor]) -> Tensor:
        """``(n, dim)`` features."""
        cols = []
        for n in self.names:
            s, v = self.specs[n], parents[n]
            if s.is_continuous:
                i = self.continuous.index(n)
                cols.append(((v.to(self.mean.dtype) - self.mean[i]) / self.std[i]).unsqueeze(-1))
            elif s.kind == "binary":
                cols.append(v.to(self.mean.dtype).unsqueeze(-1) - 0.5)
            else:
                cols.append(F.one_hot(v.long(), int(s.cardinality or 2)).to(self.mean.dtype))
        return torch.cat(cols, dim=-1)


def _zero_last(net: DenseNN, bias: Sequence[float] | None = None) -> None:
    last = net.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        if bias is not None:
            last.bias.copy_(torch.as_tensor(bias, dtype=last.bias.dtype))


class ConditionalAffine(ConditionalTransformModule):
    """``y = loc(c) + scale(c) * x`` with ``loc, log scale`` from a linear map plus a small MLP of ``c``.

    Starts as the identity (zero-initialised output layers). Elementwise, ``event_dim = 0``.
    """

    bijective = True

    def __init__(self, context_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, 2)
        self.net = DenseNN(context_dim, list(hidden), param_dims=[2])
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()
        _zero_last(self.net)

    def condition(self, context: Tensor) -> T.Transform:
        out = self.linear(context) + self.net(context)
        loc, raw = out[..., :1], out[..., 1:]
        scale = F.softplus(raw + _AFFINE_SCALE_ONE) + 1e-4
        return T.AffineTransform(loc, scale)


class _Standardize(nn.Module):
    """Fixed affine map ``y = loc + scale * x`` whose statistics are buffers (set from data)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(1))
        self.register_buffer("scale", torch.ones(1))

    def transform(self) -> T.Transform:
        return T.AffineTransform(self.loc, self.scale)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _softmax(x: Tensor) -> Tensor:
    """``softmax(x, -1)`` in elementwise ops (cheaper than ``F.softmax`` on the short rows of a mechanism)."""
    e = torch.exp(x - x.detach().amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _spline_inverse(y: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor,
                    bound: float) -> tuple[Tensor, Tensor]:
    """Inverse of Pyro's quadratic rational-quadratic spline of one dimension, and ``log |dy/dx|`` at it.

    The same function as ``pyro.distributions.transforms.Spline(..., order="quadratic")`` (Durkan et al. 2019,
    with Pyro's minimal bin width, height and slope of 1e-3; the identity outside ``[-bound, bound]``), from the
    unnormalised parameters: ``y`` is ``(n,)``, ``widths`` and ``heights`` ``(n or 1, K)``, ``derivatives``
    ``(n or 1, K - 1)``. Returns ``x`` and ``log |dy/dx|(x)``, both ``(n,)``.
    """
    k = widths.shape[-1]
    lo = 1e-3
    w = lo + (1.0 - lo * k) * _softmax(widths)
    h = lo + (1.0 - lo * k) * _softmax(heights)
    d = lo + F.softplus(derivatives)

    def knots(lengths: Tensor) -> tuple[Tensor, Tensor]:
        inner = 2.0 * bound * torch.cumsum(lengths, dim=-1)[..., :-1] - bound
        edge = torch.full_like(lengths[..., :1], bound)
        cum = torch.cat([-edge, inner, edge], dim=-1)
        return cum[..., 1:] - cum[..., :-1], cum

    w, cumw = knots(w)
    h, cumh = knots(h)
    one = torch.full_like(d[..., :1], 1.0 - lo)
    d = torch.cat([one, d, one], dim=-1)
    n = y.shape[0]
    inside = (y >= -bound) & (y <= bound)
    yc = y.clamp(-bound, bound)
    idx = (yc.unsqueeze(-1) >= cumh + 1e-6).sum(dim=-1).sub(1).clamp(0, k - 1)
    at = idx.unsqueeze(-1)

    def pick(t: Tensor) -> Tensor:
        return t.expand(n, t.shape[-1]).gather(-1, at).squeeze(-1)

    bw, bcw, bch, bh, d0, d1 = pick(w), pick(cumw), pick(cumh), pick(h), pick(d), pick(d[..., 1:])
    delta = bh / bw
    dy = yc - bch
    slope = d0 + d1 - 2.0 * delta
    a = dy * slope + bh * (delta - d0)
    b = bh * d0 - dy * slope
    c = -delta * dy
    disc = (b * b - 4.0 * a * c).clamp_min(0.0)
    root = (2.0 * c) / (-b - torch.sqrt(disc))
    x = root * bw + bcw
    t1t = root * (1.0 - root)
    denominator = delta + slope * t1t
    numerator = delta * delta * (d1 * root * root + 2.0 * delta * t1t + d0 * (1.0 - root) ** 2)
    log_det = torch.log(numerator) - 2.0 * torch.log(denominator)
    return torch.where(inside, x, y), torch.where(inside, log_det, torch.zeros_like(log_det))


class FlowMechanism(_StandardNormalNoise, Mechanism):
    """A learnable invertible mechanism for a continuous node (``real``, ``positive``, ``interval``).

    ``x = support( standardise( affine_pa( spline_pa(u) ) ) )`` with ``u ~ N(0, 1)``, where

    * ``spline_pa`` is a rational-quadratic spline (Durkan et al. 2019): Pyro's ``Spline`` for a
      root, ``ConditionalSpline`` with a small ``DenseNN`` hypernetwork of the parents for a child;
    * ``affine_pa`` is :class:`ConditionalAffine` of the parents (absent for a root);
    * ``standardise`` is a fixed affine map set from the data's mean/std in unconstrained space;
    * ``support`` is :func:`~scm.support.support_transform` (identity, ``exp``, ``sigmoid``-affine).

    Every step is a bijection, so :meth:`abduct` inverts it exactly (up to float round-off).
    All learnable parts start as the identity.

    Args:
        spec: the node's spec dict (``{"kind": "positive"}``, ...).
        parents: parent name -> spec dict, in the graph's topological order.
        hidden: hidden widths of the parent networks.
        count_bins: spline segments.
        bound: the spline acts on ``[-bound, bound]`` (identity outside).

    Example:
        >>> import torch
        >>> m = FlowMechanism({"kind": "positive"}, {"a": {"kind": "real"}})
        >>> a, u = torch.randn(4), torch.randn(4)
        >>> x = m({"a": a}, u)
        >>> bool((x > 0).all()), torch.allclose(m.abduct(x, {"a": a}), u, atol=1e-5)
        (True, True)
    """

    def __init__(self, spec: Mapping[str, Any], parents: Mapping[str, Mapping[str, Any]] | None = None,
                 hidden: Sequence[int] = (32, 32), count_bins: int = 8, bound: float = 4.0) -> None:
        super().__init__()
        self.spec = NodeSpec.from_dict("<node>", dict(spec))
        if not self.spec.is_continuous:
            raise ValueError(f"FlowMechanism models continuous nodes, got kind {self.spec.kind!r}")
        self.parent_specs = {n: NodeSpec.from_dict(n, dict(s)) for n, s in (parents or {}).items()}
        self.hidden, self.count_bins, self.bound = [int(h) for h in hidden], int(count_bins), float(bound)
        self.encoder = ParentEncoder(self.parent_specs)
        self.standardize = _Standardize()
        self.register_buffer("initialized", torch.tensor(False))
        k = self.count_bins
        identity_bias = [0.0] * k + [0.0] * k + [_SPLINE_SLOPE_ONE] * (k - 1)
        if self.parent_specs:
            hyper = DenseNN(self.encoder.dim, self.hidden, param_dims=[k, k, k - 1])
            _zero_last(hyper, identity_bias)
            self.spline: nn.Module = T.ConditionalSpline(hyper, 1, k, bound=self.bound, order="quadratic")
            self.affine: ConditionalAffine | None = ConditionalAffine(self.encoder.dim, self.hidden)
        else:
            spline = T.Spline(1, count_bins=k, bound=self.bound, order="quadratic")
            with torch.no_grad():
                spline.unnormalized_widths.zero_()
                spline.unnormalized_heights.zero_()
                spline.unnormalized_derivatives.fill_(_SPLINE_SLOPE_ONE)
            self.spline = spline
            self.affine = None

    def get_config(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "parents": {n: s.to_dict() for n, s in self.parent_specs.items()},
                "hidden": self.hidden, "count_bins": self.count_bins, "bound": self.bound}

    def _transforms(self, parents: Mapping[str, Tensor]) -> list[T.Transform]:
        if self.affine is None:
            assert isinstance(self.spline, TransformModule)
            steps: list[T.Transform] = [self.spline]
        else:
            ctx = self.encoder(parents)
            steps = [self.spline.condition(ctx), self.affine.condition(ctx)]  # type: ignore[operator]
        return steps + [self.standardize.transform(), support_transform(self.spec)]

    def _base(self, n: int, like: Tensor) -> dist.Distribution:
        zeros = torch.zeros(n, 1, dtype=like.dtype, device=like.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def forward(self, parents: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        y = noise.to(self.standardize.loc.dtype).unsqueeze(-1)
        for t in self._transforms(parents):
            y = t(y)
        return y.squeeze(-1)

    def abduct(self, value: Tensor, parents: Mapping[str, Tensor],
               generator: torch.Generator | None = None) -> Tensor:
        y = self._clamp(value).unsqueeze(-1)
        for t in reversed(self._transforms(parents)):
            y = t.inv(y)
        return y.squeeze(-1)

    def log_prob(self, value: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        """``log p(value | parents)``: the density of the same flow as ``forward``/``abduct``, computed directly.

        Equal (to float round-off) to ``TransformedDistribution(N(0, 1), transforms).log_prob``, but without
        building the transform objects and with one gather for the spline's bins: it is the inner loop of
        :meth:`SCM.fit`.
        """
        y = self._clamp(value)
        support = support_transform(self.spec)
        z = support.inv(y)
        log_det = support.log_abs_det_jacobian(z, y) + torch.log(self.standardize.scale)
        x = (z - self.standardize.loc) / self.standardize.scale
        if self.affine is None:
            assert isinstance(self.spline, T.Spline)
            w, h, d = (self.spline.unnormalized_widths, self.spline.unnormalized_heights,
                       self.spline.unnormalized_derivatives)
        else:
            ctx = self.encoder(parents)
            out = self.affine.linear(ctx) + self.affine.net(ctx)
            scale = F.softplus(out[..., 1] + _AFFINE_SCALE_ONE) + 1e-4
            x = (x - out[..., 0]) / scale
            log_det = log_det + torch.log(scale)
            w, h, d = self.spline.nn(ctx)  # type: ignore[union-attr]
        u, log_det_spline = _spline_inverse(x, w, h, d, self.bound)
        return -0.5 * u * u - _HALF_LOG_2PI - log_det_spline - log_det

    def _clamp(self, value: Tensor) -> Tensor:
        """Keep boundary values (``interval`` ends, 0 for ``positive``) invertible."""
        v = value.to(self.standardize.loc.dtype)
        if self.spec.kind == "interval":
            assert self.spec.low is not None and self.spec.high is not None
            eps = 1e-6 * (self.spec.high - self.spec.low)
            return v.clamp(self.spec.low + eps, self.spec.high - eps)
        if self.spec.kind == "positive":
            return v.clamp_min(torch.finfo(v.dtype).tiny)
        return v

    def initialize(self, value: Tensor, parents: Mapping[str, Tensor]) -> None:
        """Standardise, then start a child at the least-squares fit of its parents.

        Parent features and the node's unconstrained values get mean 0, std 1. For a child, the conditional
        affine map starts at the ordinary least-squares regression of the standardised values on the parent
        features (its loc) with the residuals' standard deviation (its scale), so the flow starts as the
        maximum-likelihood linear-Gaussian model in the unconstrained space.
        """
        if bool(self.initialized):
            return
        with torch.no_grad():
            self.encoder.initialize(parents)
            z = support_transform(self.spec).inv(self._clamp(value))
            self.standardize.loc.fill_(float(z.mean()))
            self.standardize.scale.fill_(float(z.std().clamp_min(1e-6)) if z.numel() > 1 else 1.0)
            if self.affine is not None and z.numel() > self.encoder.dim + 1:
                self._least_squares_start((z - self.standardize.loc) / self.standardize.scale,
                                          self.encoder(parents))
            self.initialized.fill_(True)

    def _least_squares_start(self, z: Tensor, features: Tensor) -> None:
        """Set the conditional affine map's linear part to the OLS fit of ``z`` on ``features`` (float64, CPU)."""
        assert self.affine is not None
        x = torch.cat([features, torch.ones_like(features[:, :1])], dim=1).to("cpu", torch.float64)
        y = z.reshape(-1, 1).to("cpu", torch.float64)
        ok = torch.isfinite(x).all(dim=1) & torch.isfinite(y[:, 0])
        if int(ok.sum()) <= x.shape[1]:
            return
        beta = torch.linalg.lstsq(x[ok], y[ok], driver="gelsd").solution[:, 0]
        resid = y[ok, 0] - x[ok] @ beta
        scale = float(resid.std())
        if not (torch.isfinite(beta).all() and math.isfinite(scale)):
            return
        scale = min(max(scale, 1e-3), 1e3)
        linear = self.affine.linear
        linear.weight.zero_()
        linear.weight[0].copy_(beta[:-1].to(linear.weight))
        linear.bias[0] = float(beta[-1])
        linear.bias[1] = math.log(math.expm1(scale - 1e-4)) - _AFFINE_SCALE_ONE


class GumbelMaxMechanism(Mechanism):
    """A discrete mechanism ``x = argmax_k(logits_k(parents) + g_k)`` with Gumbel noise ``g``.

    Subclasses only provide :meth:`logits`. Abduction samples the exact posterior of ``g`` given the
    observed class (Oberst & Sontag 2019, truncated-Gumbel construction): the winning perturbed logit
    is ``Gumbel(logsumexp(logits))``, every other perturbed logit a ``Gumbel(logits_j)`` truncated
    below it.

    Noise is kept in float64, so a round trip through :meth:`abduct` and :meth:`forward` is exact.
    The losers are also kept at least ``1e-6 * (1 + |top|)`` below the winner, so float32 round-off
    in recomputed logits can never flip a class whose parents did not change (counterfactual
    stability); this moves a probability mass of order 1e-6.

    Args:
        cardinality: number of classes.

    Example:
        >>> import torch
        >>> class Coin(GumbelMaxMechanism):
        ...     def logits(self, parents, n):
        ...         return torch.zeros(n, 2)
        >>> m = Coin(2)
        >>> g = m.abduct(torch.tensor([1, 0]), {"x": torch.zeros(2)}, generator=torch.Generator().manual_seed(0))
        >>> m({"x": torch.zeros(2)}, g)
        tensor([1, 0])
    """

    discrete = True

    def __init__(self, cardinality: int) -> None:
        super().__init__()
        if int(cardinality) < 2:
            raise ValueError(f"cardinality must be >= 2, got {cardinality!r}")
        self.cardinality = int(cardinality)
        self.noise_shape = (self.cardinality,)

    def logits(self, parents: Mapping[str, Tensor], n: int) -> Tensor:
        """Unnormalised log-probabilities, shape ``(n, cardinality)`` (``n`` is needed by roots)."""
        raise NotImplementedError(f"{type(self).__name__} must implement logits(parents, n)")

    def get_config(self) -> dict[str, Any]:
        return {"cardinality": self.cardinality}

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return _gumbel((n, self.cardinality), _generator(generator))

    def noise_distribution(self, n: int, device: torch.device | None = None,
                           dtype: torch.dtype = torch.float32) -> dist.Distribution:
        zeros = torch.zeros(n, self.cardinality, device=device, dtype=torch.float64)
        return dist.Gumbel(zeros, 1.0, validate_args=False).to_event(1)

    def forward(self, parents: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        logits = self.logits(parents, noise.shape[0]).to(torch.float64)
        return torch.argmax(logits + noise.to(logits), dim=-1)

    def log_prob(self, value: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        logp = torch.log_softmax(self.logits(parents, value.shape[0]), dim=-1)
        return logp.gather(-1, value.long().unsqueeze(-1)).squeeze(-1)

    def abduct(self, value: Tensor, parents: Mapping[str, Tensor],
               generator: torch.Generator | None = None) -> Tensor:
        """One exact posterior draw of the Gumbel noise per row, given the observed class ``value``."""
        logits = self.logits(parents, value.shape[0]).to(torch.float64)
        n, k = logits.shape
        g = _gumbel((n, k + 1), _generator(generator)).to(logits.device)
        value = value.long().to(logits.device).unsqueeze(-1)
        # 1. The winner's perturbed logit is the max of all of them: Gumbel(logsumexp(logits)).
        top = torch.logsumexp(logits, dim=-1, keepdim=True) + g[:, :1]
        # 2. Every other perturbed logit: Gumbel(logits_j) truncated to (-inf, top],
        #    -log(exp(-top) + exp(-(logits_j + g_j))), kept a hair below top (see class docstring).
        others = -torch.logaddexp(-top, -(logits + g[:, 1:]))
        others = torch.minimum(others, top - 1e-6 * (1.0 + top.abs()))
        perturbed = others.scatter(-1, value, top)
        # 3. The noise is what was added to the logits.
        return perturbed - logits


class CategoricalMechanism(GumbelMaxMechanism):
    """The built-in mechanism of ``binary``/``categorical`` nodes: logits from a small MLP of the parents.

    A root has a learnable logit vector. Logits start at the data's log class frequencies.

    Args:
        cardinality: number of classes.
        parents: parent name -> spec dict, in topological order.
        hidden: hidden widths of the logit network.

    Example:
        >>> import torch
        >>> m = CategoricalMechanism(3)
        >>> m({}, m.sample_noise(5, torch.Generator().manual_seed(0))).shape
        torch.Size([5])
    """

    def __init__(self, cardinality: int, parents: Mapping[str, Mapping[str, Any]] | None = None,
                 hidden: Sequence[int] = (32, 32)) -> None:
        super().__init__(cardinality)
        self.parent_specs = {n: NodeSpec.from_dict(n, dict(s)) for n, s in (parents or {}).items()}
        self.hidden = [int(h) for h in hidden]
        self.encoder = ParentEncoder(self.parent_specs)
        self.register_buffer("initialized", torch.tensor(False))
        if self.parent_specs:
            self.net: DenseNN | None = DenseNN(self.encoder.dim, self.hidden, param_dims=[self.cardinality])
            self.root_logits = None
        else:
            self.net = None
            self.root_logits = nn.Parameter(torch.zeros(self.cardinality))

    def get_config(self) -> dict[str, Any]:
        return {"cardinality": self.cardinality,
                "parents": {n: s.to_dict() for n, s in self.parent_specs.items()}, "hidden": self.hidden}

    def logits(self, parents: Mapping[str, Tensor], n: int) -> Tensor:
        if self.net is None:
            assert self.root_logits is not None
            return self.root_logits.expand(n, self.cardinality)
        return self.net(self.encoder(parents)).reshape(n, self.cardinality)

    def initialize(self, value: Tensor, parents: Mapping[str, Tensor]) -> None:
        """Parent standardisation and logits at the log class frequencies."""
        if bool(self.initialized):
            return
        with torch.no_grad():
            self.encoder.initialize(parents)
            counts = torch.bincount(value.long().reshape(-1), minlength=self.cardinality).to(torch.float32)
            logf = torch.log((counts + 1.0) / (counts.sum() + self.cardinality))
            logf = logf - logf.mean()
            if self.net is None:
                assert self.root_logits is not None
                self.root_logits.copy_(logf.to(self.root_logits))
            else:
                self.net.layers[-1].bias.copy_(logf.to(self.net.layers[-1].bias))
            self.initialized.fill_(True)


# ------------------------------------------------------------------------------ known equations
def _weighted_sum(weights: Mapping[str, float], parents: Mapping[str, Tensor], like: Tensor) -> Tensor:
    total = torch.zeros_like(like)
    for name, w in weights.items():
        if name not in parents:
            raise ValueError(f"the equation needs parent {name!r}, but the node's parents are {sorted(parents)}")
        total = total + w * parents[name].to(like.dtype)
    return total


class LinearGaussianMechanism(_StandardNormalNoise, Mechanism):
    """``x = bias + sum_p weights[p] * p + scale * u`` with ``u ~ N(0, 1)`` (a ``real`` node).

    Args:
        weights: parent name -> coefficient (parents not listed have coefficient 0).
        bias: intercept.
        scale: noise standard deviation (> 0).

    Example:
        >>> import torch
        >>> LinearGaussianMechanism({"a": 1.0}, bias=1.0)({"a": torch.tensor([2.0])}, torch.tensor([0.5]))
        tensor([3.5000])
    """

    def __init__(self, weights: Mapping[str, float] | None = None, bias: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.weights = {str(k): float(v) for k, v in (weights or {}).items()}
        self.bias, self.scale = float(bias), float(scale)

    def get_config(self) -> dict[str, Any]:
        return {"weights": self.weights, "bias": self.bias, "scale": self.scale}

    def _mean(self, parents: Mapping[str, Tensor], like: Tensor) -> Tensor:
        return self.bias + _weighted_sum(self.weights, parents, like)

    def forward(self, parents: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        return self._mean(parents, noise) + self.scale * noise

    def abduct(self, value: Tensor, parents: Mapping[str, Tensor],
               generator: torch.Generator | None = None) -> Tensor:
        return (value - self._mean(parents, value)) / self.scale

    def log_prob(self, value: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        return dist.Normal(self._mean(parents, value), self.scale).log_prob(value)


class AffineSigmoidMechanism(_StandardNormalNoise, Mechanism):
    """``x = low + (high - low) * sigmoid(noise_scale * u + bias + sum_p weights[p] * p)``, ``u ~ N(0, 1)``.

    For an ``interval`` node; e.g. the Morpho-MNIST intensity equation
    ``i = 64 + 191 * sigmoid(0.5 * e + 2 * t - 5)`` is
    ``AffineSigmoidMechanism({"thickness": 2.0}, bias=-5.0, noise_scale=0.5, low=64, high=255)``.

    Args:
        weights: parent name -> coefficient inside the sigmoid.
        bias: intercept inside the sigmoid.
        noise_scale: coefficient of the standard-normal noise (> 0).
        low: lower end of the output range.
        high: upper end of the output range.

    Example:
        >>> import torch
        >>> m = AffineSigmoidMechanism({"t": 2.0}, bias=-5.0, noise_scale=0.5, low=64.0, high=255.0)
        >>> m({"t": torch.tensor([2.5])}, torch.tensor([0.0]))
        tensor([159.5000])
    """

    def __init__(self, weights: Mapping[str, float] | None = None, bias: float = 0.0, noise_scale: float = 1.0,
                 low: float = 0.0, high: float = 1.0) -> None:
        super().__init__()
        if not noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {noise_scale!r}")
        if not low < high:
            raise ValueError(f"need low < high, got low={low!r}, high={high!r}")
        self.weights = {str(k): float(v) for k, v in (weights or {}).items()}
        self.bias, self.noise_scale = float(bias), float(noise_scale)
        self.low, self.high = float(low), float(high)

    def get_config(self) -> dict[str, Any]:
        return {"weights": self.weights, "bias": self.bias, "noise_scale": self.noise_scale,
                "low": self.low, "high": self.high}

    def _loc(self, parents: Mapping[str, Tensor], like: Tensor) -> Tensor:
        return self.bias + _weighted_sum(self.weights, parents, like)

    def forward(self, parents: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        z = self.noise_scale * noise + self._loc(parents, noise)
        return self.low + (self.high - self.low) * torch.sigmoid(z)

    def _logit(self, value: Tensor) -> Tensor:
        p = ((value - self.low) / (self.high - self.low)).clamp(1e-7, 1 - 1e-7)
        return torch.logit(p)

    def abduct(self, value: Tensor, parents: Mapping[str, Tensor],
               generator: torch.Generator | None = None) -> Tensor:
        return (self._logit(value) - self._loc(parents, value)) / self.noise_scale

    def log_prob(self, value: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        z = self._logit(value)
        p = torch.sigmoid(z)
        log_jac = math.log(self.high - self.low) + torch.log(p) + torch.log1p(-p)  # dx/dz
        return dist.Normal(self._loc(parents, value), self.noise_scale).log_prob(z) - log_jac


def gamma_sample(concentration: float, n: int, generator: torch.Generator) -> Tensor:
    """``n`` Gamma(concentration, 1) draws (float64) from ``generator`` (Marsaglia & Tsang 2000, vectorised)."""
    a = concentration
    boost = a < 1.0
    if boost:
        a = a + 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    todo = torch.arange(n)
    while todo.numel():
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64)
        u = torch.rand(m, generator=generator, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        out = out * u.pow(1.0 / concentration)
    return out


class GammaMechanism(Mechanism):
    """A root ``x = shift + u`` with ``u ~ Gamma(concentration, rate)`` (a ``positive`` node if shift >= 0).

    E.g. the Morpho-MNIST thickness ``t = 0.5 + Gamma(10, 5)`` is ``GammaMechanism(10.0, 5.0, shift=0.5)``.

    Args:
        concentration: Gamma shape (> 0).
        rate: Gamma rate (> 0).
        shift: added offset.

    Example:
        >>> import torch
        >>> m = GammaMechanism(10.0, 5.0, shift=0.5)
        >>> x = m({}, m.sample_noise(3, torch.Generator().manual_seed(0)))
        >>> bool((x > 0.5).all())
        True
    """

    def __init__(self, concentration: float, rate: float, shift: float = 0.0) -> None:
        super().__init__()
        if not (concentration > 0 and rate > 0):
            raise ValueError(f"concentration and rate must be > 0, got {concentration!r}, {rate!r}")
        self.concentration, self.rate, self.shift = float(concentration), float(rate), float(shift)

    def get_config(self) -> dict[str, Any]:
        return {"concentration": self.concentration, "rate": self.rate, "shift": self.shift}

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return (gamma_sample(self.concentration, n, _generator(generator)) / self.rate).to(torch.float32)

    def noise_distribution(self, n: int, device: torch.device | None = None,
                           dtype: torch.dtype = torch.float32) -> dist.Distribution:
        conc = torch.full((n,), self.concentration, device=device, dtype=dtype)
        return dist.Gamma(conc, self.rate, validate_args=False)

    def forward(self, parents: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        return self.shift + noise

    def abduct(self, value: Tensor, parents: Mapping[str, Tensor],
               generator: torch.Generator | None = None) -> Tensor:
        return value - self.shift

    def log_prob(self, value: Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        u = value - self.shift
        ok = u > 0
        lp = dist.Gamma(torch.full_like(u, self.concentration), self.rate).log_prob(u.clamp_min(1e-30))
        return torch.where(ok, lp, torch.full_like(lp, -math.inf))
