"""``dcfg app``: a local page to ask a pipeline counterfactual questions (Gradio, an optional extra).

The page is two layers:

* :class:`CounterfactualApp` holds everything that is not the page: the pipeline, its test images, the
  oracles that measure images, one :class:`Control` per attribute (slider or choice), and :meth:`query`,
  which answers one question as factual | none | CFG | DCFG. It needs no Gradio and is what the tests drive
  from Python.
* :func:`build_page` lays the page out with Gradio Blocks, and :func:`serve` launches it: on 127.0.0.1 unless
  told otherwise, with an upload size limit, and one query at a time (a second tab waits in the queue).

A bad upload (not an image, the wrong size), a value outside a node's support or any other bad input is
answered on the page with the library's own message (``gr.Error``); the server keeps serving.

Install the extra with ``pip install -e '.[app]'``.
"""

import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .groups import resolve_guidance

#: the one line a user without the extra sees
INSTALL_HINT = "dcfg app needs Gradio, an optional extra: pip install 'dcfg[app]' (in a clone: pip install -e '.[app]')"
#: guidance methods, in the order the page computes them (DCFG first: the answer the user asked for)
METHODS = ("dcfg", "cfg", "none")
TITLES = {"factual": "factual", "none": "no guidance", "cfg": "CFG", "dcfg": "DCFG"}
#: the largest upload the page accepts
MAX_UPLOAD_BYTES = 5 * 2 ** 20
#: the most DDIM steps a query may ask for
MAX_STEPS = 1000
#: test images offered by default
DEFAULT_EXAMPLES = 12
#: displayed image side, pixels (nearest-neighbour upscaling of small images)
DISPLAY_SIDE = 196
#: the page's own styling (the captions' tables)
CSS = """
.dcfg-caption {width: 100%; table-layout: fixed; font-size: 12px; border-collapse: collapse}
.dcfg-caption th, .dcfg-caption td {padding: 2px 4px; overflow-wrap: anywhere}
.dcfg-groups {font-size: 12px}
"""


def require_gradio() -> Any:
    """Import Gradio, or raise ``ImportError`` with the one-line install hint."""
    try:
        import gradio
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return gradio


