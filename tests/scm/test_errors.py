"""Every bad input of the issue raises a clear ValueError/TypeError naming node, value and range,
and leaves the model (and the caller's tensors) unchanged.

    thickness --> intensity --> image <-- digit      (thickness also --> image)
"""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from scm_helpers import morpho_rows

from scm import SCM, CategoricalMechanism, CausalGraph, LinearGaussianMechanism


@pytest.fixture
def scm(morpho_graph: CausalGraph) -> SCM:
    return SCM(morpho_graph)


@pytest.fixture
def obs() -> dict[str, torch.Tensor]:
    rows, _ = morpho_rows(6, seed=0)
    return rows


def snapshot(scm: SCM) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in scm.state_dict().items()}


def assert_unchanged(scm: SCM, before: dict[str, torch.Tensor]) -> None:
    after = scm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------ obs and do keys
def test_unknown_node_in_obs(scm, obs) -> None:
    with pytest.raises(ValueError, match=r"obs has unknown node\(s\) \['slant'\]; attribute nodes: "
                                         r"\['thickness', 'intensity', 'digit'\]"):
        scm.counterfactual({**obs, "slant": obs["thickness"]}, do={"thickness": 2.0})
    with pytest.raises(ValueError, match=r"unknown node\(s\) \['slant'\]"):
        scm.abduct({**obs, "slant": obs["thickness"]})


def test_unknown_node_in_do(scm, obs) -> None:
    with pytest.raises(ValueError, match=r"do has unknown node 'slant'; you can intervene on \['thickness', "):
        scm.counterfactual(obs, do={"slant": 1.0})
    with pytest.raises(ValueError, match=r"do has unknown node 'slant'"):
        scm.interventional_samples({"slant": 1.0}, 5)


def test_missing_parent_values_in_obs(scm, obs) -> None:
    del obs["thickness"]
    with pytest.raises(ValueError, match=r"obs is missing \['thickness'\]: node 'thickness' \(a parent of "
                                         r"\['intensity'\]\) has no value"):
        scm.counterfactual(obs, do={"digit": 1})
    with pytest.raises(ValueError, match=r"missing \['thickness'\]"):
        scm.abduct(obs)


def test_intervening_on_the_image_node(scm, obs) -> None:
    with pytest.raises(ValueError, match=r"cannot intervene on the image node 'image' through the SCM"):
        scm.counterfactual(obs, do={"image": torch.zeros(6, 1, 28, 28)})
    with pytest.raises(ValueError, match=r"cannot intervene on the image node 'image'"):
        scm.predict(scm.abduct(obs), do={"image": 0.0})


def test_image_in_obs_is_ignored(scm, obs) -> None:
    cf = scm.counterfactual({**obs, "image": torch.rand(6, 1, 28, 28)}, do={"thickness": 2.0}, seed=0)
    assert set(cf) == {"thickness", "intensity", "digit"}


