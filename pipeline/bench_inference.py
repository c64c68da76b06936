"""``dcfg bench inference``: what makes one network evaluation of a pipeline's image model fast on this CPU.

A counterfactual's wall time is its image-NFEs times the time of one (``dcfg bench pipeline``), so this bench
times one batched forward of the image model, per image, under the settings that can change it:

* **threads**: torch's intra-op threads (1 or all cores);
* **micro-batch**: the rows of one backbone call on the CPU (``ConditionalUNet.cpu_chunk_size``);
* **memory format**: contiguous (NCHW) or channels-last (NHWC) weights and activations;
* **torch.compile** (inductor), with and without freezing the weights into the graph (which lets oneDNN fuse
  convolutions with their bias and activation);
* **precision**: fp32, and bf16 autocast (fast only on CPUs with AMX / AVX512-BF16 units).

Each setting is a callable on the same random batch; the callables run interleaved (a, b, c, a, b, c, ...) so
that a change of background load hits them alike, and the median and minimum per image are reported beside the
baseline (eager fp32, contiguous, the model's default micro-batch, all threads). The machine's facts
(:func:`pipeline.machine.cpu_facts`) are recorded with the figures.

Example:
    >>> from pipeline.bench_inference import SETTINGS
    >>> SETTINGS["compiled-frozen"]
    {'compile': True, 'freeze': True}
"""
from __future__ import annotations

import copy
import statistics
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

__all__ = ["SETTINGS", "bench_inference", "format_inference_table"]

#: The settings timed by default: name -> what differs from the baseline ``eager`` (eager fp32, contiguous
#: NCHW, the model's micro-batch, all threads): ``threads``, ``chunk`` (micro-batch rows), ``channels_last``,
#: ``compile``, ``freeze`` (inductor freezing: weights folded into the graph, oneDNN fusion), ``precision``.
SETTINGS: dict[str, dict[str, Any]] = {
    "eager": {},
    "threads-1": {"threads": 1},
    "chunk-32": {"chunk": 32},
    "chunk-128": {"chunk": 128},
    "chunk-256": {"chunk": 256},
    "channels-last": {"channels_last": True},
    "compiled": {"compile": True},
    "compiled-frozen": {"compile": True, "freeze": True},
    "compiled-channels-last": {"compile": True, "channels_last": True},
    "bf16": {"precision": "bf16"},
    "compiled-bf16": {"compile": True, "precision": "bf16"},
}


def random_inputs(model: Any, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((rows, *model.config.image_shape), generator=g)
    t = torch.randint(0, model.config.num_train_timesteps, (rows,), generator=g)
    attrs = {a.name: (torch.randint(0, a.cardinality, (rows,), generator=g) if a.kind == "categorical"
                      else a.mean + a.std * torch.randn(rows, generator=g)) for a in model.config.attributes}
    return x, t, attrs


def setting_forward(model: Any, setting: Mapping[str, Any]
                    ) -> Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]:
    """The noise prediction of a copy of ``model`` under ``setting`` (a compiled one compiles on its first call)."""
    m = copy.deepcopy(model).eval()
    m.cpu_chunk_size = setting.get("chunk", model.cpu_chunk_size)
    channels_last = bool(setting.get("channels_last", False))
    if channels_last:
        m.unet.to(memory_format=torch.channels_last)
    m.set_inference(precision=setting.get("precision", "fp32"), compile=False)
    backbone = torch.compile(m.unet, dynamic=False) if setting.get("compile") else m.unet
    if setting.get("freeze"):  # inductor reads it when it compiles, i.e. on the first call
        import torch._inductor.config as inductor_config

        compile_context: Callable[[], Any] = lambda: inductor_config.patch(freezing=True)  # noqa: E731
    else:
        import contextlib

        compile_context = contextlib.nullcontext
    precision = setting.get("precision", "fp32")
    threads = setting.get("threads")

    def forward(x: torch.Tensor, t: torch.Tensor, attrs: dict) -> Any:
        saved = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            chunk = m.cpu_chunk_size or len(x)
            parts = []
            with torch.no_grad(), compile_context():
                for i in range(0, len(x), chunk):
                    rows = slice(i, i + chunk)
                    xi = x[rows].contiguous(memory_format=torch.channels_last) if channels_last else x[rows]
                    cond = m.embedding({k: v[rows] for k, v in attrs.items()}, None, batch_size=len(xi),
                                       validate=False)
                    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                           else torch.autocast("cpu", enabled=False))
                    with ctx:
                        parts.append(backbone(xi, t[rows], class_labels=cond).sample.float())
        finally:
            torch.set_num_threads(saved)
        return torch.cat(parts)

    return forward


