"""Save/load: config.json + safetensors, atomic writes, no unpickling, identical behaviour after loading.

    thickness --> intensity;  digit;  image (parents: all three)
"""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from scm_helpers import morpho_rows

from scm import SCM, AffineSigmoidMechanism, CausalGraph, GammaMechanism, GumbelMaxMechanism, LinearGaussianMechanism


class ParityLogits(GumbelMaxMechanism):
    """A custom discrete mechanism (registered by subclassing): logits favour the parity of a."""

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__(2)
        self.strength = float(strength)

    def get_config(self) -> dict:
        return {"strength": self.strength}

    def logits(self, parents, n):
        a = parents["a"]
        return torch.stack([torch.zeros_like(a), self.strength * torch.cos(torch.pi * a)], dim=-1)


@pytest.fixture
def trained(morpho_graph) -> SCM:
    scm = SCM(morpho_graph, hidden=(16, 16), count_bins=6, seed=3)
    rows, _ = morpho_rows(600, seed=0)
    scm.fit(rows, epochs=2, progress=False)
    return scm


def test_round_trip_reproduces_every_output(tmp_path, trained) -> None:
    d = trained.save(tmp_path / "scm")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "scm.safetensors"]  # no temporary files
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["graph"] == trained.graph.to_dict()
    assert cfg["scm"] == {"hidden": [16, 16], "count_bins": 6, "bound": 4.0, "seed": 3}
    assert cfg["mechanisms"]["intensity"]["type"] == "scm.mechanisms:FlowMechanism"
    loaded = SCM.load(d)
    assert loaded.graph == trained.graph and loaded.config == trained.config
    rows, _ = morpho_rows(100, seed=1)
    torch.testing.assert_close(loaded.log_prob(rows), trained.log_prob(rows), rtol=0, atol=0)
    a = trained.counterfactual(rows, do={"thickness": 3.0}, num_particles=2, seed=5)
    b = loaded.counterfactual(rows, do={"thickness": 3.0}, num_particles=2, seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(trained.sample(50, seed=1)["intensity"], loaded.sample(50, seed=1)["intensity"])


def test_save_overwrites_in_place(tmp_path, trained, morpho_graph) -> None:
    d = SCM(morpho_graph).save(tmp_path / "scm")
    trained.save(d)
    rows, _ = morpho_rows(20, seed=1)
    torch.testing.assert_close(SCM.load(d).log_prob(rows), trained.log_prob(rows), rtol=0, atol=0)


def test_loading_never_unpickles(tmp_path, trained, monkeypatch) -> None:
    d = trained.save(tmp_path / "scm")

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during SCM.load")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    SCM.load(d)


def test_known_and_custom_mechanisms_round_trip(tmp_path) -> None:
    g = CausalGraph.from_dict({
        "nodes": {"a": {"kind": "real"}, "t": {"kind": "positive"},
                  "i": {"kind": "interval", "low": 64, "high": 255}, "p": {"kind": "binary"}},
        "edges": [["a", "p"], ["t", "i"]]})
    scm = SCM(g, mechanisms={"a": LinearGaussianMechanism(bias=0.5, scale=2.0), "t": GammaMechanism(10.0, 5.0, 0.5),
                             "i": AffineSigmoidMechanism({"t": 2.0}, -5.0, 0.5, 64.0, 255.0),
                             "p": ParityLogits(strength=2.5)})
    loaded = SCM.load(scm.save(tmp_path / "s"))
    assert isinstance(loaded.mechanisms["p"], ParityLogits) and loaded.mechanisms["p"].strength == 2.5
    assert loaded.mechanisms["i"].get_config() == scm.mechanisms["i"].get_config()
    rows = scm.sample(200, seed=0)
    torch.testing.assert_close(loaded.log_prob(rows), scm.log_prob(rows))
    # Overriding a mechanism at load time.
    swapped = SCM.load(tmp_path / "s", mechanisms={"p": ParityLogits(strength=-1.0)})
    assert swapped.mechanisms["p"].strength == -1.0
    with pytest.raises(ValueError, match=r"mechanisms has node\(s\) \['zzz'\] that the saved SCM does not have"):
        SCM.load(tmp_path / "s", mechanisms={"zzz": ParityLogits()})