# ------------------------------------------------------------------------------ values out of support
@pytest.mark.parametrize("do, match", [
    ({"thickness": -1.0}, r"node 'thickness': do value -1.0 at row 0 is outside the support of this positive node; "
                          r"allowed: a finite number > 0; pass values > 0"),
    ({"thickness": 0.0}, r"node 'thickness': do value 0.0 .* > 0"),
    ({"thickness": torch.tensor([1.0, 2.0, -3.0, 1.0, 1.0, 1.0])}, r"do value -3.0 at row 2 .*positive"),
    ({"intensity": 300.0}, r"node 'intensity': do value 300.0 at row 0 is outside the support of this interval "
                           r"node; allowed: a number in \[0.0, 255.0\]; clip values to \[0.0, 255.0\]"),
    ({"intensity": -0.5}, r"node 'intensity': do value -0.5"),
    ({"digit": 10}, r"node 'digit': do class 10 at row 0 is out of range; allowed: an integer class index in 0..9"),
    ({"digit": -1}, r"node 'digit': do class -1"),
    ({"digit": 2.5}, r"node 'digit': do value 2.5 at row 0 is not an integer class; allowed: an integer class "
                     r"index in 0..9"),
    ({"thickness": math.nan}, r"node 'thickness': do value nan at row 0 is not finite"),
    ({"thickness": math.inf}, r"node 'thickness': do value inf at row 0 is not finite"),
    ({"intensity": torch.tensor([1.0, math.nan, 1.0, 1.0, 1.0, 1.0])}, r"node 'intensity': do value nan at row 1"),
    ({"thickness": lambda t: t - 10.0}, r"node 'thickness': do value .* outside the support of this positive node"),
    ({"digit": lambda d: d + 0.5}, r"node 'digit': do value .* is not an integer class"),
    ({"thickness": "thick"}, r"node 'thickness': do value of type str is not supported; pass a number"),
])
def test_do_value_outside_the_support(scm, obs, do, match) -> None:
    before = snapshot(scm)
    kept = {k: v.clone() for k, v in obs.items()}
    err = TypeError if isinstance(next(iter(do.values())), str) else ValueError
    with pytest.raises(err, match=match):
        scm.counterfactual(obs, do=do)
    assert_unchanged(scm, before)
    assert all(torch.equal(obs[k], kept[k]) for k in obs)


@pytest.mark.parametrize("node, value, match", [
    ("thickness", -1.0, r"node 'thickness': obs value -1.0 at row 3 is outside the support"),
    ("intensity", 256.0, r"node 'intensity': obs value 256.0 at row 3"),
    ("digit", 11, r"node 'digit': obs class 11 at row 3 is out of range"),
    ("thickness", math.nan, r"node 'thickness': obs value nan at row 3 is not finite"),
])
def test_obs_value_outside_the_support(scm, obs, node, value, match) -> None:
    obs[node] = obs[node].clone()
    obs[node][3] = value
    with pytest.raises(ValueError, match=match):
        scm.abduct(obs)


def test_callable_that_fails_names_the_node(scm, obs) -> None:
    with pytest.raises(ValueError, match=r"the do callable of node 'thickness' failed"):
        scm.counterfactual(obs, do={"thickness": lambda t: t.undefined_method()})


# ------------------------------------------------------------------------------ batch sizes
def test_mismatched_batch_sizes(scm, obs) -> None:
    obs["intensity"] = obs["intensity"][:4]
    with pytest.raises(ValueError, match=r"obs has mismatched batch sizes \{'thickness': 6, 'intensity': 4, "
                                         r"'digit': 6\}"):
        scm.counterfactual(obs, do={"thickness": 2.0})


def test_do_tensor_with_the_wrong_length(scm, obs) -> None:
    with pytest.raises(ValueError, match=r"do value of node 'thickness' has 4 rows but the batch has 6; pass a "
                                         r"number or a tensor of shape \(6,\)"):
        scm.counterfactual(obs, do={"thickness": torch.ones(4)})
    with pytest.raises(ValueError, match=r"do values must have shape \(B,\) or a number, got shape \(6, 2\)"):
        scm.counterfactual(obs, do={"thickness": torch.ones(6, 2)})


def test_bad_noise_dicts(scm, obs) -> None:
    u = scm.abduct(obs)
    with pytest.raises(ValueError, match=r"noise is missing node\(s\) \['digit'\]"):
        scm.predict({k: v for k, v in u.items() if k != "digit"})
    with pytest.raises(ValueError, match=r"noise of node 'digit' has shape \(6,\); expected \(n, 10\)"):
        scm.predict({**u, "digit": torch.zeros(6)})
    with pytest.raises(ValueError, match=r"noise has mismatched batch sizes"):
        scm.predict({**u, "thickness": u["thickness"][:2]})


