"""The structural causal model over a :class:`~scm.CausalGraph`'s attribute nodes, as a Pyro program.

:meth:`SCM.model` is a plain Pyro program. Inside one ``pyro.plate("rows")`` it visits the attribute
nodes in topological order; for each node ``v`` it draws the exogenous noise at the sample site
``"v/u"`` and records the value ``f_v(parents, u)`` at the sample site ``"v"``::

    u_v = pyro.sample("v/u", noise prior of v)
    v   = pyro.deterministic("v", f_v(parents(v), u_v))

Nothing inside the program knows about interventions. The counterfactual's three steps are handlers
applied from outside:

1. **Abduction** (:meth:`SCM.abduct`): each mechanism inverts its equation at the observed values
   (exact for continuous nodes; a posterior draw of the Gumbel noise for discrete nodes).
2. **Action** (:meth:`SCM.predict`): ``pyro.poutine.do`` fixes the intervened sites.
3. **Prediction** (:meth:`SCM.predict`): ``pyro.poutine.condition`` fixes every noise site to the
   abducted noise, and the program is run forward.

Example:
    >>> import torch
    >>> from scm import CausalGraph, SCM, LinearGaussianMechanism
    >>> g = CausalGraph.from_edges([("x", "y")], {"x": {"kind": "real"}, "y": {"kind": "real"}})
    >>> scm = SCM(g, mechanisms={"x": LinearGaussianMechanism(),
    ...                          "y": LinearGaussianMechanism({"x": 2.0}, scale=0.5)})
    >>> obs = {"x": torch.tensor([1.0]), "y": torch.tensor([3.0])}
    >>> scm.counterfactual(obs, do={"x": 2.0})["y"]   # u_y = (3 - 2) / 0.5 = 2; y' = 4 + 0.5 * 2
    tensor([5.])
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn
from tqdm.auto import tqdm

from dcfg_io.checks import is_integer, is_number
from scm.graph import CausalGraph, NodeSpec
from scm.mechanisms import CategoricalMechanism, FlowMechanism, GumbelMaxMechanism, Mechanism
from scm.support import as_values

#: an intervention's value: a number, a ``(B,)`` tensor, or a callable of the values the node would take
DoValue = Union[float, int, Tensor, Callable[[Tensor], Any]]
Seed = Union[int, torch.Generator, None]

#: L-BFGS iterations per round of SCM.fit (between the stopping checks).
_LBFGS_CHUNK = 10


def noise_site(node: str) -> str:
    """Name of the exogenous-noise sample site of ``node`` in :meth:`SCM.model` (``"<node>/u"``)."""
    return f"{node}/u"


def _make_generator(seed: Seed) -> torch.Generator:
    """A CPU generator from a seed, a generator (used as is), or fresh entropy for None."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    if seed is None:
        g.seed()
    elif is_integer(seed):
        if not -2 ** 63 <= int(seed) < 2 ** 64:
            raise ValueError(f"seed={seed} is out of range; use an integer in [-2**63, 2**64)")
        g.manual_seed(int(seed))
    else:
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__} {seed!r}")
    return g


#: Bounds of an :class:`SCMConfig` (and of the built-in mechanisms' configs in a saved SCM): hidden layers of the
#: parent networks, their widths, and the flows' spline segments. Checked before any module of a saved SCM is built.
SCM_LIMITS = {"layers": 8, "width": 4096, "count_bins": 1024}


@dataclass(frozen=True)
class SCMConfig:
    """Settings of the built-in mechanisms (saved in ``config.json``).

    Attributes:
        hidden: hidden widths of the parent networks (flows' hypernetworks and logit MLPs): 1 to 8 integers in
            1..4096 (:data:`SCM_LIMITS`).
        count_bins: spline segments of the flows, 2..1024.
        bound: the splines act on ``[-bound, bound]`` in standardised units (identity outside); finite, > 0.
        seed: seed of the initial weights.
    """

    hidden: tuple[int, ...] = (32, 32)
    count_bins: int = 8
    bound: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        hidden = self.hidden
        if not isinstance(hidden, (list, tuple)) or not 1 <= len(hidden) <= SCM_LIMITS["layers"] \
                or not all(is_integer(h, 1, SCM_LIMITS["width"]) for h in hidden):
            raise ValueError(f"hidden={hidden!r:.80} must be a list of 1 to {SCM_LIMITS['layers']} widths, integers "
                             f"in 1..{SCM_LIMITS['width']}")
        if not is_integer(self.count_bins, 2, SCM_LIMITS["count_bins"]):
            raise ValueError(f"count_bins={self.count_bins!r:.80} must be an integer in 2..{SCM_LIMITS['count_bins']}")
        if not is_number(self.bound, 0, low_open=True):
            raise ValueError(f"bound={self.bound!r:.80} must be a finite number > 0")
        if not is_integer(self.seed):
            raise ValueError(f"seed={self.seed!r:.80} must be an integer")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        object.__setattr__(self, "count_bins", int(self.count_bins))
        object.__setattr__(self, "bound", float(self.bound))
        object.__setattr__(self, "seed", int(self.seed))


