"""``dcfg bench diffusion``: forward cost, sampler overhead, DCFG / CFG cost and training throughput.

All figures come from one run on the same model and the same random batch:

* ms per forward (one network evaluation, NFE) at batch 1, 64 and 256;
* sampling wall time / (NFE x one forward at the sampling batch): the sampler's own overhead (target <= 1.05);
* DCFG with M = 2 groups / CFG sampling wall time: (M + 1) B rows against 2 B rows per step, ideally 1.5
  (target <= 1.58);
* training throughput of the model's config (images / s), from a few steps of :func:`diffusion.train`.

Example:
    >>> from pipeline.bench_diffusion import bench_diffusion
    >>> from diffusion import AttributeSpec, ConditionalUNet, ImageModelConfig
    >>> net = ConditionalUNet(ImageModelConfig(image_shape=(1, 8, 8), block_out_channels=(8, 8),
    ...     attention_levels=(False, False), mid_attention=False, norm_num_groups=4, block_dim=4,
    ...     attributes=(AttributeSpec("a", "continuous"), AttributeSpec("b", "categorical", cardinality=3))))
    >>> res = bench_diffusion(net, batch_sizes=(1, 4), sample_batch=4, steps=2, repeats=1, train_steps=0,
    ...                       verbose=False)
    >>> sorted(res["forward_ms"])
    ['1', '4']
"""
from __future__ import annotations

import csv
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dcfg_io.atomic import atomic_write_json
from dcfg_io.checks import is_integer
from diffusion.config import AttributeSpec, ImageModelConfig, TrainConfig
from diffusion.ddim import ddim_sample
from diffusion.guidance import guided_eps_fn
from diffusion.model import ConditionalUNet

#: the benchmark's default model: the default 28x28 config with Morpho-MNIST-shaped attributes.
DEFAULT_ATTRIBUTES = (
    AttributeSpec("thickness", "continuous", mean=2.5, std=1.0),
    AttributeSpec("intensity", "continuous", mean=160.0, std=50.0),
    AttributeSpec("digit", "categorical", cardinality=10),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device
                       ) -> dict[str, list[float]]:
    """Wall times (s) of every ``fns[k]()``, ``repeats`` rounds after one warm-up round.

    The candidates run interleaved (a, b, c, a, b, c, ...) so that a change of background load hits them alike;
    callers report the minimum (the least disturbed run, as ``timeit`` does) and the median.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def _random_attrs(config: ImageModelConfig, batch: int, g: torch.Generator, device: torch.device
                  ) -> dict[str, torch.Tensor]:
    out = {}
    for a in config.attributes:
        if a.kind == "categorical":
            out[a.name] = torch.randint(0, a.cardinality, (batch,), generator=g)
        else:
            out[a.name] = a.mean + a.std * torch.randn(batch, generator=g)
    return {k: v.to(device) for k, v in out.items()}


class _RandomImages(torch.utils.data.Dataset):
    def __init__(self, config: ImageModelConfig, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand((n, *config.image_shape), generator=g) * 2 - 1
        self.attrs = _random_attrs(config, n, g, torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], {k: v[i] for k, v in self.attrs.items()}


def _train_throughput(config: ImageModelConfig, steps: int, batch_size: int, seed: int,
                      device: torch.device) -> dict[str, Any]:
    """Images / s of :func:`diffusion.train` on random data, from ``loss.csv``'s wall times (first step excluded)."""
    from diffusion.training import train

    with tempfile.TemporaryDirectory() as tmp:
        data = _RandomImages(config, max(4 * batch_size, 256), seed)
        tc = TrainConfig(steps=steps + 1, batch_size=batch_size, seed=seed, ckpt_every=10 ** 9, log_every=1)
        res = train(config, tc, data, tmp, progress=False, device=device)
        with open(Path(tmp) / "loss.csv", newline="") as fh:
            walls = [float(r["wall_time"]) for r in csv.DictReader(fh)]
    per_step = (walls[-1] - walls[0]) / steps
    return {"batch_size": batch_size, "steps_timed": steps, "s_per_step": per_step,
            "images_per_s": batch_size / per_step, "images_per_s_incl_first_step_and_checkpoint":
            res.images_per_second}


