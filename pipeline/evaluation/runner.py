"""The entry points of ``dcfg evaluate``: :func:`load_evaluation_data` (the test split and its oracles) and
:func:`run_evaluation` (load, :func:`~pipeline.evaluation.run.evaluate`, write the outputs).

The evaluation itself lives in :mod:`pipeline.evaluation.config` (settings and their validation),
:mod:`pipeline.evaluation.plan` (decoder queries and the cost plan), :mod:`pipeline.evaluation.run` (the run) and
:mod:`pipeline.evaluation.headline` (targets and summaries); their public names are importable from here too.

Example:
    >>> from pipeline.evaluation.runner import EvaluationConfig, estimate_nfe, parse_method
    >>> parse_method("dcfg+apg"), EvaluationConfig(n=50).n
    (('dcfg', 'apg', False), 50)
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from pipeline.evaluation.config import (
    COMPILE_AUTO_NFE,
    METHOD_VARIANTS,
    METHODS,
    EvaluationConfig,
    parse_method,
    resolve_config,
)
from pipeline.evaluation.headline import (
    BENCHMARK_TARGETS,
    COLOUR_TARGETS,
    TARGETS,
    headline_rows,
    primary_metric,
    recommend_scales,
    targets_of,
    tradeoff_ratios,
)
from pipeline.evaluation.oracles import Oracles
from pipeline.evaluation.plan import (
    estimate_nfe,
    groups_for,
    power_of,
    predictor_of,
    query_for,
    query_key,
    refine_steps_of,
)
from pipeline.evaluation.run import EvaluationResult, RunData, evaluate, prepare_rows, total_spurious

__all__ = ["EvaluationConfig", "EvaluationResult", "EvaluationData", "METHODS", "METHOD_VARIANTS", "BENCHMARK_TARGETS",
           "COLOUR_TARGETS", "TARGETS", "COMPILE_AUTO_NFE", "MAX_EVALUATION_ROWS", "evaluate", "run_evaluation",
           "load_evaluation_data", "estimate_nfe", "resolve_config", "parse_method", "groups_for", "query_for",
           "query_key", "refine_steps_of", "predictor_of", "power_of", "headline_rows", "primary_metric",
           "recommend_scales", "targets_of", "tradeoff_ratios", "RunData", "prepare_rows", "total_spurious"]

#: at most this many test rows are read for an evaluation of data that is not a Morpho benchmark: the candidates
#: of the main table and the real images of the realism reference (a seeded subsample of larger splits)
MAX_EVALUATION_ROWS = 2000


@dataclass
class EvaluationData:
    """What :func:`load_evaluation_data` returns: the test images and attributes, and their oracles."""

    images: Tensor
    parents: dict[str, Tensor]
    rows: Tensor
    oracles: Oracles
    spec: dict[str, Any]
    total_rows: int


def load_evaluation_data(pipe: Any, data: str | None = None, *, classifier: Any = None, data_seed: int = 0,
                         root: str | os.PathLike | None = None, n_jobs: int | None = None,
                         max_sources: int | None = None, max_rows: int = MAX_EVALUATION_ROWS,
                         progress: bool = True) -> EvaluationData:
    """The test split a pipeline is scored on, and the oracles that score it.

    Args:
        pipe: the pipeline; its ``oracles`` decide how counterfactuals are measured
            (:meth:`~pipeline.core.CounterfactualPipeline.make_oracles`).
        data: a ``--data`` spec of the test split (``csv:FILE,split=test``, ``mnist:DIR``...). ``None`` or
            ``"morpho-test"``: the Morpho-MNIST benchmark's 1,000 test digits (``MorphoMNIST("test",
            seed=data_seed)``, with ground truth); ``"morpho-colour-test"``: colour Morpho-MNIST's.
        classifier: a digit classifier replacing the pipeline's (Morpho oracles).
        data_seed, root, n_jobs, max_sources: the Morpho benchmarks' test digits (see :func:`run_evaluation`).
        max_rows: other data: at most this many rows are read (a seeded subsample of a larger split).
        progress: tqdm bars.
    """
    from pipeline.datasets import MorphoColour, MorphoMNIST
    from pipeline.evaluation.oracles import ColourOracles, MorphoOracles

    kind = getattr(pipe, "oracles", None) or ("morpho" if pipe.classifier is not None or classifier is not None
                                              else None)
    if data is None:
        if kind == "morpho":
            data = "morpho-test"
        elif kind == "morpho-colour":
            data = "morpho-colour-test"
        elif (sorted(pipe.graph.image_parents()) == ["digit", "intensity", "thickness"]
              and tuple(pipe.graph.spec(pipe.graph.image_node).shape) == (1, 28, 28)):
            data = "morpho-test"  # a Morpho-MNIST pipeline saved without its classifier: asks for --classifier
        else:
            raise ValueError("this pipeline was trained on your own data: give its test split with --data SPEC "
                             "(e.g. csv:faces.csv,split=test)")
    spec_text = data.strip()
    if spec_text in ("morpho-test", "morpho-colour-test"):
        colour = spec_text == "morpho-colour-test"
        expected = ("colour Morpho-MNIST", ["background", "digit", "hue", "intensity", "slant", "thickness"],
                    (3, 28, 28)) if colour else ("Morpho-MNIST", ["digit", "intensity", "thickness"], (1, 28, 28))
        image = pipe.graph.image_node
        if (sorted(pipe.graph.image_parents()) != expected[1]
                or tuple(pipe.graph.spec(image).shape) != expected[2]):
            raise ValueError(f"--data {spec_text} scores {expected[0]} pipelines ({', '.join(expected[1])} -> "
                             f"{'x'.join(map(str, expected[2]))} image); this one has parents "
                             f"{pipe.graph.image_parents()} and image shape {tuple(pipe.graph.spec(image).shape)}: "
                             f"give its own test data with --data SPEC")
        classifier = classifier if classifier is not None else pipe.classifier
        if classifier is None:
            raise ValueError("the pipeline has no digit classifier (the benchmark's oracle): pass --classifier DIR "
                             "(a DigitClassifier saved with save_pretrained) or a pipeline saved with one")
        cls = MorphoColour if colour else MorphoMNIST
        test = cls("test", root=root, samples_per_digit=1, seed=data_seed, attribute_sampling="scm",
                   n_jobs=n_jobs, progress=progress, max_sources=max_sources)
        oracles = (ColourOracles if colour else MorphoOracles)(test, classifier.eval(), n_jobs=n_jobs)
        spec = {"spec": spec_text, "data_seed": data_seed, "root": None if root is None else str(root),
                "max_sources": max_sources}
        return EvaluationData(test.images, dict(test.attributes), torch.arange(len(test)), oracles, spec,
                              len(test))

    from pipeline.generate import open_dataset

    rows = open_dataset(spec_text, graph=pipe.graph)
    n_all = len(rows)
    nodes = list(pipe.graph.attribute_nodes())
    factual = {n: rows.factual(n) for n in nodes}
    if n_all > max_rows:
        pick = torch.randperm(n_all, generator=torch.Generator().manual_seed(data_seed))[:max_rows].sort().values
    else:
        pick = torch.arange(n_all)
    images, parents = [], {n: [] for n in nodes}
    for i in range(0, len(pick), 256):
        idx = pick[i:i + 256].tolist()
        items = [rows[j] for j in idx]
        images.append(torch.stack([it[0] for it in items]).float())
        for n in nodes:
            parents[n].append(torch.stack([torch.as_tensor(it[1][n]) for it in items]))
    x = torch.cat(images)
    pa = {n: torch.cat(v) for n, v in parents.items()}
    marginals = {n: (factual[n] if factual[n] is not None else pa[n]) for n in nodes}
    oracles = pipe.make_oracles(marginals=marginals, n_jobs=n_jobs)
    spec = {**rows.spec, "rows_read": len(pick), "data_seed": data_seed}
    return EvaluationData(x, pa, pick.long(), oracles, spec, n_all)


def run_evaluation(pipe: Any, out: str | os.PathLike, config: EvaluationConfig | None = None, *,
                   data: str | None = None, ablation: Any = None, classifier: Any = None, data_seed: int = 0,
                   root: str | os.PathLike | None = None, n_jobs: int | None = None, max_sources: int | None = None,
                   max_rows: int = MAX_EVALUATION_ROWS, command: str | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> EvaluationResult:
    """Evaluate a pipeline on its test split and write ``out``.

    Writes ``metrics.json``, ``report.md``, ``tradeoff.png`` and ``grid.png`` into a temporary folder
    beside ``out`` and renames it into place at the end: a failed run leaves nothing (an earlier
    evaluation at ``out`` stays as it was until the new one is complete).

    Args:
        pipe: the pipeline under test.
        out: output folder; it must not exist, or must be an earlier evaluation's output.
        config: settings (:class:`EvaluationConfig`).
        data: the test split (:func:`load_evaluation_data`): a ``--data`` spec; ``None`` is the benchmark's
            test digits for a Morpho pipeline.
        ablation: optional second pipeline (e.g. trained with whole-condition dropout only).
        classifier: the oracle digit classifier of the Morpho benchmarks (default ``pipe.classifier``).
        data_seed: seed of the test digits' attributes (``MorphoMNIST("test", seed=...)``), or of the
            subsample of a split larger than ``max_rows``.
        root: a local MNIST/Morpho-MNIST folder (default: the bundled digits).
        n_jobs: morphometry and rendering processes.
        max_sources: use only this many test source digits (class-balanced; for quick tests).
        max_rows: the most rows read from other data.
        command: the command line, recorded in the report.
        progress: tqdm bars.
        log: one-line progress messages.

    Returns:
        The :class:`EvaluationResult` that was written.

    Example:
        >>> pipe = CounterfactualPipeline.pretrained()                          # doctest: +SKIP
        >>> run_evaluation(pipe, "eval-quick", EvaluationConfig(n=50))          # doctest: +SKIP
    """
    from pipeline.evaluation.report import check_out_dir, write_outputs

    out = check_out_dir(out)
    t0 = time.perf_counter()
    ev = load_evaluation_data(pipe, data, classifier=classifier, data_seed=data_seed, root=root, n_jobs=n_jobs,
                              max_sources=max_sources, max_rows=max_rows, progress=progress)
    result = evaluate(pipe, ev.images, ev.parents, ev.oracles, config, rows=ev.rows,
                      reference_images=ev.images, ablation=ablation, progress=progress, log=log)
    result.metrics["settings"].update(data_seed=data_seed, root=None if root is None else str(root),
                                      max_sources=max_sources, test_rows=ev.total_rows, command=command)
    if ev.spec["spec"] not in ("morpho-test",):
        result.metrics["settings"]["data"] = ev.spec
    result.metrics["timing"]["load_s"] = time.perf_counter() - t0 - result.metrics["timing"]["wall_s"]
    write_outputs(result, out)
    return result


#: Former private names of this module -> their public names (in the modules above), kept working with a warning.
_RENAMED = {"_groups_for": "groups_for", "_query": "query_for", "_query_key": "query_key",
            "_refine_steps": "refine_steps_of", "_primary": "primary_metric", "_recommend": "recommend_scales",
            "_tradeoff": "tradeoff_ratios", "_headline": "headline_rows", "_targets_of": "targets_of",
            "_Data": "RunData", "_prepare": "prepare_rows", "_total_spurious": "total_spurious"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(f"pipeline.evaluation.runner.{name} is deprecated: use {new} (importable from "
                      f"pipeline.evaluation.runner)", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module 'pipeline.evaluation.runner' has no attribute {name!r}")