@dataclass(frozen=True)
class Control:
    """The page's control of one attribute node.

    Attributes:
        name: the node.
        kind: the node's kind (``real``, ``positive``, ``interval``, ``binary``, ``categorical``).
        low, high: the slider's range (continuous nodes): the node's support where it is bounded, else the
            SCM's 0.1-99.9% quantiles widened by a quarter of their span.
        step: the slider's step.
        choices: the classes of a discrete node.
        default: the prior median (continuous) or the most frequent class (discrete).
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[int, ...] = ()
    default: float = 0.0

    @property
    def discrete(self) -> bool:
        return bool(self.choices)


def _control(name: str, spec: Any, prior: Tensor) -> Control:
    values = prior.double().reshape(-1)
    if spec.is_discrete:
        k = int(spec.cardinality or 2)
        mode = int(torch.bincount(values.long().clamp(0, k - 1), minlength=k).argmax())
        return Control(name, spec.kind, choices=tuple(range(k)), default=float(mode))
    lo, hi = (float(torch.quantile(values, q)) for q in (0.001, 0.999))
    pad = 0.25 * max(hi - lo, 1e-6)
    lo, hi = lo - pad, hi + pad
    if spec.kind == "positive":
        lo = max(lo, 0.0)
    if spec.kind == "interval":
        lo, hi = float(spec.low), float(spec.high)
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / 200.0)) if span > 0 else 0.01
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    if spec.kind == "interval":
        lo, hi = float(spec.low), float(spec.high)
    return Control(name, spec.kind, low=round(lo, 10), high=round(hi, 10), step=step,
                   default=float(values.median()))


@dataclass
class Column:
    """One image of the answer: the image, its measured attributes, and the attributes it was decoded under."""

    method: str
    image: Tensor                       # (C, H, W) in [-1, 1]
    measured: dict[str, float]
    attributes: dict[str, float]        # factual (for the factual column) or the SCM's counterfactual
    groups: list[list[str]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Answer:
    """A whole answer: the query as given and one :class:`Column` per image (factual first)."""

    query: dict[str, Any]
    columns: list[Column]
    intervened: list[str]
    descendants: list[str]

    def to_json(self) -> dict[str, Any]:
        """The query and the result as plain JSON (no images)."""
        return {"query": self.query,
                "intervened": self.intervened,
                "descendants": self.descendants,
                "results": [{"method": c.method, "measured": c.measured, "attributes": c.attributes,
                             "groups": c.groups, "weights": c.weights, "seconds": round(c.seconds, 3)}
                            for c in self.columns]}


class CounterfactualApp:
    """What the page shows and computes, for one pipeline (no Gradio needed).

    Args:
        pipe: a :class:`~pipeline.core.CounterfactualPipeline`.
        examples: test images ``(N, C, H, W)`` in [-1, 1] and their attributes (node -> ``(N,)``), or ``None``
            for uploads only (:func:`load_examples` reads them).
        title: the page's title.
        prior_samples: SCM draws used for the slider ranges and the defaults of attributes no oracle measures.
    """

    def __init__(self, pipe: Any, examples: tuple[Tensor, Mapping[str, Tensor]] | None = None, *,
                 title: str = "dcfg", prior_samples: int = 4000) -> None:
        self.pipe = pipe
        self.graph = pipe.graph
        self.title = title
        self.image_shape = tuple(self.graph.spec(self.graph.image_node).shape)
        self.nodes = list(self.graph.attribute_nodes())
        self.image_parents = list(self.graph.image_parents())
        with torch.no_grad():
            prior = pipe.scm.sample(prior_samples, seed=0)
        self.controls = {n: _control(n, self.graph.spec(n), prior[n].cpu()) for n in self.nodes}
        if examples is not None:
            images, parents = examples
            self.example_images = torch.as_tensor(images).float()
            self.example_parents = {n: torch.as_tensor(parents[n]) for n in self.nodes if n in parents}
        else:
            self.example_images, self.example_parents = None, {}
        try:
            self.oracles = pipe.make_oracles(marginals={n: prior[n].cpu() for n in self.image_parents})
        except ValueError:
            self.oracles = None  # nothing measures images: the page says so
        self._dag_png: bytes | None = None

    # ------------------------------------------------------------------ inputs
    @property
    def n_examples(self) -> int:
        return 0 if self.example_images is None else int(self.example_images.shape[0])

    def example(self, index: int) -> tuple[Tensor, dict[str, float]]:
        """Test image ``index`` (1, C, H, W) and its attributes (the data's own values)."""
        if not 0 <= int(index) < self.n_examples:
            raise ValueError(f"test image {index!r} does not exist: this pipeline offers {self.n_examples}")
        i = int(index)
        x = self.example_images[i:i + 1]
        values = {n: float(v[i]) for n, v in self.example_parents.items()}
        measured = self.measure(x)
        return x, self._complete({**measured, **values})

    def read_upload(self, path: str | os.PathLike) -> tuple[Tensor, dict[str, float]]:
        """An uploaded PNG/JPEG (1, C, H, W) and its attributes as the oracles measure them.

        Raises:
            ValueError: the file is too large, not an image, or of the wrong size (the library's message).
        """
        from .images import read_image

        size = Path(path).stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise ValueError(f"the upload is {size / 2 ** 20:.1f} MB; the page accepts at most "
                             f"{MAX_UPLOAD_BYTES / 2 ** 20:.0f} MB")
        x = read_image(path, channels=self.image_shape[0], size=self.image_shape[1:])
        return x, self._complete(self.measure(x))

    def measure(self, images: Tensor) -> dict[str, float]:
        """The oracles' measurement of one image (``{}`` when the pipeline has no oracles)."""
        if self.oracles is None:
            return {}
        out = self.oracles.measure(images)
        return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in out.items()}

    def _complete(self, values: Mapping[str, float]) -> dict[str, float]:
        """Every attribute node: the given values snapped to the node's support, defaults for the rest."""
        out = {}
        for n in self.nodes:
            c = self.controls[n]
            v = float(values.get(n, c.default))
            if c.discrete:
                v = float(min(max(round(v), c.choices[0]), c.choices[-1]))
            elif c.kind == "interval":
                v = min(max(v, c.low), c.high)
            elif c.kind == "positive":
                v = max(v, 1e-6)
            out[n] = v
        return out

    def dag_png(self) -> bytes:
        """The DAG, drawn by :meth:`scm.graph.CausalGraph.draw` (cached)."""
        if self._dag_png is None:
            with tempfile.TemporaryDirectory() as tmp:
                self._dag_png = self.graph.draw(Path(tmp) / "dag.png").read_bytes()
        return self._dag_png

    def dag_array(self) -> np.ndarray:
        """The DAG drawing as an RGB array."""
        from PIL import Image

        with Image.open(io.BytesIO(self.dag_png())) as im:
            return np.asarray(im.convert("RGB"))

    # ------------------------------------------------------------------ the query
    def check_query(self, factual: Mapping[str, Any], do: Mapping[str, Any], scale: Any, steps: Any,
                    methods: Sequence[str]) -> tuple[dict[str, float], dict[str, float], float | None, int]:
        """Validate a query as sent by the page (numbers may arrive as strings or floats)."""
        def number(name: str, value: Any, what: str) -> float:
            if isinstance(value, bool) or value is None:
                raise ValueError(f"{what} {name}={value!r} must be a number")
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{what} {name}={value!r} must be a number") from None
            if not math.isfinite(v):
                raise ValueError(f"{what} {name}={value!r} must be a finite number")
            return v

        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"guidance {list(methods)!r}: choose one or more of {list(METHODS)}")
        missing = [n for n in self.nodes if n not in factual]
        if missing:
            raise ValueError(f"the factual attributes lack {missing}")
        fact = {n: number(n, factual[n], "factual") for n in self.nodes}
        for n, v in fact.items():
            self._check_value(n, v, "factual")
        if not do:
            raise ValueError("choose at least one attribute to intervene on (tick do(...) beside its control)")
        act = {}
        for n, v in do.items():
            if n not in self.controls:
                raise ValueError(f"do names unknown node {n!r}; the attribute nodes are {self.nodes}")
            act[n] = number(n, v, "do")
            self._check_value(n, act[n], "do")
        s = None if scale in (None, "", 0, 0.0) else number("scale", scale, "guidance")
        if s is not None and s <= 0:
            raise ValueError(f"guidance scale={scale!r} must be positive (0 or empty: the pipeline's default)")
        st = number("steps", steps, "DDIM")
        if st != int(st) or not 1 <= st <= MAX_STEPS:
            raise ValueError(f"DDIM steps={steps!r} must be an integer in [1, {MAX_STEPS}]")
        return fact, act, s, int(st)

    def _check_value(self, name: str, value: float, what: str) -> None:
        spec = self.graph.spec(name)
        if spec.is_discrete:
            k = int(spec.cardinality or 2)
            if value != int(value) or not 0 <= value < k:
                raise ValueError(f"{what} {name}={value:g} must be one of the classes 0..{k - 1}")
        elif spec.kind == "interval" and not spec.low <= value <= spec.high:
            raise ValueError(f"{what} {name}={value:g} is outside the node's interval [{spec.low:g}, {spec.high:g}]")
        elif spec.kind == "positive" and value <= 0:
            raise ValueError(f"{what} {name}={value:g} must be positive (node {name!r} is positive)")

    def query(self, image: Tensor, factual: Mapping[str, Any], do: Mapping[str, Any], *,
              methods: Sequence[str] = METHODS, scale: Any = None, steps: Any = None, seed: int = 0,
              progress: bool = False) -> Iterator[Answer]:
        """Answer one counterfactual question, yielding the answer after each image.

        The first yield holds the factual column and the first method's image (DCFG when asked for); the
        others reuse that query's DDIM inversion and decode only. ``scale`` ``None``/0 is the pipeline's
        per-attribute default (``config.default_scale``), for CFG and DCFG alike; ``steps`` ``None`` its
        ``config.steps``.
        """
        pipe, config = self.pipe, self.pipe.config
        steps = config.steps if steps in (None, "") else steps
        fact, act, scale, steps = self.check_query(factual, do, scale, steps, methods)
        if image.dim() == 3:
            image = image[None]
        if tuple(image.shape[1:]) != self.image_shape:
            raise ValueError(f"the image is {tuple(image.shape[1:])}; the pipeline expects {self.image_shape}")
        do_values = {n: (int(v) if self.graph.spec(n).is_discrete else v) for n, v in act.items()}
        parents = {n: torch.tensor([int(v) if self.graph.spec(n).is_discrete else v]) for n, v in fact.items()}
        order = [m for m in METHODS if m in methods]
        w = config.default_scale(list(act)) if scale is None else scale
        descendants = sorted({d for n in act for d in self.graph.descendants(n)
                              if d in self.controls and d not in act})
        answer = Answer(query={"factual": fact, "do": act, "guidance": order, "scale": w, "steps": steps,
                               "seed": seed, "dcfg_form": config.dcfg_form},
                        columns=[Column("factual", image[0], self.measure(image), dict(fact))],
                        intervened=sorted(act), descendants=descendants)
        t0 = time.perf_counter()
        res = pipe.counterfactual(image, parents, do=do_values, guidance=order[0], scale=w, steps=steps,
                                  seed=seed, progress=progress)
        cf = {n: float(v[0]) for n, v in res.parents.items()}
        answer.columns.append(Column(order[0], res.image[0].cpu(), self.measure(res.image), cf,
                                     res.groups, res.weights, time.perf_counter() - t0))
        yield replace(answer, columns=list(answer.columns))
        cf_parents = {n: res.parents[n] for n in self.image_parents}
        for method in order[1:]:
            t0 = time.perf_counter()
            groups, weights = resolve_guidance(self.graph, list(act), method, w,
                                               invariant_weight=config.invariant_weight,
                                               descendant_weight=config.descendant_weight)
            x = pipe.decode(res.noise["x_T"], cf_parents, guidance=method, groups=groups, weights=weights,
                            steps=steps, progress=progress, dcfg_form=config.dcfg_form)
            answer.columns.append(Column(method, x[0].cpu(), self.measure(x), cf, groups, weights,
                                         time.perf_counter() - t0))
            yield replace(answer, columns=list(answer.columns))


