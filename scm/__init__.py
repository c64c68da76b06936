"""Attribute-level structural causal models: a typed causal DAG and a Pyro SCM over it.

Example:
    >>> import torch
    >>> from scm import CausalGraph, SCM
    >>> g = CausalGraph.from_dict({"nodes": {"t": {"kind": "positive"},
    ...                                      "i": {"kind": "interval", "low": 0, "high": 255}},
    ...                            "edges": [["t", "i"]]})
    >>> scm = SCM(g)
    >>> obs = {"t": torch.tensor([1.0, 2.0]), "i": torch.tensor([100.0, 150.0])}
    >>> scm.counterfactual(obs, do={"t": 3.0})["t"]
    tensor([3., 3.])
"""
from scm.dowhy import gcm_frame, graph_from_dowhy, graph_from_gcm, to_dowhy, to_gcm
from scm.effects import EffectEstimate, Refutation, estimate_effect
from scm.falsify import FalsificationReport, IndependenceResult, falsify_graph
from scm.graph import CausalGraph, NodeSpec
from scm.mechanisms import (
                            AffineSigmoidMechanism,
                            CategoricalMechanism,
                            ConditionalAffine,
                            FlowMechanism,
                            GammaMechanism,
                            GumbelMaxMechanism,
                            LinearGaussianMechanism,
                            Mechanism,
)
from scm.model import SCM, DoValue, SCMConfig, noise_site

__all__ = [
    "AffineSigmoidMechanism",
    "CausalGraph",
    "CategoricalMechanism",
    "ConditionalAffine",
    "DoValue",
    "EffectEstimate",
    "FalsificationReport",
    "FlowMechanism",
    "GammaMechanism",
    "GumbelMaxMechanism",
    "IndependenceResult",
    "LinearGaussianMechanism",
    "Mechanism",
    "NodeSpec",
    "Refutation",
    "SCM",
    "SCMConfig",
    "estimate_effect",
    "falsify_graph",
    "gcm_frame",
    "graph_from_dowhy",
    "graph_from_gcm",
    "noise_site",
    "to_dowhy",
    "to_gcm",
]
