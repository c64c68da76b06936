"""Graph falsification: the conditional independences a DAG implies, tested against data with dowhy.

:func:`falsify_graph` tests every local Markov condition of the attribute graph (each node independent of
its non-descendants given its parents) with one of dowhy's independence tests, corrects the p-values for
multiple testing, and returns a :class:`FalsificationReport` of :class:`IndependenceResult` rows;
optionally it also runs dowhy's permutation test of the graph.

Example:
    >>> import numpy as np
    >>> from scm import CausalGraph
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=300); b = a + rng.normal(size=300); c = b + rng.normal(size=300)
    >>> chain = CausalGraph.from_edges([("a", "b"), ("b", "c")], {v: {"kind": "real"} for v in "abc"})
    >>> report = falsify_graph(chain, {"a": a, "b": b, "c": c}, method="partial_correlation")
    >>> report.rejected, [str(t) for t in report.tests]
    (False, ['c ⊥ a | b'])
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import networkx as nx
import numpy as np
import pandas as pd

from dcfg_io.checks import is_integer
from scm.dowhy import (
    attribute_digraph,
    attribute_frame,
    check_graph,
    check_level,
    check_seed,
    seeded,
    strings_for_discrete,
)
from scm.graph import CausalGraph

__all__ = ["CI_TESTS", "CORRECTIONS", "FalsificationReport", "IndependenceResult", "falsify_graph"]

#: The independence tests of :func:`falsify_graph` (``method=``).
CI_TESTS: tuple[str, ...] = ("kernel", "approx_kernel", "regression", "gcm", "partial_correlation")
#: The multiple-testing corrections of :func:`falsify_graph` (``correction=``).
CORRECTIONS: tuple[str, ...] = ("holm", "bonferroni", "none")


# ================================================================================ result types
@dataclass(frozen=True)
class IndependenceResult:
    """One independence the graph implies, ``x ⊥ y | given``, and its test on the data.

    Attributes:
        x: a node.
        y: a non-descendant of ``x`` that is not a parent of ``x``.
        given: the parents of ``x`` (the local Markov condition), possibly empty.
        p_value: the test's p-value (null hypothesis: the independence holds).
        p_adjusted: ``p_value`` after the multiple-testing correction.
        rejected: ``p_adjusted <= significance_level``: the data contradict this independence.
    """

    x: str
    y: str
    given: tuple[str, ...]
    p_value: float
    p_adjusted: float
    rejected: bool

    def __str__(self) -> str:
        given = f" | {', '.join(self.given)}" if self.given else ""
        return f"{self.x} ⊥ {self.y}{given}"


@dataclass(frozen=True)
class FalsificationReport:
    """Tests of a DAG's implied conditional independences against data.

    Attributes:
        tests: one :class:`IndependenceResult` per implied independence (local Markov conditions,
            each unordered pair with the same conditioning set tested once).
        method: the independence test.
        significance_level: the level of each (corrected) test.
        correction: the multiple-testing correction (``holm``, ``bonferroni`` or ``none``).
        n_rows: rows the tests used.
        rejected: True when at least one implied independence is rejected: the data contradict the graph.
        summary: a one-paragraph verdict.
        falsified: dowhy's permutation-test verdict (None unless ``permutation_test=True``).
        falsifiable: whether dowhy's permutation test can tell this graph from random node permutations
            (None unless ``permutation_test=True``).
        evaluation: the ``dowhy.gcm.falsify.EvaluationResult`` (None unless ``permutation_test=True``).
    """

    tests: tuple[IndependenceResult, ...]
    method: str
    significance_level: float
    correction: str
    n_rows: int
    rejected: bool
    summary: str
    falsified: bool | None = None
    falsifiable: bool | None = None
    evaluation: Any = field(default=None, repr=False, compare=False)

    @property
    def violations(self) -> tuple[IndependenceResult, ...]:
        """The rejected independences."""
        return tuple(t for t in self.tests if t.rejected)

    def to_frame(self) -> pd.DataFrame:
        """One row per independence: ``x, y, given, p_value, p_adjusted, rejected``."""
        return pd.DataFrame([{"x": t.x, "y": t.y, "given": ", ".join(t.given), "p_value": t.p_value,
                              "p_adjusted": t.p_adjusted, "rejected": t.rejected} for t in self.tests],
                            columns=["x", "y", "given", "p_value", "p_adjusted", "rejected"])

    def __str__(self) -> str:
        return self.summary


# ================================================================================ tests
def _partial_correlation(X: np.ndarray, Y: np.ndarray, Z: np.ndarray | None = None) -> float:
    """Fisher partial-correlation test (dowhy.utils.cit.partial_corr) in the gcm test signature."""
    from dowhy.utils.cit import partial_corr

    cols = {"x": np.asarray(X, dtype=float).reshape(len(X)), "y": np.asarray(Y, dtype=float).reshape(len(Y))}
    z_names: list[str] = []
    if Z is not None and np.size(Z):
        Z = np.asarray(Z, dtype=float).reshape(len(X), -1)
        for j in range(Z.shape[1]):
            cols[f"z{j}"] = Z[:, j]
            z_names.append(f"z{j}")
    p = float(partial_corr(data=pd.DataFrame(cols), x="x", y="y", z=z_names)["p-val"])
    return 1.0 if math.isnan(p) else p  # NaN: a constant column, independent of anything


def _ci_test(method: str) -> Callable[..., float]:
    if method == "partial_correlation":
        return _partial_correlation
    from dowhy.gcm.independence_test import approx_kernel_based, generalised_cov_based, kernel_based, regression_based

    fns = {"kernel": kernel_based, "approx_kernel": approx_kernel_based, "regression": regression_based,
           "gcm": generalised_cov_based}
    fn = fns[method]
    if method in ("kernel", "approx_kernel"):  # one process: this project runs on 2 shared cores
        return lambda X, Y, Z=None: fn(X, Y, Z, bootstrap_n_jobs=1)
    return lambda X, Y, Z=None: fn(X, Y, Z, n_jobs=1) if method == "regression" else fn(X, Y, Z)


def _adjust(p: np.ndarray, correction: str) -> np.ndarray:
    m = len(p)
    if correction == "none" or m == 0:
        return p.copy()
    if correction == "bonferroni":
        return np.minimum(1.0, p * m)
    order = np.argsort(p, kind="stable")  # Holm step-down
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def falsify_graph(graph: CausalGraph, data: Any, *, method: str = "kernel", significance_level: float = 0.05,
                  correction: str = "holm", max_rows: int | None = 1000, permutation_test: bool = False,
                  n_permutations: int | None = None, seed: int = 0, progress: bool = False) -> FalsificationReport:
    """Test the conditional independences the DAG implies against data.

    The graph implies, for every node ``X``, the local Markov condition: ``X`` is independent of
    each non-descendant ``Y`` (that is not a parent) given its parents ``pa(X)``. These are the
    independences dowhy's graph falsification tests (``dowhy.gcm.falsify.validate_lmc``); we run
    them through it with dowhy's independence tests, one p-value per independence, correct for
    multiple testing, and reject the graph when any independence is rejected.

    ``permutation_test=True`` also runs dowhy's ``dowhy.gcm.falsify.falsify_graph``, which compares
    the number of violations with those of random node permutations of the graph. Its verdict needs
    a graph that is *falsifiable* (few permutations share its Markov equivalence class): a 3-node
    chain never is, because a third of its permutations are equivalent to it.

    Args:
        graph: the causal DAG (its image node, if any, is dropped).
        data: a dict node -> ``(N,)`` values or a DataFrame, one column per attribute node.
        method: the independence test: ``"kernel"`` (KCI, dowhy's default; nonparametric),
            ``"approx_kernel"`` (RCIT, faster), ``"regression"``, ``"gcm"`` (generalised covariance
            measure) or ``"partial_correlation"`` (Fisher-z; linear-Gaussian data, fastest).
            Categorical columns are passed to the kernel/regression tests as categories (strings);
            the partial-correlation test treats them as numbers.
        significance_level: level of each corrected test.
        correction: ``"holm"`` (default), ``"bonferroni"`` or ``"none"``.
        max_rows: use a random subset of at most this many rows (KCI costs ``O(n^3)``); None: all.
        permutation_test: also run dowhy's permutation test.
        n_permutations: permutations of that test (dowhy's default ``1 / significance_level``).
        seed: seed of the row subset and of dowhy's random draws; global RNG states are restored.
        progress: show dowhy's progress bar over permutations.

    Returns:
        A :class:`FalsificationReport`.

    Raises:
        TypeError: graph, data or seed of the wrong type.
        ValueError: unknown method or correction, a level outside (0, 1), ``max_rows < 10``, bad columns.

    Example:
        >>> import numpy as np
        >>> from scm import CausalGraph
        >>> specs = {v: {"kind": "real"} for v in "abc"}
        >>> rng = np.random.default_rng(0)
        >>> a = rng.normal(size=500); b = a + rng.normal(size=500); c = b + rng.normal(size=500)
        >>> chain = CausalGraph.from_edges([("a", "b"), ("b", "c")], specs)
        >>> fork = CausalGraph.from_edges([("a", "b"), ("a", "c")], specs)
        >>> data = {"a": a, "b": b, "c": c}
        >>> falsify_graph(chain, data, method="partial_correlation").rejected
        False
        >>> report = falsify_graph(fork, data, method="partial_correlation")
        >>> report.rejected, [str(t) for t in report.violations]
        (True, ['b ⊥ c | a'])
    """
    graph = check_graph(graph)
    if method not in CI_TESTS:
        raise ValueError(f"unknown independence test method {method!r}; allowed: {list(CI_TESTS)}")
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; allowed: {list(CORRECTIONS)}")
    significance_level = check_level(significance_level, "significance_level")
    if max_rows is not None and not is_integer(max_rows, 10):
        raise ValueError(f"max_rows must be an integer >= 10 or None (all rows), got {max_rows!r}")
    if n_permutations is not None and not is_integer(n_permutations, 1):
        raise ValueError(f"n_permutations must be an integer >= 1 or None, got {n_permutations!r}")
    seed = check_seed(seed)
    frame = attribute_frame(graph, data)
    if max_rows is not None and len(frame) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=int(max_rows), replace=False))
        frame = frame.iloc[rows].reset_index(drop=True)
    if method != "partial_correlation":  # dowhy's tests take categorical data as strings
        frame = strings_for_discrete(graph, frame)
    dag = nx.DiGraph(attribute_digraph(graph).edges())
    dag.add_nodes_from(graph.attribute_nodes())
    test = _ci_test(method)

    from dowhy.gcm import falsify as F

    with seeded(seed):
        lmc = F.validate_lmc(dag, frame, independence_test=test, conditional_independence_test=test,
                             significance_level=significance_level, include_unconditional=True, n_jobs=1)
        # One entry per unordered pair with the same conditioning set (dowhy tests each once).
        seen: dict[tuple[frozenset[str], tuple[str, ...]], tuple[str, str, tuple[str, ...], float]] = {}
        for (x, y), (p, _) in lmc[F.FalsifyConst.P_VALUES].items():
            given = tuple(n for n in graph.attribute_nodes() if n in set(dag.predecessors(x)))
            key = (frozenset((x, y)), given)
            if key not in seen:
                seen[key] = (x, y, given, float(p))
        p_raw = np.array([v[3] for v in seen.values()], dtype=float)
        p_adj = _adjust(p_raw, correction)
        tests = tuple(IndependenceResult(x, y, given, float(p), float(pa), bool(pa <= significance_level))
                      for (x, y, given, p), pa in zip(seen.values(), p_adj))
        evaluation = None
        if permutation_test:
            evaluation = F.falsify_graph(dag, frame, independence_test=test, conditional_independence_test=test,
                                         significance_level=significance_level, significance_ci=significance_level,
                                         n_permutations=n_permutations, show_progress_bar=bool(progress), n_jobs=1)
    rejected = any(t.rejected for t in tests)
    summary = _summary(tests, method, significance_level, correction, len(frame), evaluation)
    return FalsificationReport(tests, method, significance_level, correction, len(frame), rejected, summary,
                               None if evaluation is None else evaluation.falsified,
                               None if evaluation is None else evaluation.falsifiable, evaluation)


def _summary(tests: tuple[IndependenceResult, ...], method: str, alpha: float, correction: str, n_rows: int,
             evaluation: Any) -> str:
    if not tests:
        text = ("the graph implies no conditional independence between its attribute nodes (every pair is "
                "adjacent), so the data cannot contradict it by independence tests")
    else:
        bad = [t for t in tests if t.rejected]
        head = (f"{len(bad)} of {len(tests)} implied independences rejected ({method} test, {n_rows} rows, "
                f"alpha = {alpha:g}, {correction} correction)")
        if bad:
            listed = "; ".join(f"{t} (p = {t.p_value:.3g})" for t in bad)
            text = f"{head}: {listed}. The data contradict the graph."
        else:
            text = f"{head}. The data are consistent with the graph's independences."
    if evaluation is not None:
        if evaluation.falsifiable is None:
            text += " dowhy's permutation test could not be evaluated."
        elif not evaluation.falsifiable:
            text += (" dowhy's permutation test: the graph is not falsifiable (too many node permutations share "
                     "its Markov equivalence class).")
        else:
            text += f" dowhy's permutation test: {'falsified' if evaluation.falsified else 'not falsified'}."
    return text