# ---------------------------------------------------------------------- data
def load_examples(pipe: Any, data: str | None = None, n: int = DEFAULT_EXAMPLES,
                  root: str | os.PathLike | None = None) -> tuple[Tensor, dict[str, Tensor]] | None:
    """The test images the page offers.

    ``data`` is a ``--data`` spec (``csv:FILE,split=test``...). ``None`` is the benchmark's test digits for the
    bundled Morpho-MNIST and colour pipelines (class-balanced, ``n`` of them), or, for a pipeline trained on
    ``csv:FILE,split=train``, the ``split=test`` rows of that file when it is still there; otherwise the
    result is ``None`` (the page takes uploads only).
    """
    from .datasets import MorphoColour, MorphoMNIST

    kind = getattr(pipe, "oracles", None)
    if data is None and kind in ("morpho", "morpho-colour"):
        cls = MorphoColour if kind == "morpho-colour" else MorphoMNIST
        test = cls("test", root=root, samples_per_digit=1, seed=0, attribute_sampling="scm", n_jobs=1,
                   progress=False, max_sources=max(n, 10))
        k = min(n, len(test))
        return test.images[:k].float(), {name: v[:k] for name, v in test.attributes.items()}
    from .generate import open_dataset

    if data is None:
        spec = str((pipe.card.get("data") or {}).get("spec", "")) if isinstance(pipe.card, Mapping) else ""
        if not spec.startswith("csv:") or "split=train" not in spec:
            return None
        try:  # the training run's CSV, its test rows; gone or without a test split: uploads only
            rows = open_dataset(spec.replace("split=train", "split=test"), graph=pipe.graph)
        except (ValueError, OSError):
            return None
    else:
        rows = open_dataset(data, graph=pipe.graph)
    k = min(n, len(rows))
    items = [rows[i] for i in range(k)]
    images = torch.stack([torch.as_tensor(it[0]).float() for it in items])
    parents = {name: torch.stack([torch.as_tensor(it[1][name]) for it in items])
               for name in pipe.graph.attribute_nodes() if name in items[0][1]}
    return images, parents