# ------------------------------------------------------------------------------ fit
def test_dataframe_missing_columns_during_fit(scm) -> None:
    rows, _ = morpho_rows(50, seed=0)
    df = pd.DataFrame({k: v.numpy() for k, v in rows.items() if k != "intensity"})
    before = snapshot(scm)
    with pytest.raises(ValueError, match=r"data is missing column\(s\) \['intensity'\]"):
        scm.fit(df, epochs=1, progress=False)
    assert_unchanged(scm, before)
    assert not bool(scm.mechanisms["intensity"].initialized)


def test_fit_rejects_bad_values_and_settings_before_touching_weights(scm) -> None:
    rows, _ = morpho_rows(50, seed=0)
    before = snapshot(scm)
    bad = {**rows, "thickness": rows["thickness"].clone()}
    bad["thickness"][7] = -2.0
    with pytest.raises(ValueError, match=r"node 'thickness': data value -2.0 at row 7"):
        scm.fit(bad, epochs=1, progress=False)
    for kwargs, match in (({"epochs": 0}, "epochs must be an integer >= 1"),
                          ({"batch_size": 0}, "batch_size must be an integer >= 1"),
                          ({"lr": -1.0}, "lr must be a finite number > 0")):
        with pytest.raises(ValueError, match=match):
            scm.fit(rows, progress=False, **kwargs)
    assert_unchanged(scm, before)


# ------------------------------------------------------------------------------ loading
def test_loading_a_directory_whose_config_does_not_match_the_weights(tmp_path, morpho_graph) -> None:
    SCM(morpho_graph, hidden=(16, 16)).save(tmp_path / "a")
    SCM(morpho_graph, hidden=(8,)).save(tmp_path / "b")
    (tmp_path / "a" / "scm.safetensors").replace(tmp_path / "mixed.safetensors")
    (tmp_path / "b" / "scm.safetensors").replace(tmp_path / "a" / "scm.safetensors")
    with pytest.raises(ValueError, match=r"scm.safetensors does not match .*config.json"):
        SCM.load(tmp_path / "a")


def test_loading_weights_of_another_graph(tmp_path, morpho_graph) -> None:
    SCM(morpho_graph).save(tmp_path / "a")
    other = CausalGraph.from_dict({"nodes": {"thickness": {"kind": "positive"}}, "edges": []})
    SCM(other).save(tmp_path / "b")
    (tmp_path / "b" / "scm.safetensors").replace(tmp_path / "a" / "scm.safetensors")
    with pytest.raises(ValueError, match=r"missing weights \['mechanisms.digit"):
        SCM.load(tmp_path / "a")