class SCM(nn.Module):
    """A structural causal model with one :class:`~scm.mechanisms.Mechanism` per attribute node.

    Nodes without a user mechanism get a learnable built-in one from their kind:
    :class:`~scm.mechanisms.FlowMechanism` (continuous) or :class:`~scm.mechanisms.CategoricalMechanism`
    (binary/categorical). The image node, if any, is not modelled here: ``obs`` may carry it (it is
    ignored) but it cannot be intervened on.

    Batched outputs: every method returns a dict node -> tensor with one row per input row. With
    ``num_particles = P > 1``, :meth:`abduct` and :meth:`counterfactual` return ``P * B`` rows,
    particle-major: row ``p * B + b`` is particle ``p`` of input row ``b`` (so
    ``out[v].reshape(P, B)`` splits them).

    Args:
        graph: the causal DAG.
        mechanisms: node -> mechanism for nodes with known (or custom) equations.
        hidden: hidden widths of the built-in parent networks.
        count_bins: spline segments of the built-in flows.
        bound: spline bound of the built-in flows (standardised units).
        seed: seed of the built-ins' initial weights.

    Example:
        >>> import torch
        >>> from scm import CausalGraph, SCM
        >>> g = CausalGraph.from_dict({"nodes": {"t": {"kind": "positive"},
        ...                                      "i": {"kind": "interval", "low": 0, "high": 255}},
        ...                            "edges": [["t", "i"]]})
        >>> scm = SCM(g)
        >>> t = torch.rand(256) + 1.0
        >>> data = {"t": t, "i": 60 * t + 10 * torch.rand(256)}
        >>> losses = scm.fit(data, epochs=2, progress=False)
        >>> sorted(scm.sample(4, seed=0))
        ['i', 't']
    """

    def __init__(self, graph: CausalGraph, mechanisms: Mapping[str, Mechanism] | None = None,
                 hidden: tuple[int, ...] | list[int] = (32, 32), count_bins: int = 8, bound: float = 4.0,
                 seed: int = 0) -> None:
        super().__init__()
        if not isinstance(graph, CausalGraph):
            raise TypeError(f"graph must be a CausalGraph, got {type(graph).__name__}; build one with "
                            f"CausalGraph.from_dict(...)")
        self.graph = graph
        self.config = SCMConfig(hidden=tuple(hidden), count_bins=int(count_bins), bound=float(bound),
                                seed=int(seed))
        self._order = graph.attribute_nodes()
        if not self._order:
            raise ValueError("the graph has no attribute (non-image) nodes; the SCM has nothing to model")
        for n in self._order:
            if "." in n:
                raise ValueError(f"node name {n!r} contains '.', which torch module names cannot hold; rename it")
        self._parents = {n: [p for p in graph.parents(n)] for n in self._order}
        user = dict(mechanisms or {})
        for name, mech in user.items():
            if name == graph.image_node:
                raise ValueError(f"node {name!r} is the image node; the SCM models attributes only, so it takes no "
                                 f"mechanism (the image mechanism is the diffusion model)")
            if name not in graph:
                raise ValueError(f"mechanisms has unknown node {name!r}; attribute nodes: {self._order}")
            if not isinstance(mech, Mechanism):
                raise TypeError(f"mechanism of node {name!r} must be a scm.Mechanism, got {type(mech).__name__}")
            spec = graph.spec(name)
            if mech.discrete != spec.is_discrete:
                want = "discrete (GumbelMaxMechanism)" if spec.is_discrete else "continuous"
                raise ValueError(f"node {name!r} is {spec.kind} and needs a {want} mechanism, got "
                                 f"{type(mech).__name__}")
            _check_mechanism_fits(name, mech, graph, self._parents[name])
            weights = getattr(mech, "weights", None)
            if isinstance(weights, Mapping):
                strangers = sorted(set(weights) - set(self._parents[name]))
                if strangers:
                    raise ValueError(f"the equation of node {name!r} uses {strangers}, which are not its parents "
                                     f"{self._parents[name]}; add the edges to the graph or drop the weights")
        built: dict[str, Mechanism] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            for n in self._order:
                if n in user:
                    built[n] = user[n]
                    continue
                spec = graph.spec(n)
                parents = {p: graph.spec(p).to_dict() for p in self._parents[n]}
                if spec.is_discrete:
                    built[n] = CategoricalMechanism(spec.cardinality or 2, parents, hidden=self.config.hidden)
                else:
                    built[n] = FlowMechanism(spec.to_dict(), parents, hidden=self.config.hidden,
                                             count_bins=self.config.count_bins, bound=self.config.bound)
        self.mechanisms = nn.ModuleDict(built)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    # ------------------------------------------------------------------------------ properties
    @property
    def nodes(self) -> list[str]:
        """The modelled (attribute) nodes, in topological order."""
        return list(self._order)

    @property
    def device(self) -> torch.device:
        """Device of the model (set with ``.to(device)``); inputs are moved here."""
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """Float dtype of continuous values."""
        return self._anchor.dtype

    # ----------------------------------------------------------------------------- the program
    def model(self, n: int) -> dict[str, Tensor]:
        """The Pyro program: ``n`` rows of noise sites ``"<node>/u"`` and value sites ``"<node>"``.

        Run it under ``poutine.condition`` (noise) and ``poutine.do`` (interventions); :meth:`predict`
        does exactly that. Unconditioned noise sites draw from the mechanisms' noise priors.

        Example:
            >>> import torch, pyro.poutine as poutine
            >>> from scm import CausalGraph, SCM, LinearGaussianMechanism
            >>> g = CausalGraph.from_edges([("x", "y")], {"x": {"kind": "real"}, "y": {"kind": "real"}})
            >>> scm = SCM(g, {"x": LinearGaussianMechanism(), "y": LinearGaussianMechanism({"x": 1.0})})
            >>> noise = {"x/u": torch.tensor([1.0]), "y/u": torch.tensor([0.5])}
            >>> poutine.do(poutine.condition(scm.model, data=noise), data={"x": torch.tensor([3.0])})(1)["y"]
            tensor([3.5000])
        """
        values: dict[str, Tensor] = {}
        with pyro.plate("rows", n, dim=-1):
            for node in self._order:
                mech = self.mechanisms[node]
                u = pyro.sample(noise_site(node), mech.noise_distribution(n, self.device, self.dtype))
                parents = {p: values[p] for p in self._parents[node]}
                values[node] = pyro.deterministic(node, mech(parents, u), event_dim=0)
        return values

    # ---------------------------------------------------------------------------- validation
    def _check_values(self, obs: Any, what: str, *, require: bool = True) -> tuple[dict[str, Tensor], int]:
        """Validate observed values (dict or DataFrame): known nodes, all present, in support, same length."""
        if hasattr(obs, "columns") and hasattr(obs, "to_numpy"):  # pandas DataFrame
            obs = {c: obs[c] for c in obs.columns}
        if not isinstance(obs, Mapping):
            raise TypeError(f"{what} must be a dict node -> (B,) values or a pandas DataFrame, got "
                            f"{type(obs).__name__}")
        image = self.graph.image_node
        unknown = [k for k in obs if k not in self.graph]
        if unknown:
            raise ValueError(f"{what} has unknown node(s) {unknown}; attribute nodes: {self._order}"
                             + (f" (and image node {image!r}, which is ignored)" if image else ""))
        if require:
            missing = [n for n in self._order if n not in obs]
            if missing:
                first = missing[0]
                kids = [c for c in self.graph.children(first) if c in obs and c != image]
                role = f" (a parent of {kids})" if kids else ""
                col = " column(s)" if what == "data" else ""
                raise ValueError(f"{what} is missing{col} {missing}: node {first!r}{role} has no value; the SCM "
                                 f"needs a value for every attribute node {self._order}")
        values: dict[str, Tensor] = {}
        for n in self._order:
            if n in obs:
                values[n] = as_values(n, self.graph.spec(n), obs[n], what=what, dtype=self.dtype,
                                      device=self.device)
        sizes = {n: int(v.shape[0]) for n, v in values.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{what} has mismatched batch sizes {sizes}; every node needs one value per row")
        b = next(iter(sizes.values())) if sizes else 0
        if b == 0:
            raise ValueError(f"{what} has no rows; pass at least one row per node")
        return values, b

    def check_do(self, do: Mapping[str, DoValue] | None, n: int | None = None) -> dict[str, Tensor | Callable]:
        """Check interventions: attribute nodes only; numbers and ``(n,)`` tensors in the support (callables are
        checked when applied; a bool only for a binary node, where it means 1 / 0); returns node -> tensor (0-d
        for a number) or the callable."""
        if do is None:
            return {}
        if not isinstance(do, Mapping):
            raise TypeError(f"do must be a dict node -> value (number, (B,) tensor, or callable), got "
                            f"{type(do).__name__}")
        out: dict[str, Tensor | Callable] = {}
        for name, value in do.items():
            if name == self.graph.image_node:
                raise ValueError(f"cannot intervene on the image node {name!r} through the SCM: it models the "
                                 f"attributes {self._order}; intervene on those (the image follows them)")
            if name not in self._order:
                raise ValueError(f"do has unknown node {name!r}; you can intervene on {self._order}")
            if callable(value) and not isinstance(value, Tensor):
                out[name] = value
                continue
            if self.graph.spec(name).kind != "binary" and (  # True/False mean 1/0 only for a binary node
                    isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")):
                raise TypeError(f"do[{name!r}]={value!r:.80}: pass a number, a (B,) tensor or a callable of the "
                                f"factual value, not a bool (a class index is an integer, e.g. 1)")
            t = as_values(name, self.graph.spec(name), value, what="do", dtype=self.dtype, device=self.device,
                          allow_scalar=True)
            if t.dim() == 1 and n is not None and t.shape[0] != n:
                raise ValueError(f"do value of node {name!r} has {t.shape[0]} rows but the batch has {n}; pass a "
                                 f"number or a tensor of shape ({n},)")
            out[name] = t
        return out

    def _check_noise(self, noise: Any) -> int:
        if not isinstance(noise, Mapping):
            raise TypeError(f"noise must be a dict node -> tensor (from abduct), got {type(noise).__name__}")
        unknown = [k for k in noise if k not in self._order]
        if unknown:
            raise ValueError(f"noise has unknown node(s) {unknown}; expected exactly {self._order}")
        missing = [k for k in self._order if k not in noise]
        if missing:
            raise ValueError(f"noise is missing node(s) {missing}; pass the full dict returned by abduct")
        sizes = {}
        for k in self._order:
            v = noise[k]
            if not isinstance(v, Tensor):
                raise TypeError(f"noise of node {k!r} must be a tensor, got {type(v).__name__}")
            shape = tuple(self.mechanisms[k].noise_shape)
            if v.dim() != 1 + len(shape) or tuple(v.shape[1:]) != shape:
                want = "(n,)" if not shape else f"(n, {', '.join(map(str, shape))})"
                raise ValueError(f"noise of node {k!r} has shape {tuple(v.shape)}; expected {want}")
            sizes[k] = int(v.shape[0])
        if len(set(sizes.values())) > 1:
            raise ValueError(f"noise has mismatched batch sizes {sizes}")
        return next(iter(sizes.values()))

    # ---------------------------------------------------------------------- the three steps
    @torch.no_grad()
    def abduct(self, obs: Mapping[str, Any], num_particles: int = 1, seed: Seed = None) -> dict[str, Tensor]:
        """Step 1, abduction: the exogenous noise of every attribute node given observed values.

        Continuous nodes: the exact inverse of the mechanism. Discrete nodes: exact posterior draws of
        the Gumbel noise (Oberst & Sontag 2019), one per particle.

        Args:
            obs: node -> ``(B,)`` values for every attribute node (an image entry is ignored).
            num_particles: posterior draws per row ``P``; outputs have ``P * B`` rows, particle-major.
            seed: int or ``torch.Generator`` for the discrete posterior draws.

        Returns:
            node -> noise of shape ``(P * B,)`` (continuous) or ``(P * B, cardinality)`` (discrete).

        Example:
            >>> import torch
            >>> from scm import CausalGraph, SCM, LinearGaussianMechanism
            >>> g = CausalGraph.from_edges([("x", "y")], {"x": {"kind": "real"}, "y": {"kind": "real"}})
            >>> scm = SCM(g, {"x": LinearGaussianMechanism(), "y": LinearGaussianMechanism({"x": 1.0})})
            >>> scm.abduct({"x": torch.tensor([1.0]), "y": torch.tensor([3.0])})
            {'x': tensor([1.]), 'y': tensor([2.])}
        """
        particles = self._check_particles(num_particles)
        values, _ = self._check_values(obs, "obs")
        gen = _make_generator(seed)
        return self._abduct(values, particles, gen)

    def _abduct(self, values: dict[str, Tensor], particles: int, gen: torch.Generator) -> dict[str, Tensor]:
        if particles > 1:
            values = {k: v.repeat(particles) for k, v in values.items()}
        noise = {}
        for node in self._order:
            parents = {p: values[p] for p in self._parents[node]}
            noise[node] = self.mechanisms[node].abduct(values[node], parents, generator=gen)
        return noise

    @torch.no_grad()
    def predict(self, noise: Mapping[str, Tensor], do: Mapping[str, DoValue] | None = None) -> dict[str, Tensor]:
        """Steps 2 and 3, action and prediction: run the program with fixed noise under ``do``.

        ``pyro.poutine.condition`` fixes each noise site ``"<node>/u"`` and ``pyro.poutine.do`` fixes
        the intervened value sites. A callable ``do`` value receives the ``(n,)`` tensor of values the
        node would take just before the intervention (under the noise and the other interventions
        upstream of it) and returns the new values, e.g. a shift ``lambda x: x + 1``.

        Args:
            noise: node -> noise tensor, ``n`` rows each (as returned by :meth:`abduct`).
            do: node -> number, ``(n,)`` tensor, or callable; the image node is not allowed.

        Returns:
            node -> ``(n,)`` values of every attribute node in the intervened world.

        Example:
            >>> import torch
            >>> from scm import CausalGraph, SCM, LinearGaussianMechanism
            >>> g = CausalGraph.from_edges([("x", "y")], {"x": {"kind": "real"}, "y": {"kind": "real"}})
            >>> scm = SCM(g, {"x": LinearGaussianMechanism(), "y": LinearGaussianMechanism({"x": 1.0})})
            >>> u = {"x": torch.tensor([1.0]), "y": torch.tensor([2.0])}
            >>> scm.predict(u, do={"x": lambda x: x + 1})
            {'x': tensor([2.]), 'y': tensor([4.])}
        """
        n = self._check_noise(noise)
        interventions = self.check_do(do, n)
        return self._predict(self._noise_to_model(noise), interventions, n)

    def _predict(self, noise: dict[str, Tensor], do: dict[str, Tensor | Callable], n: int) -> dict[str, Tensor]:
        # Abducted (or prior) noise fixes every exogenous site.
        conditioned = poutine.condition(self.model, data={noise_site(k): v for k, v in noise.items()})
        # Action: constant interventions now; callable ones are filled in at their site, from the
        # value the node would take there, by _ResolveCallables just before poutine.do reads them.
        fixed: dict[str, Tensor] = {k: (v.expand(n) if v.dim() == 0 else v)
                                    for k, v in do.items() if isinstance(v, Tensor)}
        shifts = {k: v for k, v in do.items() if not isinstance(v, Tensor)}
        if shifts:
            check = lambda node, value: self._as_intervention(node, value, n)  # noqa: E731
            conditioned = _ResolveCallables(shifts, fixed, check)(conditioned)
        # Prediction: run the program forward.
        return poutine.do(conditioned, data=fixed)(n) if do else conditioned(n)

    def _as_intervention(self, node: str, value: Any, n: int) -> Tensor:
        t = self.check_do({node: value}, n)[node]
        assert isinstance(t, Tensor)
        return t.expand(n) if t.dim() == 0 else t

    @torch.no_grad()
    def counterfactual(self, obs: Mapping[str, Any], do: Mapping[str, DoValue],
                       num_particles: int = 1, seed: Seed = None) -> dict[str, Tensor]:
        """What would the attributes have been under ``do``, given that we observed ``obs``?

        Abduction (:meth:`abduct`), then action and prediction (:meth:`predict`). Nodes that are
        neither intervened on nor descendants of an intervened node keep their factual values.

        Args:
            obs: node -> ``(B,)`` factual values of every attribute node (an image entry is ignored).
            do: node -> number, ``(B,)`` tensor, or callable of the pre-intervention value (a shift
                such as ``lambda t: t + 1``). Intervening on the image node is an error.
            num_particles: posterior particles ``P`` of the discrete noise. With ``P = 1`` outputs have
                shape ``(B,)``; with ``P > 1`` they have ``P * B`` rows, particle-major (row
                ``p * B + b``), so ``out[v].reshape(P, B)`` splits them. ``(B,)`` do tensors are
                repeated for each particle.
            seed: int or ``torch.Generator`` for the discrete posterior draws.

        Returns:
            node -> counterfactual values, for every attribute node.

        Raises:
            ValueError: unknown node, missing node in ``obs``, a do on the image node, a value outside
                a node's support, mismatched batch sizes.

        Example:
            >>> import torch
            >>> from scm import CausalGraph, SCM, GammaMechanism, AffineSigmoidMechanism
            >>> g = CausalGraph.from_dict({
            ...     "nodes": {"thickness": {"kind": "positive"},
            ...               "intensity": {"kind": "interval", "low": 64, "high": 255}},
            ...     "edges": [["thickness", "intensity"]]})
            >>> scm = SCM(g, mechanisms={
            ...     "thickness": GammaMechanism(10.0, 5.0, shift=0.5),
            ...     "intensity": AffineSigmoidMechanism({"thickness": 2.0}, bias=-5.0, noise_scale=0.5,
            ...                                         low=64.0, high=255.0)})
            >>> obs = {"thickness": torch.tensor([2.5]), "intensity": torch.tensor([159.5])}
            >>> cf = scm.counterfactual(obs, do={"thickness": 3.0})
            >>> round(cf["intensity"].item(), 2)    # 64 + 191 * sigmoid(0 + 2 * 3 - 5)
            203.63
        """
        particles = self._check_particles(num_particles)
        values, b = self._check_values(obs, "obs")
        interventions = self.check_do(do, b)
        gen = _make_generator(seed)
        # 1. Abduction.
        noise = self._abduct(values, particles, gen)
        # 2. Action and 3. Prediction (per-row do tensors follow the particle-major layout).
        if particles > 1:
            interventions = {k: v.repeat(particles) if isinstance(v, Tensor) and v.dim() == 1 else v
                             for k, v in interventions.items()}
        return self._predict(noise, interventions, particles * b)

    # ---------------------------------------------------------------------- sampling, effects
    def _prior_noise(self, n: int, gen: torch.Generator) -> dict[str, Tensor]:
        return self._noise_to_model({k: self.mechanisms[k].sample_noise(n, gen) for k in self._order})

    def _noise_to_model(self, noise: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Noise on the model's device; continuous noise in the model's dtype (discrete keeps float64)."""
        return {k: v.to(self.device) if self.mechanisms[k].discrete else v.to(self.device, self.dtype)
                for k, v in noise.items()}

    @torch.no_grad()
    def sample(self, n: int, seed: Seed = None) -> dict[str, Tensor]:
        """``n`` rows from the observational distribution.

        Example:
            >>> import torch
            >>> from scm import CausalGraph, SCM
            >>> scm = SCM(CausalGraph.from_dict({"nodes": {"d": {"kind": "binary"}}, "edges": []}))
            >>> scm.sample(3, seed=0)["d"].dtype
            torch.int64
        """
        n = self._check_n(n)
        return self._predict(self._prior_noise(n, _make_generator(seed)), {}, n)

    @torch.no_grad()
    def interventional_samples(self, do: Mapping[str, DoValue], n: int, seed: Seed = None) -> dict[str, Tensor]:
        """``n`` rows from the interventional distribution ``p(. | do)``.

        Example:
            >>> import torch
            >>> from scm import CausalGraph, SCM, LinearGaussianMechanism
            >>> g = CausalGraph.from_edges([("x", "y")], {"x": {"kind": "real"}, "y": {"kind": "real"}})
            >>> scm = SCM(g, {"x": LinearGaussianMechanism(), "y": LinearGaussianMechanism({"x": 3.0})})
            >>> s = scm.interventional_samples({"x": 1.0}, 20000, seed=0)
            >>> round(s["y"].mean().item(), 1)
            3.0
        """
        n = self._check_n(n)
        interventions = self.check_do(do, n)
        return self._predict(self._prior_noise(n, _make_generator(seed)), interventions, n)

    @torch.no_grad()
    def average_causal_effect(self, target: str, do_a: Mapping[str, DoValue], do_b: Mapping[str, DoValue],
                              n: int = 10000, seed: Seed = None) -> Tensor:
        """``E[target | do_a] - E[target | do_b]``, by Monte Carlo with common random numbers.

        Both arms use the same ``n`` noise draws, which removes most of the Monte Carlo variance.

        Args:
            target: a non-image node.
            do_a: the alternative interventions.
            do_b: the reference interventions.
            n: Monte Carlo rows.
            seed: int or ``torch.Generator``.

        Returns:
            A 0-d tensor for continuous and binary targets (a difference of means; for binary, of
            probabilities), or a ``(cardinality,)`` tensor of class-probability differences for a
            categorical target.

        Example:
            >>> import torch
            >>> from scm import CausalGraph, SCM, LinearGaussianMechanism
            >>> g = CausalGraph.from_edges([("x", "y")], {"x": {"kind": "real"}, "y": {"kind": "real"}})
            >>> scm = SCM(g, {"x": LinearGaussianMechanism(), "y": LinearGaussianMechanism({"x": 3.0})})
            >>> scm.average_causal_effect("y", {"x": 1.0}, {"x": 0.0}, n=1000, seed=0)
            tensor(3.)
        """
        if target == self.graph.image_node or target not in self._order:
            raise ValueError(f"target {target!r} is not an attribute node; choose one of {self._order}")
        n = self._check_n(n)
        arm_a, arm_b = self.check_do(do_a, n), self.check_do(do_b, n)
        noise = self._prior_noise(n, _make_generator(seed))
        ya = self._predict(noise, arm_a, n)[target]
        yb = self._predict(noise, arm_b, n)[target]
        spec = self.graph.spec(target)
        if spec.kind == "categorical":
            k = int(spec.cardinality or 2)
            return (torch.nn.functional.one_hot(ya, k).to(self.dtype).mean(0)
                    - torch.nn.functional.one_hot(yb, k).to(self.dtype).mean(0))
        return ya.to(self.dtype).mean() - yb.to(self.dtype).mean()

    # ---------------------------------------------------------------------------- likelihood
    def _log_prob(self, values: Mapping[str, Tensor]) -> Tensor:
        total = None
        for node in self._order:
            parents = {p: values[p] for p in self._parents[node]}
            lp = self.mechanisms[node].log_prob(values[node], parents)
            total = lp if total is None else total + lp
        assert total is not None
        return total

    def log_prob(self, data: Mapping[str, Any]) -> Tensor:
        """``log p(row)`` of each row: the sum over nodes of ``log p(node | parents)``, shape ``(B,)``.

        Example:
            >>> import torch
            >>> from scm import CausalGraph, SCM, LinearGaussianMechanism
            >>> scm = SCM(CausalGraph.from_dict({"nodes": {"x": {"kind": "real"}}, "edges": []}),
            ...           {"x": LinearGaussianMechanism()})
            >>> round(scm.log_prob({"x": torch.tensor([0.0])}).item(), 4)    # -log(sqrt(2 pi))
            -0.9189
        """
        values, _ = self._check_values(data, "data")
        return self._log_prob(values)

    def fit(self, data: Mapping[str, Any], epochs: int | None = None, lr: float | None = None,
            batch_size: int | None = None, seed: Seed = 0, progress: bool = True,
            weight_decay: float | None = None, *, method: str = "auto", val_fraction: float | None = None,
            patience: int | None = None, max_iter: int = 500, tol: float | None = None,
            threads: int | None = 1) -> list[float]:
        """Maximum likelihood on fully observed rows: full-batch L-BFGS, or mini-batch Adam.

        The first fit sets data-dependent statistics (standardisation, class frequencies, a least-squares
        start of the flows' conditional affine map) via each mechanism's ``initialize``; later fits continue
        from the current weights. Two optimisers:

        * ``method="lbfgs"``: full-batch L-BFGS with a strong-Wolfe line search. The log-likelihood is a
          sum over nodes, so each node with parameters gets its own optimiser on its own term. A random
          ``val_fraction`` of the rows (default 10 %, drawn with ``seed``) is held out. Every 10 iterations
          each node is checked: it stops when ``patience`` (default 2) such rounds in a row each improved
          its training NLL by less than ``tol`` (default 5e-4) nats per row, when L-BFGS meets its own
          tolerances, or after ``max_iter`` iterations, and keeps its last weights; it stops early, and goes
          back to the weights of its best validation NLL, when its validation NLL has become worse than
          that best by more than ``tol`` and two paired standard errors (over-fitting). ``lr`` is the
          L-BFGS step (default 1); ``weight_decay`` adds ``weight_decay / 2 * |theta|^2`` to the loss.
        * ``method="adam"``: ``epochs`` passes (default 30) of Adam over shuffled mini-batches of
          ``batch_size`` rows (default 512), peak learning rate ``lr`` (default 3e-3) with a cosine decay.
          With ``val_fraction`` it keeps the epoch of the best validation NLL and stops after ``patience``
          epochs (default 5) without an improvement of ``tol`` (default 1e-4).

        ``method="auto"`` (the default) is ``"adam"`` when any Adam setting (``epochs``, ``lr``,
        ``batch_size``, ``weight_decay``) is given, so calls written for the Adam fit keep their meaning,
        and ``"lbfgs"`` otherwise.

        On any exception (a non-finite loss, a ``KeyboardInterrupt``, an error in a mechanism), every
        parameter and buffer of the SCM (and every Pyro param-store entry) is put back as it was before
        the call, so a failed fit leaves the SCM as it found it.

        Args:
            data: node -> ``(N,)`` values or a pandas DataFrame with a column per attribute node
                (extra image entries are ignored).
            epochs: Adam: passes over the data.
            lr: Adam: peak learning rate; L-BFGS: step size.
            batch_size: Adam: rows per step.
            seed: int or ``torch.Generator`` for the shuffling and the validation split.
            progress: show a tqdm bar.
            weight_decay: Adam weight decay; L-BFGS: L2 penalty.
            method: ``"auto"``, ``"lbfgs"`` or ``"adam"``.
            val_fraction: fraction of the rows held out for early stopping (L-BFGS: 0.1; Adam: 0, none).
            patience: L-BFGS: slow rounds of 10 iterations in a row before a node stops (default 2); Adam:
                epochs without a validation improvement of ``tol`` before the fit stops (default 5).
            max_iter: L-BFGS iterations per node at most.
            tol: improvement (nats per row) that counts as progress: of a node's training NLL in 10 L-BFGS
                iterations (default 5e-4), or of the validation NLL in an Adam epoch (default 1e-4).
            threads: torch CPU threads during the fit, restored afterwards (``None``: leave them as set).
                One by default: the fit's operations are small (rows x a hidden width), too small to gain
                from intra-op threads, and threads that wait for busy cores slow each one down.

        Returns:
            Mean negative log-likelihood per training row: Adam, one value per epoch; L-BFGS, the value
            before the first step, then one per round of 10 iterations over the nodes, and last that of the
            returned weights. One value in total when no mechanism has parameters.

        Raises:
            ValueError: bad data or settings (before anything changes).
            FloatingPointError: the loss became non-finite (the SCM is restored).

        Example:
            >>> import torch
            >>> from scm import CausalGraph, SCM
            >>> scm = SCM(CausalGraph.from_dict({"nodes": {"x": {"kind": "positive"}}, "edges": []}))
            >>> hist = scm.fit({"x": torch.rand(500) + 0.1}, epochs=3, progress=False)   # Adam, 3 epochs
            >>> len(hist)
            3
            >>> hist = SCM(scm.graph).fit({"x": torch.rand(500) + 0.1}, progress=False)   # L-BFGS
            >>> hist[-1] < hist[0]
            True
        """
        if method not in ("auto", "lbfgs", "adam"):
            raise ValueError(f"method must be 'auto', 'lbfgs' or 'adam', got {method!r}")
        adam_given = [k for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size),
                                     ("weight_decay", weight_decay)) if v is not None]
        if method == "auto":
            method = "adam" if adam_given else "lbfgs"
        if method == "lbfgs" and (epochs is not None or batch_size is not None):
            raise ValueError("epochs and batch_size are Adam settings; L-BFGS is full-batch and stops on its own "
                             "(use max_iter), or pass method='adam'")
        if epochs is not None and not is_integer(epochs, 1):
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        if batch_size is not None and not is_integer(batch_size, 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if lr is not None and not is_number(lr, 0, low_open=True):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if weight_decay is not None and not is_number(weight_decay, 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if val_fraction is not None and not (isinstance(val_fraction, numbers.Real) and 0 <= val_fraction < 1):
            raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
        if patience is not None and not is_integer(patience, 1):
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if not is_integer(max_iter, 1):
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
        if tol is not None and not is_number(tol, 0):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        if threads is not None and not is_integer(threads, 1):
            raise ValueError(f"threads must be None or an integer >= 1, got {threads!r}")
        values, n = self._check_values(data, "data")
        gen = _make_generator(seed)
        snapshot = _Snapshot(self)
        was_training = self.training
        caller_threads = torch.get_num_threads()
        if threads is not None and int(threads) != caller_threads:
            torch.set_num_threads(int(threads))
        try:
            for node in self._order:
                parents = {p: values[p] for p in self._parents[node]}
                self.mechanisms[node].initialize(values[node], parents)
            self.train()
            if not any(p.requires_grad for p in self.parameters()):
                with torch.no_grad():
                    return [float(-self._log_prob(values).mean())]
            if method == "adam":
                history = self._fit_adam(values, n, gen, epochs=30 if epochs is None else int(epochs),
                                         lr=3e-3 if lr is None else float(lr),
                                         batch_size=512 if batch_size is None else int(batch_size),
                                         weight_decay=0.0 if weight_decay is None else float(weight_decay),
                                         val_fraction=0.0 if val_fraction is None else float(val_fraction),
                                         patience=5 if patience is None else int(patience),
                                         tol=1e-4 if tol is None else float(tol), progress=progress)
            else:
                history = self._fit_lbfgs(values, n, gen, lr=1.0 if lr is None else float(lr),
                                          weight_decay=0.0 if weight_decay is None else float(weight_decay),
                                          val_fraction=0.1 if val_fraction is None else float(val_fraction),
                                          patience=2 if patience is None else int(patience),
                                          max_iter=int(max_iter), tol=5e-4 if tol is None else float(tol),
                                          progress=progress)
            for p in self.parameters():  # the fit's last gradients are of no use to the caller
                p.grad = None
            return history
        except BaseException:
            snapshot.restore()
            raise
        finally:
            self.train(was_training)
            if torch.get_num_threads() != caller_threads:
                torch.set_num_threads(caller_threads)

    @staticmethod
    def _split(values: dict[str, Tensor], n: int, gen: torch.Generator,
               val_fraction: float) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """Training and validation rows (``None`` when ``val_fraction`` leaves no validation row)."""
        n_val = int(n * val_fraction)
        if n_val < 1 or n - n_val < 1:
            return values, None
        perm = torch.randperm(n, generator=gen).to(next(iter(values.values())).device)
        val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        return ({k: v[train_idx] for k, v in values.items()}, {k: v[val_idx] for k, v in values.items()})

    def _fit_adam(self, values: dict[str, Tensor], n: int, gen: torch.Generator, *, epochs: int, lr: float,
                  batch_size: int, weight_decay: float, val_fraction: float, patience: int, tol: float,
                  progress: bool) -> list[float]:
        train, val = self._split(values, n, gen, val_fraction) if val_fraction > 0 else (values, None)
        n = int(next(iter(train.values())).shape[0])
        params = [p for p in self.parameters() if p.requires_grad]
        steps_per_epoch = math.ceil(n / batch_size)
        total = epochs * steps_per_epoch
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
        history: list[float] = []
        best, best_state, bad = math.inf, None, 0
        bar = tqdm(total=total, desc="fit scm", disable=not progress, leave=False)
        try:
            for epoch in range(epochs):
                perm = torch.randperm(n, generator=gen).to(self.device)
                running, seen = 0.0, 0
                for start in range(0, n, batch_size):
                    idx = perm[start:start + batch_size]
                    batch = {k: v[idx] for k, v in train.items()}
                    loss = -self._log_prob(batch).mean()
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}; lower lr "
                                                 f"(now {lr}) or check the data for extreme values")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 10.0)
                    opt.step()
                    sched.step()
                    running += float(loss.detach()) * idx.numel()
                    seen += idx.numel()
                    bar.update(1)
                history.append(running / seen)
                bar.set_postfix(nll=f"{history[-1]:.4f}")
                if val is not None:
                    with torch.no_grad():
                        v = float(-self._log_prob(val).mean())
                    if not math.isfinite(v):
                        raise FloatingPointError(f"non-finite validation loss {v} at epoch {epoch}; lower lr "
                                                 f"(now {lr}) or check the data for extreme values")
                    bad = 0 if v < best - tol else bad + 1
                    if v < best:
                        best, best_state = v, [p.detach().clone() for p in params]
                    if bad >= patience:
                        break
        finally:
            bar.close()
        if best_state is not None:
            with torch.no_grad():
                for p, s in zip(params, best_state):
                    p.copy_(s)
        return history

    def _fit_lbfgs(self, values: dict[str, Tensor], n: int, gen: torch.Generator, *, lr: float,
                   weight_decay: float, val_fraction: float, patience: int, max_iter: int, tol: float,
                   progress: bool) -> list[float]:
        train, val = self._split(values, n, gen, val_fraction)
        groups = _parameter_groups(self)
        fitted = {node for g in groups for node in g.nodes}

        def row_nll(nodes: list[str], rows: dict[str, Tensor]) -> Tensor:
            total = None
            for node in nodes:
                lp = self.mechanisms[node].log_prob(rows[node], {p: rows[p] for p in self._parents[node]})
                total = -lp if total is None else total - lp
            assert total is not None
            return total

        with torch.no_grad():
            rest = [v for v in self._order if v not in fitted]
            fixed = float(row_nll(rest, train).mean()) if rest else 0.0
            for g in groups:
                g.start(float(row_nll(g.nodes, train).mean()), None if val is None else row_nll(g.nodes, val))
        for g in groups:
            if not (math.isfinite(g.train_loss) and (g.best_val is None or bool(torch.isfinite(g.best_val).all()))):
                raise FloatingPointError(f"non-finite starting loss of node(s) {g.nodes}; check the data for "
                                         f"extreme values")
        history = [fixed + sum(g.train_loss for g in groups)]
        bar = tqdm(total=None, desc="fit scm (L-BFGS)", unit="round", disable=not progress, leave=False)
        try:
            while any(not g.done for g in groups):
                for g in groups:
                    if not g.done:
                        g.round(lambda nodes=g.nodes: row_nll(nodes, train).mean(),
                                None if val is None else (lambda nodes=g.nodes: row_nll(nodes, val)),
                                lr=lr, weight_decay=weight_decay, chunk=_LBFGS_CHUNK, patience=patience,
                                max_iter=max_iter, tol=tol)
                history.append(fixed + sum(g.train_loss for g in groups))
                bar.update(1)
                bar.set_postfix(nll=f"{history[-1]:.4f}")
        finally:
            bar.close()
        for g in groups:
            g.finish()
        with torch.no_grad():
            history.append(fixed + sum(float(row_nll(g.nodes, train).mean()) for g in groups))
        return history

    # ------------------------------------------------------------------------------ save/load
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save to a directory: ``scm.safetensors`` and ``config.json`` (graph + mechanisms, written last).

        ``path`` must be new, empty or an earlier saved SCM (anything else is refused with a ``ValueError``
        before anything is touched); it is replaced as a whole, crash-safely (:func:`dcfg_io.folders.save_dir`).
        A built-in mechanism whose settings differ from the SCM's (``hidden``, ``count_bins``, ``bound``) is
        saved with ``"custom": true``, so that loading can tell it from an edited config.

        Example:
            >>> import tempfile, torch
            >>> from scm import CausalGraph, SCM
            >>> scm = SCM(CausalGraph.from_dict({"nodes": {"x": {"kind": "real"}}, "edges": []}))
            >>> d = scm.save(tempfile.mkdtemp() + "/scm")
            >>> sorted(p.name for p in d.iterdir())
            ['config.json', 'scm.safetensors']
        """
        from scm.io import save_scm  # scm.io imports this module

        return save_scm(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], mechanisms: Mapping[str, Mechanism] | None = None,
             map_location: str | torch.device = "cpu") -> "SCM":
        """Load a directory written by :meth:`save`. Never unpickles.

        Mechanism classes are looked up by their registered ``module:qualname``; custom classes must
        be imported first, or passed (freshly constructed) through ``mechanisms``.

        Before any mechanism is built, every file must be a regular file inside ``path`` (no named pipe, device
        or symbolic link out of it), every key of ``config.json`` known, the settings within
        :data:`SCM_LIMITS` and equal to those of the built-in mechanisms, and each mechanism's weights in the
        safetensors header at least as large as its config implies. After an interrupted save the complete copy
        beside ``path`` is loaded (:func:`dcfg_io.folders.find_saved_dir`).

        Raises:
            ValueError: missing or special files, a foreign or newer format, an unknown key, an out-of-bounds or
                ignored setting, an unregistered mechanism, or weights whose names or shapes do not match the
                config (each naming the file, and the key or node).

        Example:
            >>> import tempfile, torch
            >>> from scm import CausalGraph, SCM
            >>> scm = SCM(CausalGraph.from_dict({"nodes": {"x": {"kind": "real"}}, "edges": []}))
            >>> d = scm.save(tempfile.mkdtemp() + "/scm")
            >>> SCM.load(d).graph == scm.graph
            True
        """
        from scm.io import load_scm  # scm.io imports this module

        return load_scm(cls, path, mechanisms, map_location)

    # ------------------------------------------------------------------------------- helpers
    @staticmethod
    def _check_particles(p: Any) -> int:
        if not is_integer(p, 1):
            raise ValueError(f"num_particles must be an integer >= 1, got {p!r}")
        return int(p)

    @staticmethod
    def _check_n(n: Any) -> int:
        if not is_integer(n, 1):
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        return int(n)

    def extra_repr(self) -> str:
        return f"nodes={self._order}"


class _ResolveCallables(Messenger):
    """Evaluate callable interventions at their own site, for the ``poutine.do`` outside it.

    It must sit inside ``poutine.do(..., data=fixed)`` (so it sees each site first). At the value
    site of a node with a callable ``f``, the site's value is the node's pre-intervention value
    ``x`` (computed from the noise and the already-intervened parents); it stores ``f(x)`` in the
    shared ``fixed`` dict, which ``poutine.do`` then applies as an ordinary intervention.
    """

    def __init__(self, shifts: Mapping[str, Callable], fixed: dict[str, Tensor],
                 check: Callable[[str, Any], Tensor]) -> None:
        super().__init__()
        self.shifts, self.fixed, self.check = shifts, fixed, check

    def _pyro_sample(self, msg: Any) -> None:
        name = msg["name"]
        if name in self.shifts and name not in self.fixed:
            try:
                result = self.shifts[name](msg["value"])
            except Exception as e:  # noqa: BLE001 - re-raised with the node's name
                raise ValueError(f"the do callable of node {name!r} failed on its (n,) tensor of pre-intervention "
                                 f"values: {type(e).__name__}: {e}") from e
            self.fixed[name] = self.check(name, result)


class _Snapshot:
    """Every parameter (with its gradient) and buffer of a module, and the Pyro param store, to put back on failure.

    :meth:`restore` puts back the very tensor objects the module held (a mechanism that replaced one gets the
    original again), with their values, and drops parameters or buffers added since.
    """

    def __init__(self, module: nn.Module) -> None:
        self._modules = []
        for mod in module.modules():
            params = {k: (t, None if t is None else t.detach().clone(),
                          None if t is None or t.grad is None else t.grad.detach().clone())
                      for k, t in mod._parameters.items()}
            buffers = {k: (t, None if t is None else t.detach().clone()) for k, t in mod._buffers.items()}
            self._modules.append((mod, params, buffers))
        store = pyro.get_param_store()
        self._store = {k: (v, v.detach().clone()) for k, v in store._params.items()}
        self._constraints = dict(store._constraints)

    @staticmethod
    def _put(obj: Tensor, value: Tensor) -> None:
        if obj.shape == value.shape and obj.dtype == value.dtype and obj.device == value.device:
            obj.copy_(value)
        else:
            obj.data = value

    @torch.no_grad()
    def restore(self) -> None:
        for mod, params, buffers in self._modules:
            for k in [k for k in mod._parameters if k not in params]:
                del mod._parameters[k]
            for k, (obj, value, grad) in params.items():
                mod._parameters[k] = obj
                if obj is not None:
                    self._put(obj, value)
                    obj.grad = grad
            for k in [k for k in mod._buffers if k not in buffers]:
                del mod._buffers[k]
            for k, (obj, value) in buffers.items():
                mod._buffers[k] = obj
                if obj is not None:
                    self._put(obj, value)
        store = pyro.get_param_store()
        for k in [k for k in store._params if k not in self._store]:
            del store[k]
        for k, (obj, value) in self._store.items():
            if store._params.get(k) is not obj:
                store._params[k] = obj
                store._param_to_name[obj] = k
            self._put(obj, value)
        store._constraints.clear()
        store._constraints.update(self._constraints)


class _NodeGroup:
    """Full-batch L-BFGS over the parameters of some nodes (a node alone, unless it shares parameters).

    Each :meth:`round` runs ``chunk`` L-BFGS iterations. The group is done when ``patience`` rounds in a row
    each improved its training NLL by less than ``tol`` nats per row, when L-BFGS meets its own tolerances,
    after ``max_iter`` iterations, or when its validation NLL has become significantly worse than its best
    (by more than ``tol`` and two paired standard errors): then it goes back to the weights of its best
    validation NLL, otherwise it keeps its last weights. A non-finite loss or weight sends it back to its last
    finite weights with a 10x smaller step, twice at most.
    """

    def __init__(self, nodes: list[str], params: list[nn.Parameter]) -> None:
        self.nodes, self.params = nodes, params
        self.opt: torch.optim.LBFGS | None = None
        self.iters, self.slow, self.retries, self.step_scale = 0, 0, 0, 1.0
        self.done, self.overfit = False, False
        self.train_loss = math.inf
        self.best_val: Tensor | None = None
        self.best_state: list[Tensor] = []
        self.good_state: list[Tensor] = []

    def _copy(self) -> list[Tensor]:
        return [p.detach().clone() for p in self.params]

    def _put(self, state: list[Tensor]) -> None:
        with torch.no_grad():
            for p, s in zip(self.params, state):
                p.copy_(s)

    def start(self, train_loss: float, val_rows: Tensor | None) -> None:
        self.train_loss, self.best_val = train_loss, val_rows
        self.best_state = self.good_state = self._copy()

    def finish(self) -> None:
        """Keep the last weights, or those of the best validation NLL when the fit stopped for over-fitting."""
        if self.overfit:
            self._put(self.best_state)

    def round(self, train_fn: Callable[[], Tensor], val_fn: Callable[[], Tensor] | None, *, lr: float,
              weight_decay: float, chunk: int, patience: int, max_iter: int, tol: float) -> None:
        if self.opt is None:
            self.opt = torch.optim.LBFGS(self.params, lr=lr * self.step_scale, max_iter=chunk, max_eval=4 * chunk,
                                         history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-7,
                                         tolerance_change=1e-9)
        opt = self.opt
        losses: list[float] = []

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=False)
            loss = train_fn()
            losses.append(float(loss.detach()))
            if weight_decay:
                loss = loss + 0.5 * weight_decay * sum((p * p).sum() for p in self.params)
            loss.backward()
            return loss

        state = opt.state[opt._params[0]]
        before, evals = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
        opt.step(closure)
        done_iters = int(state.get("n_iter", 0)) - before
        # fewer iterations than asked for and evaluations to spare: L-BFGS met its own tolerances
        converged = done_iters < chunk and int(state.get("func_evals", 0)) - evals < 4 * chunk
        finite = [v for v in losses if math.isfinite(v)]
        # the accepted point of each line search has the lowest loss evaluated so far (no extra pass)
        end = min(finite) if len(finite) == len(losses) else math.nan
        val = None
        if math.isfinite(end) and all(bool(torch.isfinite(p).all()) for p in self.params) and val_fn is not None:
            with torch.no_grad():
                val = val_fn()
        if not math.isfinite(end) or (val is not None and not bool(torch.isfinite(val).all())):
            self.retries += 1
            if self.retries > 2:
                raise FloatingPointError(f"non-finite loss of node(s) {self.nodes} after {self.iters} L-BFGS "
                                         f"iterations, also with a {1 / self.step_scale:g}x smaller step; lower lr "
                                         f"(now {lr}) or check the data for extreme values")
            self._put(self.good_state)
            self.step_scale *= 0.1
            self.opt = None
            return
        self.good_state = self._copy()
        self.iters += max(done_iters, 1)
        self.slow = self.slow + 1 if self.train_loss - end < tol else 0
        self.train_loss = end
        if val is not None and self.best_val is not None:
            diff = val - self.best_val
            worse = float(diff.mean())
            if worse < 0:
                self.best_val, self.best_state = val, self.good_state
            elif worse > max(tol, 2.0 * float(diff.std()) / math.sqrt(diff.numel())):
                self.overfit = True
        if self.overfit or self.slow >= patience or self.iters >= max_iter or converged:
            self.done = True


def _parameter_groups(scm: "SCM") -> list[_NodeGroup]:
    """One group per node with trainable parameters; nodes that share a parameter tensor are fitted together."""
    groups: list[tuple[list[str], list[nn.Parameter], set[int]]] = []
    for node in scm.nodes:
        params = [p for p in scm.mechanisms[node].parameters() if p.requires_grad]
        if not params:
            continue
        ids = {id(p) for p in params}
        shared = [g for g in groups if g[2] & ids]
        nodes, plist = [], []
        for g in shared:
            groups.remove(g)
            nodes += g[0]
            plist += g[1]
        seen = {id(p) for p in plist}
        plist += [p for p in params if id(p) not in seen]
        groups.append((nodes + [node], plist, seen | ids))
    return [_NodeGroup(nodes, params) for nodes, params, _ in groups]


def _check_mechanism_fits(name: str, mech: Mechanism, graph: CausalGraph, parents: list[str]) -> None:
    """A mechanism built for other parents, another support or another cardinality than the graph's is an error."""
    spec = graph.spec(name)
    own = getattr(mech, "spec", None)
    if isinstance(own, NodeSpec) and own != spec:
        raise ValueError(f"the mechanism of node {name!r} was built for {own.to_dict()}, but the graph declares "
                         f"{spec.to_dict()}; the graph and the mechanism disagree (an edited config.json?): rebuild "
                         f"the mechanism for this graph")
    if isinstance(mech, GumbelMaxMechanism) and spec.is_discrete and mech.cardinality != (spec.cardinality or 2):
        raise ValueError(f"the mechanism of node {name!r} has {mech.cardinality} classes, but the graph declares "
                         f"cardinality {spec.cardinality}; the graph and the mechanism disagree")
    built_for = getattr(mech, "parent_specs", None)
    if isinstance(built_for, Mapping):
        want = {p: graph.spec(p) for p in parents}
        if dict(built_for) != want:
            raise ValueError(f"the mechanism of node {name!r} was built for parents "
                             f"{ {p: s.to_dict() for p, s in built_for.items()} }, but the graph gives it "
                             f"{ {p: s.to_dict() for p, s in want.items()} }; the graph and the mechanism disagree "
                             f"(an edited config.json?): rebuild the mechanism for this graph")