# ---------------------------------------------------------------------- the page
def _display(x: Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> uint8 (S, S[, 3]) upscaled for the page."""
    from .images import to_uint8

    arr = to_uint8(x.detach().cpu())
    f = max(1, DISPLAY_SIDE // max(arr.shape[:2]))
    return np.repeat(np.repeat(arr, f, axis=0), f, axis=1)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def caption_html(app: CounterfactualApp, column: Column, answer: Answer | None) -> str:
    """The table under one image: measured attributes and the attributes it was decoded under."""
    rows = []
    for n in app.nodes:
        measured = column.measured.get(n)
        mark = ""
        if answer is not None and column.method != "factual":
            mark = " (do)" if n in answer.intervened else " (descendant)" if n in answer.descendants else ""
        cells = (f'<td class="dcfg-measured" data-attr="{n}">{_fmt(measured) if measured is not None else "-"}</td>'
                 f'<td class="dcfg-scm" data-attr="{n}">{_fmt(column.attributes[n])}{mark}</td>')
        rows.append(f"<tr><th>{n}</th>{cells}</tr>")
    head = ("<tr><th>attribute</th><th>measured</th><th>"
            + ("factual" if column.method == "factual" else "SCM") + "</th></tr>")
    extra = ""
    if column.groups and column.method != "factual":
        extra = ("<p class='dcfg-groups'>groups " + "; ".join(
            f"{'+'.join(g)}: w={w:g}" for g, w in zip(column.groups, column.weights))
            + f" &middot; {column.seconds:.1f} s</p>")
    return f"<table class='dcfg-caption' data-method='{column.method}'>{head}{''.join(rows)}</table>{extra}"


def build_page(app: CounterfactualApp) -> Any:
    """The Gradio Blocks page of ``app`` (not launched; see :func:`serve`)."""
    gr = require_gradio()
    controls = [app.controls[n] for n in app.nodes]
    config = app.pipe.config

    with gr.Blocks(title=f"{app.title}: counterfactuals", analytics_enabled=False) as page:
        gr.Markdown(f"## {app.title}: counterfactual queries\n"
                    "Pick a test image or upload one, check its attributes, tick one or more interventions, "
                    "then **Run**: the page answers with no guidance, CFG and DCFG. Measured values come from "
                    "the pipeline's oracles" + ("" if app.oracles is not None else
                                                " (this pipeline has none: measured values are blank)") + ".")
        image_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                if app.n_examples:
                    gallery = gr.Gallery([_display(app.example_images[i]) for i in range(app.n_examples)],
                                         label="test images (click one)", columns=6, height=220,
                                         allow_preview=False, elem_id="examples", interactive=False)
                upload = gr.File(label="or upload a PNG/JPEG", file_types=[".png", ".jpg", ".jpeg"],
                                 elem_id="upload")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=1):
                gr.Image(app.dag_array(), label="causal graph", interactive=False, elem_id="dag",
                         buttons=[], height=320)
        gr.Markdown("### factual attributes (editable) and interventions")
        factual_inputs, do_boxes, do_inputs = [], [], []
        with gr.Row():
            for c in controls:
                with gr.Column(min_width=160):
                    factual_inputs.append(gr.Number(c.default, label=f"{c.name} (factual)",
                                                    elem_id=f"factual-{c.name}"))
                    do_boxes.append(gr.Checkbox(False, label=f"do({c.name})", elem_id=f"use-{c.name}"))
                    if c.discrete:
                        do_inputs.append(gr.Dropdown(list(c.choices), value=c.choices[0], label=f"{c.name} :=",
                                                     elem_id=f"do-{c.name}"))
                    else:
                        do_inputs.append(gr.Slider(c.low, c.high, value=min(max(c.default, c.low), c.high),
                                                   step=c.step, label=f"{c.name} :=", elem_id=f"do-{c.name}"))
        with gr.Row():
            methods = gr.CheckboxGroup(list(METHODS), value=list(METHODS), label="guidance", elem_id="methods")
            scale = gr.Number(0, label="scale (0: the pipeline's default per attribute)", elem_id="scale")
            steps = gr.Slider(1, 200, value=config.steps, step=1, label="DDIM steps", elem_id="steps")
            run = gr.Button("Run", variant="primary", elem_id="run")
        titles = ["factual"] + [m for m in ("none", "cfg", "dcfg")]
        images, captions = {}, {}
        with gr.Row():
            for m in titles:
                with gr.Column(min_width=200):
                    images[m] = gr.Image(None, label=TITLES[m], interactive=False, elem_id=f"image-{m}",
                                         height=DISPLAY_SIDE + 40)
                    captions[m] = gr.HTML("", elem_id=f"caption-{m}")
        with gr.Row():
            png_file = gr.File(label="counterfactual (PNG)", interactive=False, elem_id="download-png")
            json_file = gr.File(label="query and result (JSON)", interactive=False, elem_id="download-json")

        def show(x: Tensor, values: Mapping[str, float], note: str) -> list:
            col = Column("factual", x[0], app.measure(x), dict(values))
            return ([x, note, _display(x[0]), caption_html(app, col, None)]
                    + [float(f"{values[n]:.4g}") for n in app.nodes])

        head_outputs = [image_state, status, images["factual"], captions["factual"]] + factual_inputs

        def on_select(evt: gr.SelectData) -> list:
            try:
                x, values = app.example(evt.index)
            except ValueError as e:
                raise gr.Error(str(e)) from None
            return show(x, values, f"test image {evt.index}")

        def on_upload(path: str | None) -> list:
            if not path:
                return [gr.update()] * len(head_outputs)
            try:
                x, values = app.read_upload(path)
            except (ValueError, OSError) as e:
                raise gr.Error(str(e)) from None
            return show(x, values, f"uploaded {Path(path).name}")

        if app.n_examples:
            gallery.select(on_select, None, head_outputs)
        upload.upload(on_upload, upload, head_outputs)

        n = len(controls)
        out_keys = ["none", "cfg", "dcfg"]

        def on_run(x, *values, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's progress idiom)
            fact_vals, use, do_vals = values[:n], values[n:2 * n], values[2 * n:3 * n]
            chosen, w, st = values[3 * n], values[3 * n + 1], values[3 * n + 2]
            if x is None:
                raise gr.Error("pick a test image or upload one first")
            factual = {c.name: v for c, v in zip(controls, fact_vals)}
            do = {c.name: v for c, u, v in zip(controls, use, do_vals) if u}
            empty = [None, ""]
            try:
                for answer in app.query(x, factual, do, methods=list(chosen or []), scale=w, steps=st,
                                        progress=True):
                    by = {c.method: c for c in answer.columns}
                    outs = []
                    for m in out_keys:
                        col = by.get(m)
                        outs += ([_display(col.image), caption_html(app, col, answer)] if col else empty)
                    yield outs + _downloads(app, answer)
            except (ValueError, TypeError) as e:
                raise gr.Error(str(e)) from None

        run_outputs = []
        for m in out_keys:
            run_outputs += [images[m], captions[m]]
        run_outputs += [png_file, json_file]
        run.click(on_run, [image_state] + factual_inputs + do_boxes + do_inputs + [methods, scale, steps],
                  run_outputs, concurrency_limit=1)
    return page


def _downloads(app: CounterfactualApp, answer: Answer) -> list[str]:
    """The newest counterfactual as a PNG and the answer as JSON, in a fresh temporary folder."""
    from .images import save_image

    best = answer.columns[-1]
    for pref in ("dcfg", "cfg", "none"):
        hit = [c for c in answer.columns if c.method == pref]
        if hit:
            best = hit[0]
            break
    folder = Path(tempfile.mkdtemp(prefix="dcfg-app-"))
    png = folder / f"counterfactual-{best.method}.png"
    save_image(best.image, png)
    js = folder / "query.json"
    js.write_text(json.dumps(answer.to_json(), indent=2))
    return [str(png), str(js)]


def serve(app: CounterfactualApp, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
          quiet: bool = False) -> Any:
    """Launch the page: ``host`` (127.0.0.1 by default), uploads up to :data:`MAX_UPLOAD_BYTES`, one query
    at a time (others wait in the queue). Returns the launched Blocks (``block=False``: at once)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    page = build_page(app)
    page.queue(default_concurrency_limit=1, max_size=32)
    gr = require_gradio()
    # system fonts: the default theme's web fonts would be fetched from the network, which the page never needs
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet,
                max_file_size=MAX_UPLOAD_BYTES, ssr_mode=False, show_error=True, share=False,
                footer_links=[], theme=theme, css=CSS)
    return page