def bench_diffusion(
    model: ConditionalUNet | str | os.PathLike | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 64, 256),
    sample_batch: int = 64,
    steps: int = 10,
    repeats: int = 3,
    train_steps: int = 5,
    train_batch: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    out: str | os.PathLike | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Time the denoiser, the DDIM sampler and DCFG against CFG on one model and one random batch.

    Args:
        model: a :class:`ConditionalUNet`, a saved model directory, or ``None`` for an untrained model of the
            default 28x28 config with Morpho-MNIST-shaped attributes (timings do not depend on the weights).
        batch_sizes: batch sizes of the forward timings.
        sample_batch: B of the sampling timings (CFG runs 2 B rows per step, DCFG with M = 2 runs 3 B).
        steps: DDIM steps (NFE) of each sampling run.
        repeats: timed rounds after one warm-up; candidates run interleaved and the minimum is reported (the
            least disturbed run on a shared machine), with the medians beside it.
        train_steps: timed training steps for the throughput figure (0 skips training).
        train_batch: training batch size.
        seed: seeds the random inputs.
        device: where to run (default: the model's device, or the CPU).
        out: optional JSON path for the results (written atomically).
        verbose: print the table.

    Returns:
        A JSON-ready dict with ``forward_ms``, ``sampling``, ``guidance`` and ``training`` sections.
    """
    if model is None:
        net = ConditionalUNet(ImageModelConfig(attributes=DEFAULT_ATTRIBUTES))
    elif isinstance(model, ConditionalUNet):
        net = model
    else:
        net = ConditionalUNet.from_pretrained(model)
    dev = torch.device(device) if device is not None else net.device
    net = net.to(dev).eval()
    model_config = net.config
    for name, value in (("sample_batch", sample_batch), ("steps", steps), ("repeats", repeats)):
        if not is_integer(value, 1, python_int=True):
            raise ValueError(f"{name}={value!r} must be a positive integer")
    g = torch.Generator().manual_seed(seed)
    names = list(model_config.attribute_names)
    result: dict[str, Any] = {
        "device": str(dev), "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in net.parameters()), "model_config": model_config.to_dict(),
    }

    # 1. ms per forward (NFE) at each batch size
    forwards: dict[str, Callable[[], Any]] = {}
    for b in dict.fromkeys(list(batch_sizes) + [sample_batch]):
        x = torch.randn((b, *model_config.image_shape), generator=g).to(dev)
        t = torch.randint(0, model_config.num_train_timesteps, (b,), generator=g).to(dev)
        a = _random_attrs(model_config, b, g, dev)
        forwards[str(b)] = (lambda x=x, t=t, a=a: net.eps(x, t, a))
    B = sample_batch
    x_T = torch.randn((B, *model_config.image_shape), generator=g).to(dev)
    attrs = _random_attrs(model_config, B, g, dev)
    abar = net.alphas_cumprod

    def sample(fn: Callable) -> Callable[[], Any]:
        return lambda: ddim_sample(fn, x_T, abar, steps)

    plain_fn = guided_eps_fn(net, attrs, "none")
    calls: list[float] = []  # seconds of every network evaluation made by the plain sampling runs

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _sync(dev)
        t0 = time.perf_counter()
        out = plain_fn(x, t)
        _sync(dev)
        calls.append(time.perf_counter() - t0)
        return out

    # 2. sampling (plain, CFG, DCFG with two groups), interleaved with the forward at the sampling batch
    runs: dict[str, Callable[[], Any]] = {"forward": forwards[str(B)], "sample": sample(counted)}
    groups: list[list[str]] = []
    if len(names) >= 2:
        half = (len(names) + 1) // 2
        groups = [names[:half], names[half:]]
        runs["cfg"] = sample(guided_eps_fn(net, attrs, "cfg", scale=3.0))
        runs["dcfg"] = sample(guided_eps_fn(net, attrs, "dcfg", groups=groups, weights=[3.0, 1.0]))
    with torch.inference_mode():
        fwd_times = _interleaved_times({k: f for k, f in forwards.items() if k != str(B)}, repeats, dev)
        times = _interleaved_times(runs, repeats, dev)
    fwd_times[str(B)] = times.pop("forward")
    nfe = len(calls) // (repeats + 1)  # network evaluations per sampling run (the warm-up run included)
    # the same ratio with the forwards timed inside each sampling run (immune to load drift between runs)
    inline = [w / sum(calls[(r + 1) * nfe:(r + 2) * nfe]) for r, w in enumerate(times["sample"])]
    best = {k: min(v) for k, v in {**fwd_times, **times}.items()}
    median = {k: statistics.median(v) for k, v in {**fwd_times, **times}.items()}
    result["timing"] = f"min over {repeats} interleaved runs after a warm-up (medians under *_median)"
    result["forward_ms"] = {str(b): 1e3 * best[str(b)] for b in batch_sizes}
    result["forward_ms_median"] = {str(b): 1e3 * median[str(b)] for b in batch_sizes}
    result["forward_ms_per_image"] = {str(b): 1e3 * best[str(b)] / b for b in batch_sizes}
    result["sampling"] = {"batch": B, "steps": steps, "nfe": nfe, "wall_s": best["sample"],
                          "forward_ms": 1e3 * best[str(B)], "ratio": best["sample"] / (nfe * best[str(B)]),
                          "ratio_median": median["sample"] / (nfe * median[str(B)]),
                          "ratio_inline": statistics.median(inline), "target": 1.05}
    # 3. DCFG with two groups against CFG, same batch and steps
    if groups:
        result["guidance"] = {"batch": B, "steps": steps, "groups": groups, "cfg_s": best["cfg"],
                              "dcfg_s": best["dcfg"], "ratio": best["dcfg"] / best["cfg"],
                              "ratio_median": median["dcfg"] / median["cfg"], "ideal": 1.5, "target": 1.58}
    else:
        result["guidance"] = {"skipped": f"DCFG with 2 groups needs >= 2 attributes, the model has {names}"}

    # 4. training throughput of this config
    if train_steps:
        result["training"] = _train_throughput(model_config, train_steps, train_batch, seed, dev)

    if verbose:
        print(format_table(result))
    if out is not None:
        atomic_write_json(out, result)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The benchmark's figures as a plain-text table."""
    def row(label: str, value: float, fmt: str, target: str = "") -> str:
        return f"{label:<46}{value:>14{fmt}}{target:>10}"

    lines = [f"dcfg bench diffusion  device={result['device']} threads={result['torch_threads']} "
             f"params={result['params']:,}", f"timing: {result['timing']}", "",
             f"{'measure':<46}{'value':>14}{'target':>10}"]
    for b, ms in result["forward_ms"].items():
        lines.append(row(f"ms per forward (NFE), batch {b}", ms, ".2f"))
        lines.append(row(f"  ms per image, batch {b}", result["forward_ms_per_image"][b], ".3f"))
    s = result["sampling"]
    lines.append(row(f"sampling wall / (NFE x forward), B={s['batch']} S={s['steps']}", s["ratio"], ".3f",
                     f"<= {s['target']}"))
    lines.append(row("  same, forwards timed inside the sampling run", s["ratio_inline"], ".3f"))
    gd = result["guidance"]
    if "ratio" in gd:
        lines.append(row("DCFG (M=2) / CFG sampling wall time", gd["ratio"], ".3f", f"<= {gd['target']}"))
        lines.append(row("  CFG sampling s", gd["cfg_s"], ".2f"))
        lines.append(row("  DCFG sampling s", gd["dcfg_s"], ".2f"))
    else:
        lines.append(f"DCFG / CFG: {gd['skipped']}")
    if "training" in result:
        tr = result["training"]
        lines.append(row(f"training images / s, batch {tr['batch_size']}", tr["images_per_s"], ".1f"))
    return "\n".join(lines)

