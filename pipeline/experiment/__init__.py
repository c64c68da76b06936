"""DAG-defined experiments: a TOML spec -> data, a trained (or loaded) pipeline, evaluation, effects, a report.

* :mod:`~pipeline.experiment.spec`: the spec's tables and their validation (:func:`load_spec`, :class:`SpecError`);
* :mod:`~pipeline.experiment.data`: synthetic Morpho digits from the spec's equations (with ground truth), or a
  CSV + image folder;
* :mod:`~pipeline.experiment.run`: the resumable stages (:func:`run_experiment`);
* :mod:`~pipeline.experiment.report`: ``report.md``, ``metrics.json``, ``groups.json`` and the figures.

The command line is ``dcfg experiment validate SPEC.toml`` and ``dcfg experiment run SPEC.toml [--out DIR]
[--quick]``.

Example:
    >>> from pipeline.experiment import load_spec, run_experiment            # doctest: +SKIP
    >>> spec = load_spec("examples/morphomnist.toml", quick=True)            # doctest: +SKIP
    >>> res = run_experiment(spec, "experiments/morpho-quick")               # doctest: +SKIP
    >>> print((res.out / "report.md").read_text())                           # doctest: +SKIP
"""
from pipeline.experiment.spec import ExperimentSpec, SpecError, load_spec, parse_spec

__all__ = ["ExperimentSpec", "SpecError", "load_spec", "parse_spec", "run_experiment", "ExperimentResult",
           "summarize_spec"]


def __getattr__(name: str):
    if name in ("run_experiment", "ExperimentResult"):
        from pipeline.experiment import run

        return getattr(run, name)
    raise AttributeError(f"module 'pipeline.experiment' has no attribute {name!r}")


def summarize_spec(spec: ExperimentSpec) -> str:
    """One line describing a valid spec (what ``dcfg experiment validate`` prints).

    Example:
        >>> spec = parse_spec({"graph": {"nodes": {"t": {"kind": "positive"},
        ...                                        "image": {"kind": "image", "shape": [1, 28, 28]}},
        ...                              "edges": [["t", "image"]]},
        ...                    "equations": {"t": {"form": "gamma", "concentration": 10, "rate": 5, "shift": 0.5}},
        ...                    "render": {"t": "thickness"}, "data": {"source": "morpho"}}, name="demo")
        >>> summarize_spec(spec)
        "demo: 2 nodes, 1 edges, image parents ['t']; data morpho; pipeline train (2000 steps);
        interventions do(t); 0 effect(s)"
    """
    g = spec.graph
    model = spec.model.pipeline + (f" ({spec.training.steps} steps)" if spec.model.pipeline == "train" else "")
    ivs = ", ".join(f"do({iv.node})" for iv in spec.interventions)
    return (f"{spec.name}: {len(g.nodes)} nodes, {len(g.to_dict()['edges'])} edges, image parents "
            f"{g.image_parents()}; data {spec.data.source}; pipeline {model}; interventions {ivs}; "
            f"{len(spec.effects)} effect(s)")