def bench_inference(model: Any, *, rows: int = 256, repeats: int = 5, settings: Sequence[str] | None = None,
                    seed: int = 0, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time one forward of ``rows`` images under each named setting of :data:`SETTINGS`.

    Args:
        model: a :class:`~diffusion.model.ConditionalUNet` (a pipeline's ``image_model``).
        rows: images per timed forward (split into micro-batches as each setting says).
        repeats: timed rounds after the warm-up (which compiles the compiled settings).
        settings: names of :data:`SETTINGS` (default: all; ``"eager"`` is always added as the baseline).
        seed: seed of the random batch.
        log: optional progress callback.

    Returns:
        ``{"rows": [{"setting", "ms_per_image_median", "ms_per_image_min", "speedup", "warmup_s"}], "machine",
        "threads", "batch", "default_chunk"}``; ``speedup`` is the baseline's median over the setting's.
    """
    from pipeline.machine import cpu_facts

    names = list(dict.fromkeys(["eager", *(settings or SETTINGS)]))
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    x, t, attrs = random_inputs(model, rows, seed)
    fns, warmup = {}, {}
    for name in names:
        if log:
            log(f"preparing {name}")
        fn = setting_forward(model, SETTINGS[name])
        t0 = time.perf_counter()
        try:
            fn(x, t, attrs)  # the warm-up, and the compilation of the compiled settings
        except Exception as e:  # noqa: BLE001 - a setting this machine cannot run is reported, not fatal
            warnings.warn(f"{name}: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
            continue
        warmup[name] = time.perf_counter() - t0
        fns[name] = fn
    times: dict[str, list[float]] = {n: [] for n in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x, t, attrs)
            times[name].append(time.perf_counter() - t0)
        if log:
            log(f"round {r + 1}/{repeats}")
    base = statistics.median(times["eager"])
    out = [{"setting": n, "ms_per_image_median": 1000 * statistics.median(v) / rows,
            "ms_per_image_min": 1000 * min(v) / rows, "speedup": base / statistics.median(v),
            "warmup_s": warmup[n]} for n, v in times.items()]
    return {"rows": out, "machine": cpu_facts(), "threads": torch.get_num_threads(), "batch": rows,
            "default_chunk": model.cpu_chunk_size, "repeats": repeats}


def _describe(setting: Mapping[str, Any]) -> str:
    parts = [("compiled" if setting.get("compile") else "eager") + (" + frozen" if setting.get("freeze") else ""),
             setting.get("precision", "fp32")]
    if setting.get("channels_last"):
        parts.append("channels-last")
    if "chunk" in setting:
        parts.append(f"micro-batch {setting['chunk']}")
    if "threads" in setting:
        parts.append(f"{setting['threads']} thread(s)")
    return ", ".join(parts)


def format_inference_table(result: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`bench_inference`'s result, headed by the machine it ran on."""
    from pipeline.markdown import markdown_table

    m = result["machine"]
    head = (f"{m['cpu']} (avx512_bf16 {m['avx512_bf16']}, amx_bf16 {m['amx_bf16']}, avx2 {m.get('avx2')}), "
            f"{result['threads']} threads, {result['batch']} images per forward, default micro-batch "
            f"{result['default_chunk']}, {result['repeats']} interleaved rounds")
    rows = [[f"{r['setting']} ({_describe(SETTINGS[r['setting']])})", f"{r['ms_per_image_median']:.2f}",
             f"{r['ms_per_image_min']:.2f}", f"{r['speedup']:.2f}", f"{r['warmup_s']:.1f}"] for r in result["rows"]]
    return head + "\n\n" + markdown_table(["setting", "ms / image (median)", "ms / image (min)",
                                           "speed-up over eager fp32", "warm-up s (compile)"], rows)