def test_loading_bad_directories(tmp_path, morpho_graph) -> None:
    with pytest.raises(ValueError, match=r"is not a saved SCM: config.json is missing"):
        SCM.load(tmp_path)
    d = SCM(morpho_graph).save(tmp_path / "s")
    cfg = json.loads((d / "config.json").read_text())
    cfg["mechanisms"]["digit"]["type"] = "not_imported.module:Mystery"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"mechanism class 'not_imported.module:Mystery' is not registered; "
                                         r"import the module 'not_imported.module'"):
        SCM.load(d)
    cfg["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"format_version 99, newer than this dcfg"):
        SCM.load(d)


@pytest.mark.parametrize("node, value", [
    ("digit", True), ("digit", False), ("digit", torch.tensor([True, False, True, False, True, False])),
    ("thickness", True),
])
def test_a_bool_do_value_is_refused_except_for_a_binary_node(scm, obs, node, value) -> None:
    """Before: do={"digit": True} was accepted silently (as class 1). Now: a bool (or a bool tensor) is refused
    for every node but a binary one, where True / False mean 1 / 0 (docs/saving.md)."""
    before = snapshot(scm)
    with pytest.raises(TypeError, match=rf"do\[{node!r}\]=.*not a bool \(a class index is an integer, e\.g\. 1\)"):
        scm.counterfactual(obs, do={node: value})
    assert_unchanged(scm, before)
    binary = CausalGraph.from_dict({"nodes": {"b": {"kind": "binary"}, "y": {"kind": "real"}},
                                    "edges": [["b", "y"]]})
    bscm = SCM(binary, hidden=(4,), seed=0)
    rows = {"b": torch.tensor([0, 1, 0]), "y": torch.tensor([0.5, -1.0, 2.0])}
    as_bool = bscm.counterfactual(rows, do={"b": True}, seed=0)
    assert torch.equal(as_bool["b"], torch.ones(3, dtype=torch.int64))
    assert torch.equal(as_bool["y"], bscm.counterfactual(rows, do={"b": 1}, seed=0)["y"])


def test_wrongly_typed_fields_of_a_saved_scm_name_the_file_and_key(tmp_path, morpho_graph) -> None:
    """Before: SCM format_version "abc" gave a bare `invalid literal for int()`; count_bins "eight" named the file
    but not the key. Now: one line naming the file, the key and what it must be."""
    d = SCM(morpho_graph, hidden=(4,), count_bins=2).save(tmp_path / "s")
    original = json.loads((d / "config.json").read_text())
    cases = [
        (lambda c: c.update(format_version="abc"), r"format_version='abc' must be an integer \(this dcfg writes 1\)"),
        (lambda c: c.update(format_version=True), r"format_version=True must be an integer"),
        (lambda c: c["scm"].update(count_bins="eight"), r"scm\.count_bins='eight' must be an integer in 2\.\.1024"),
        (lambda c: c["mechanisms"]["thickness"]["config"].update(count_bins="eight"),
         r"mechanisms\.thickness\.config\.count_bins='eight' must be an integer in 2\.\.1024"),
    ]
    for edit, match in cases:
        cfg = json.loads(json.dumps(original))
        edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=match) as info:
            SCM.load(d)
        msg = str(info.value)
        assert msg.startswith(f"{d / 'config.json'}: ") and "\n" not in msg and "invalid literal" not in msg, msg
    (d / "config.json").write_text(json.dumps(original))
    SCM.load(d)  # the unedited config loads


# ------------------------------------------------------------------------------ construction, types
def test_constructor_errors(morpho_graph) -> None:
    with pytest.raises(TypeError, match="graph must be a CausalGraph"):
        SCM({"nodes": {}})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"node 'image' is the image node"):
        SCM(morpho_graph, mechanisms={"image": LinearGaussianMechanism()})
    with pytest.raises(ValueError, match=r"mechanisms has unknown node 'slant'"):
        SCM(morpho_graph, mechanisms={"slant": LinearGaussianMechanism()})
    with pytest.raises(TypeError, match=r"mechanism of node 'thickness' must be a scm.Mechanism"):
        SCM(morpho_graph, mechanisms={"thickness": torch.nn.Linear(1, 1)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"node 'digit' is categorical and needs a discrete"):
        SCM(morpho_graph, mechanisms={"digit": LinearGaussianMechanism()})
    with pytest.raises(ValueError, match=r"node 'thickness' is positive and needs a continuous"):
        SCM(morpho_graph, mechanisms={"thickness": CategoricalMechanism(3)})
    with pytest.raises(ValueError, match=r"the equation of node 'intensity' uses \['digit'\], which are not its "
                                         r"parents \['thickness'\]"):
        SCM(morpho_graph, mechanisms={"intensity": LinearGaussianMechanism({"thickness": 1.0, "digit": 2.0})})


def test_type_errors(scm, obs) -> None:
    with pytest.raises(TypeError, match="obs must be a dict node"):
        scm.abduct([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="do must be a dict node"):
        scm.counterfactual(obs, do=[("thickness", 1.0)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an int, a torch.Generator or None"):
        scm.abduct(obs, seed="zero")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1, got 0"):
        scm.counterfactual(obs, do={"thickness": 1.0}, num_particles=0)
    with pytest.raises(ValueError, match=r"target 'image' is not an attribute node"):
        scm.average_causal_effect("image", {"thickness": 1.0}, {"thickness": 2.0}, n=10)
