"""Training a whole pipeline: the attribute SCM, the image mechanism and the oracle classifier.

Each stage writes its result into ``out_dir`` and is skipped when resuming if its result is already
there, so ``train_pipeline(..., resume=True)`` after an interruption continues where it stopped:

1. ``scm/``: the SCM fitted by maximum likelihood on the observational attributes;
2. ``image_model_run/``: the diffusion model's training run (atomic checkpoints, ``loss.csv``);
3. ``pipeline/``: the assembled :class:`~pipeline.core.CounterfactualPipeline` (EMA weights).

Example:
    >>> # the bundled model, resumable (docs/bundled-models.md has its training run):
    >>> train_morphomnist("runs/morpho", steps=20000, resume=True)  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from diffusion import AttributeSpec, ConditionalUNet, ImageModelConfig, TrainConfig
from diffusion import train as train_diffusion
from scm import SCM, CausalGraph

from .core import CounterfactualPipeline, PipelineConfig

#: The image model used for the bundled Morpho-MNIST pipeline: about 1M parameters, no self-attention
#: at 14x14 (it would double the step time), attention only at 7x7 and in the middle block.
MORPHO_IMAGE_MODEL = dict(block_out_channels=(32, 64, 64), layers_per_block=1, block_dim=32,
                          attention_levels=(False, False, True), mid_attention=True)


#: The denoiser's backbone by image resolution (``docs/own_data.md`` gives each one's step time): the largest
#: side ``S`` picks the first preset whose ``max_size`` is >= ``S``. The bottom level is at most 8x8 pixels, and
#: self-attention runs only there and in the middle block. ``28`` is the bundled Morpho-MNIST model.
IMAGE_MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "28": dict(max_size=32, block_out_channels=(32, 64, 64), layers_per_block=1, block_dim=32,
               attention_levels=(False, False, True), mid_attention=True),
    "64": dict(max_size=64, block_out_channels=(32, 64, 128, 128), layers_per_block=1, block_dim=32,
               attention_levels=(False, False, False, True), mid_attention=True),
    "128": dict(max_size=128, block_out_channels=(32, 64, 128, 128, 256), layers_per_block=1, block_dim=32,
                attention_levels=(False, False, False, False, True), mid_attention=True),
}


def image_model_preset(image_shape: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    """``(name, backbone kwargs)`` of the :data:`IMAGE_MODEL_PRESETS` entry for images of ``image_shape``.

    Raises:
        ValueError: a side outside 8..128 pixels, or one that the preset's levels cannot halve evenly.

    Example:
        >>> image_model_preset((3, 64, 64))[0], image_model_preset((1, 28, 28))[1]["block_out_channels"]
        ('64', (32, 64, 64))
    """
    _, h, w = (int(s) for s in image_shape)
    side = max(h, w)
    for name, preset in IMAGE_MODEL_PRESETS.items():
        if side <= preset["max_size"]:
            kwargs = {k: v for k, v in preset.items() if k != "max_size"}
            div = 2 ** (len(kwargs["block_out_channels"]) - 1)
            if min(h, w) < 8 or h % div or w % div:
                raise ValueError(f"images of {h}x{w} pixels do not fit the {name}-pixel denoiser preset, whose "
                                 f"{len(kwargs['block_out_channels'])} levels need sides divisible by {div}; resize "
                                 f"them (dcfg train --image-size, e.g. {max(div, (side // div) * div)})")
            return name, kwargs
    raise ValueError(f"images of {h}x{w} pixels are larger than the largest denoiser preset (128 pixels); resize "
                     f"them with --image-size 128 (or smaller)")


def read_graph(path: str | os.PathLike) -> CausalGraph:
    """A :class:`~scm.CausalGraph` from a JSON or TOML file in the ``CausalGraph.from_dict`` format.

    TOML files may hold the graph at the top level or under a ``[graph]`` table, as an experiment spec does.

    Raises:
        ValueError: a missing file, an unreadable one, or an invalid graph (the message names the file).
    """
    import tomllib

    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise ValueError(f"graph file {str(p)!r} does not exist; give a JSON or TOML file with 'nodes' and 'edges'")
    text = p.read_bytes()
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text.decode("utf-8"))
            data = data.get("graph", data) if isinstance(data.get("graph"), dict) else data
        else:
            data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{p}: cannot be read as {'TOML' if p.suffix.lower() == '.toml' else 'JSON'} ({e})") from None
    try:
        graph = CausalGraph.from_dict(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{p}: {e}") from None
    if graph.image_node is None:
        raise ValueError(f"{p}: the graph has no node of kind 'image'; add one with its shape, e.g. "
                         f'"image": {{"kind": "image", "shape": [3, 64, 64]}}, and edges from its parents')
    return graph


def image_model_config_for(graph: CausalGraph, attributes: Mapping[str, Tensor],
                           **overrides: Any) -> ImageModelConfig:
    """An :class:`ImageModelConfig` conditioned on the image's parents, standardised on ``attributes``.

    Continuous parents (real, positive, interval) get the training mean and std; binary and
    categorical parents become categorical attributes.
    """
    specs = []
    for name in graph.image_parents():
        node = graph.spec(name)
        if node.kind in ("categorical", "binary"):
            specs.append(AttributeSpec(name, "categorical",
                                       cardinality=2 if node.kind == "binary" else int(node.cardinality)))
        else:
            v = torch.as_tensor(attributes[name], dtype=torch.float64)
            std = float(v.std()) if v.numel() > 1 else 1.0
            specs.append(AttributeSpec(name, "continuous", mean=float(v.mean()),
                                       std=std if std > 0 else 1.0))
    shape = tuple(int(s) for s in graph.spec(graph.image_node).shape)
    return ImageModelConfig(image_shape=shape, attributes=tuple(specs), **overrides)


def train_pipeline(
    graph: CausalGraph,
    attribute_data: Mapping[str, Tensor],
    image_dataset: torch.utils.data.Dataset,
    out_dir: str | os.PathLike,
    *,
    image_config: ImageModelConfig | None = None,
    train_config: TrainConfig | None = None,
    scm: SCM | None = None,
    scm_fit: Mapping[str, Any] | None = None,
    pipeline_config: PipelineConfig | None = None,
    classifier: torch.nn.Module | None = None,
    init_from: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    oracles: str | None = None,
    card: Mapping[str, Any] | None = None,
) -> CounterfactualPipeline:
    """Fit the SCM, train the image model and assemble the pipeline, resumably.

    Args:
        graph: the causal graph with one image node.
        attribute_data: observational attributes for the SCM (name -> (N,) tensor).
        image_dataset: items ``(image (C,H,W) in [-1,1], attrs dict)`` for the diffusion model;
            its attributes may be drawn more widely than the SCM's (see docs/benchmark.md).
        out_dir: run directory (created).
        image_config: the denoiser's config; by default standardised on ``image_dataset.attributes``
            (or ``attribute_data``) with :data:`MORPHO_IMAGE_MODEL`'s backbone.
        train_config: diffusion training settings.
        scm: an SCM to fit (default ``SCM(graph)``); ``scm_fit`` are keyword arguments of ``fit``.
        pipeline_config: defaults saved with the pipeline.
        classifier: optional oracle classifier saved beside the model.
        init_from: a saved pipeline or image-model directory whose weights (and config) start a
            fresh diffusion run; ignored when resuming an existing run.
        resume: reuse finished stages and continue the diffusion run from its last checkpoint.
        progress: tqdm bars.
        oracles: the pipeline's oracles (:meth:`CounterfactualPipeline.make_oracles`).
        card: model-card facts (the steps and final loss are added).

    Returns:
        The trained pipeline (also saved to ``out_dir/pipeline``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_config = train_config or TrainConfig()

    # Stage 1: the attribute SCM.
    scm_dir = out / "scm"
    if resume and (scm_dir / "config.json").is_file():
        scm = SCM.load(scm_dir)
    else:
        scm = scm if scm is not None else SCM(graph)
        scm.fit(dict(attribute_data), progress=progress, **dict(scm_fit or {}))
        scm.save(scm_dir)

    # Stage 2: the image mechanism.
    run_dir = out / "image_model_run"
    init_model = None
    if init_from is not None and not (resume and (run_dir / "checkpoint.safetensors").is_file()):
        # Warm start of a fresh run (e.g. on more data) from trained weights and their config.
        init_dir = Path(init_from)
        if (init_dir / "image_model" / "config.json").is_file():
            init_dir = init_dir / "image_model"
        init_model = ConditionalUNet.from_pretrained(init_dir)
        image_config = init_model.config
    if image_config is None:
        attrs = getattr(image_dataset, "attributes", None) or attribute_data
        image_config = image_model_config_for(graph, attrs, **MORPHO_IMAGE_MODEL)
    train_diffusion(image_config, train_config, image_dataset, run_dir, resume=resume,
                    progress=progress, model=init_model)
    image_model = ConditionalUNet.from_pretrained(_final_model_dir(run_dir)).eval()

    # Stage 3: assemble and save.
    losses = _loss_column(run_dir / "loss.csv")
    card = {**dict(card or {}), "steps": train_config.steps, "batch_size": train_config.batch_size,
            "precision": train_config.precision}
    if losses:
        card["final_loss"] = float(np.mean(losses[-100:]))
    if (run_dir / "checkpoint.json").is_file():  # the image model's training wall time, summed over resumes
        card.setdefault("wall_s", round(float(json.loads((run_dir / "checkpoint.json").read_text())
                                              .get("wall_time", 0.0)), 1))
    pipe = CounterfactualPipeline(graph, scm, image_model, pipeline_config, classifier, oracles=oracles, card=card)
    pipe.save(out / "pipeline")
    if (run_dir / "loss.csv").is_file():
        plot_training_curve(run_dir / "loss.csv", out / "training_curve.png")
    return pipe


def plot_training_curve(loss_csv: str | os.PathLike, out_png: str | os.PathLike,
                        window: int = 200) -> Path:
    """Plot ``loss.csv`` (step, loss, lr, wall_time): raw loss and a moving average, against steps
    (bottom axis) and wall-clock hours (top axis)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .images import atomic_save

    with open(loss_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{loss_csv} has no rows to plot")
    step = np.array([float(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    wall = np.array([float(r.get("wall_time", "nan") or "nan") for r in rows])
    w = max(1, min(window, len(loss) // 5 or 1))
    smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(step, loss, lw=0.4, alpha=0.35, label="loss (per step)")
    ax.plot(step[w - 1:], smooth, lw=1.6, label=f"moving average ({w} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("training step (batch 64)")
    ax.set_ylabel("DDPM epsilon MSE")
    title = f"{int(step[-1])} steps"
    if np.isfinite(wall[-1]):
        title += f", {wall[-1] / 3600:.2f} h wall time"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    atomic_save(lambda p: fig.savefig(p, dpi=120, format="png"), out_png)
    plt.close(fig)
    return out_png


def _training_labels(root: str | os.PathLike | None) -> Tensor:
    """The labels of the benchmarks' 4,000 training source digits (or of a local MNIST folder's training split)."""
    from .datasets import load_mnist5k, load_mnist_folder, mnist5k_split

    if root is None:
        _, labels = load_mnist5k()
        labels = labels[mnist5k_split()[0]]
    else:
        labels = load_mnist_folder(root, "train")[1]
    return torch.as_tensor(labels, dtype=torch.int64)


def _final_model_dir(run_dir: Path) -> Path:
    for name in ("model", "ema", "final"):
        if (run_dir / name / "config.json").is_file():
            return run_dir / name
    raise ValueError(f"{run_dir}: no trained model directory found after training")


def train_morphomnist(
    out_dir: str | os.PathLike,
    *,
    steps: int = 20000,
    batch_size: int = 64,
    samples_per_digit: int = 16,
    scm_samples_per_digit: int = 5,
    dropout_mode: str = "per_group",
    p_attr: float = 0.35,
    p_all: float = 0.1,
    lr: float = 3e-4,
    ema_decay: float = 0.9995,
    ckpt_every: int = 250,
    seed: int = 0,
    classifier_epochs: int = 20,
    classifier_images: int = 20000,
    with_classifier: bool = True,
    init_from: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
) -> CounterfactualPipeline:
    """Train the Morpho-MNIST pipeline of docs/benchmark.md (the bundled model's recipe).

    * SCM data: the training source digits with attributes from the benchmark's SCM
      (``scm_samples_per_digit`` draws per digit).
    * Image data: the same training digits rendered with thickness and intensity drawn
      independently (``samples_per_digit`` renders per digit), so that the model learns
      p(x | parents) over the whole product of the parents' ranges.
    * The digit classifier (the benchmark's oracle) on ``classifier_images`` of the image data,
      checked on the test digits (``with_classifier=False`` skips it; a classifier already in
      ``out_dir/classifier`` is reused when resuming).
    """
    from .datasets import MorphoMNIST
    from .datasets import morpho_equations as eq
    from .presets import morphomnist_graph

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    graph = morphomnist_graph()
    image_data = MorphoMNIST("train", root=root, samples_per_digit=samples_per_digit, seed=seed + 1,
                             attribute_sampling="independent", progress=progress)

    classifier = None
    if with_classifier:
        classifier = train_morphomnist_classifier(out, image_data, epochs=classifier_epochs,
                                                  n_images=classifier_images, seed=seed, root=root,
                                                  resume=resume, progress=progress)

    # Observational attributes for the SCM: the benchmark's equations over the training digits' labels
    # (attributes only; no image needs rendering for this stage).
    gen = torch.Generator().manual_seed(seed)
    digits = _training_labels(root).repeat(scm_samples_per_digit)
    noise = eq.sample_noise(len(digits), gen)
    t = eq.thickness_from_noise(noise["u_t"])
    scm_data = {"thickness": t.float(), "intensity": eq.intensity_from(t, noise["e_i"]).float(),
                "digit": digits}

    # Guidance defaults of the bundled pipeline (see docs/bundled-models.md): DCFG's conditional form (each
    # group amplified given the others); thickness (scale 2) and the digit (scale 3)
    # need amplification; intensity overshoots when amplified, so it keeps weight 1 both when intervened on
    # and as thickness's descendant (descendant_weight).
    # 28 steps on the p = 1.5 grid with the extrapolated inversion guess (PipelineConfig's defaults; docs/solvers.md)
    pcfg = PipelineConfig(scale=2.0, attribute_scales={"thickness": 2.0, "intensity": 1.0, "digit": 3.0},
                          descendant_weight=1.0, dcfg_form="conditional")
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                       dropout_mode=dropout_mode, p_attr=p_attr, p_all=p_all, ckpt_every=ckpt_every)
    return train_pipeline(graph, scm_data, image_data, out, train_config=tcfg,
                          scm_fit={}, pipeline_config=pcfg, classifier=classifier,
                          init_from=init_from, resume=resume,
                          progress=progress)


def train_morphomnist_classifier(out_dir: str | os.PathLike, image_data: Any | None = None, *,
                                 epochs: int = 20, n_images: int = 20000, elastic: float = 0.25,
                                 max_rot_deg: float = 8.0,
                                 samples_per_digit: int = 4,
                                 seed: int = 0, root: str | os.PathLike | None = None,
                                 resume: bool = True, progress: bool = True):
    """Train (or, when resuming, load) the benchmark's digit classifier into ``out_dir/classifier``.

    It learns from ``n_images`` renders of the training digits (``image_data``, by default the image
    model's training set; all of them, in order, when there are no more than ``n_images``), with
    small affine (rotations up to ``max_rot_deg``) and ``elastic`` distortions. Its accuracy on the
    1,000 rendered test digits is recorded per epoch in ``classifier/history.json`` (never used for
    selection). The augmentation settings were chosen on 500 held-out training digits (docs/bundled-models.md).
    """
    from .classifier import DigitClassifier, train_classifier
    from .datasets import MorphoMNIST

    clf_dir = Path(out_dir) / "classifier"
    if resume and (clf_dir / "model.safetensors").is_file():
        return DigitClassifier.from_pretrained(clf_dir)
    if image_data is None:
        image_data = MorphoMNIST("train", root=root, samples_per_digit=samples_per_digit,
                                 seed=seed + 1, attribute_sampling="independent", progress=progress)
    test = MorphoMNIST("test", root=root, samples_per_digit=1, seed=seed + 2,
                       attribute_sampling="scm", progress=progress)
    images, labels = image_data.images, image_data.attributes["digit"]
    if n_images < len(image_data):
        pick = torch.randperm(len(image_data), generator=torch.Generator().manual_seed(seed))[:n_images]
        images, labels = images[pick], labels[pick]
    classifier, history = train_classifier(
        images, labels, epochs=epochs, elastic=elastic, max_rot_deg=max_rot_deg, seed=seed,
        val=(test.images, test.attributes["digit"]), progress=progress)
    classifier.save_pretrained(clf_dir)
    (clf_dir / "history.json").write_text(json.dumps(history, indent=2))
    return classifier


def morpho_colour_image_setup(*, steps: int = 20000, batch_size: int = 64, samples_per_digit: int = 8,
                              p_attr: float = 0.25, p_all: float = 0.1, lr: float = 3e-4, ema_decay: float = 0.9995,
                              ckpt_every: int = 250, seed: int = 0, precision: str = "fp32",
                              root: str | os.PathLike | None = None, progress: bool = True
                              ) -> tuple[Any, ImageModelConfig, TrainConfig]:
    """The image stage of the colour Morpho-MNIST recipe: ``(image_data, image_config, train_config)``.

    The image data are ``samples_per_digit`` renders of each training digit with every continuous attribute drawn
    independently of the others (:func:`~pipeline.datasets.colour_equations.sample_independent`); the denoiser
    is the 28x28 preset with three channels, conditioned on the six attributes.
    """
    from .datasets import MorphoColour
    from .presets import morpho_colour_graph

    image_data = MorphoColour("train", root=root, samples_per_digit=samples_per_digit, seed=seed + 1,
                              attribute_sampling="independent", progress=progress)
    image_config = image_model_config_for(morpho_colour_graph(), image_data.attributes, **MORPHO_IMAGE_MODEL)
    train_config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                               dropout_mode="per_group", p_attr=p_attr, p_all=p_all, ckpt_every=ckpt_every,
                               precision=precision)
    return image_data, image_config, train_config


def train_from_data(
    data: str,
    graph: CausalGraph | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_size: int | None = None,
    steps: int = 20000,
    batch_size: int = 64,
    lr: float = 3e-4,
    p_attr: float = 0.25,
    p_all: float = 0.1,
    ema_decay: float = 0.9995,
    ckpt_every: int = 250,
    precision: str = "fp32",
    device: str | torch.device | None = None,
    num_workers: int = 0,
    preset: str | None = None,
    predictor_epochs: int = 10,
    scm_fit: Mapping[str, Any] | None = None,
    seed: int = 0,
    resume: bool = True,
    command: str | None = None,
    progress: bool = True,
    log: Any = None,
) -> CounterfactualPipeline | None:
    """Train a pipeline for any DAG and image set: SCM, anti-causal predictors, image model, model card.

    The whole function runs under ``torchrun --nproc_per_node=N``: rank 0 alone opens the run directory, fits
    the SCM and trains the predictors while the other ranks wait at a barrier; the image model then trains under
    DDP on every rank (gloo on CPUs, nccl on GPUs); rank 0 alone assembles and saves the pipeline. Stages
    finished in ``out_dir`` are reused when resuming (``scm/``, ``predictors/``, the diffusion checkpoint).

    Args:
        data: a ``--data`` spec of the *training* split (:data:`~pipeline.generate.DATA_SPEC_HELP`), e.g.
            ``csv:faces.csv,split=train`` or ``morpho-train``.
        graph: the causal graph (or a JSON / TOML file of it) with one image node whose shape is the images'.
        out_dir: the run directory.
        image_size: centre-crop and resize a CSV's images to ``image_size`` square pixels (``None``: as they are;
            then they must all have the graph's size).
        steps, batch_size, lr, p_attr, p_all, ema_decay, ckpt_every, precision: the image model's training
            (:class:`~diffusion.TrainConfig`; ``batch_size`` is the global batch, split over the processes).
        device: ``"cpu"``, ``"cuda"``... (``None``: CUDA when available).
        num_workers: DataLoader workers for the image model and the predictors.
        preset: a key of :data:`IMAGE_MODEL_PRESETS` (default: picked by the image size).
        predictor_epochs: epochs of the predictors.
        scm_fit: keyword arguments of :meth:`scm.SCM.fit`.
        seed: seeds everything.
        resume: reuse finished stages.
        command: the command line, recorded in the model card.
        progress: tqdm bars; ``log``: called with one-line messages.

    Returns:
        The pipeline on rank 0 (also saved to ``out_dir/pipeline``); ``None`` on the other ranks.

    Raises:
        ValueError: bad data or graph, named in one line, before anything is written.
    """
    import time

    from diffusion.distributed import setup

    from .generate import open_dataset
    from .predictors import PredictorSet, train_predictors

    log = log or (lambda s: None)
    if not isinstance(graph, CausalGraph):
        graph = read_graph(graph)
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (torch "
                         f"{torch.__version__}); use --device cpu")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision={precision!r} must be fp32, bf16 or fp16")
    if precision == "fp16" and not (device is not None and str(device).startswith("cuda")
                                    or device is None and torch.cuda.is_available()):
        raise ValueError("--precision fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
    t0 = time.perf_counter()
    dataset = open_dataset(data, graph=graph, image_size=image_size)
    shape = tuple(graph.spec(graph.image_node).shape)
    if preset is None:
        preset, backbone = image_model_preset(shape)
    elif preset in IMAGE_MODEL_PRESETS:
        backbone = {k: v for k, v in IMAGE_MODEL_PRESETS[preset].items() if k != "max_size"}
    else:
        raise ValueError(f"preset={preset!r} is not one of {sorted(IMAGE_MODEL_PRESETS)}")
    nodes = list(graph.attribute_nodes())
    attrs = {n: dataset.factual(n) for n in nodes}
    if any(v is None for v in attrs.values()):
        attrs = _read_attributes(dataset, nodes)
    image_config = image_model_config_for(graph, attrs, **backbone)
    train_config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                               dropout_mode="per_group", p_attr=p_attr, p_all=p_all, ckpt_every=ckpt_every,
                               precision=precision)

    ctx = setup(device)
    try:
        out = Path(out_dir)
        if train_config.batch_size % ctx.world_size:
            raise ValueError(f"--batch-size {batch_size} is not divisible by the {ctx.world_size} processes")
        scm_dir, pred_dir = out / "scm", out / "predictors"
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if resume and (scm_dir / "config.json").is_file():
                scm = SCM.load(scm_dir)
            else:
                log(f"fitting the SCM on {len(dataset):,} rows")
                scm = SCM(graph)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    scm.fit({n: attrs[n] for n in nodes}, progress=progress, **dict(scm_fit or {}))
                scm.save(scm_dir)
            if resume and (pred_dir / "metrics.json").is_file():
                predictors = PredictorSet.load(pred_dir)
            else:
                log(f"training {len(graph.image_parents())} predictor(s): {', '.join(graph.image_parents())}")
                predictors = train_predictors(graph, dataset, epochs=predictor_epochs, seed=seed,
                                              num_workers=num_workers, device=ctx.device, progress=progress)
                predictors.save(pred_dir)
        ctx.barrier()
        log(f"training the image model ({preset}-pixel preset) for {steps:,} steps")
        result = train_diffusion(image_config, train_config, dataset, out / "image_model_run", resume=resume,
                                 progress=progress, device=ctx.device, num_workers=num_workers)
        if not ctx.is_main:
            ctx.barrier()
            return None
        image_model = ConditionalUNet.from_pretrained(_final_model_dir(out / "image_model_run")).eval()
        losses = _loss_column(out / "image_model_run" / "loss.csv")
        card = {"command": command, "data": {**{k: v for k, v in dataset.spec.items()}, "rows": len(dataset),
                                             "image_shape": list(shape)},
                "steps": result.step, "batch_size": batch_size, "precision": precision, "preset": preset,
                "world_size": ctx.world_size, "final_loss": float(np.mean(losses[-100:])) if losses else None,
                "wall_s": round(time.perf_counter() - t0, 1)}
        pcfg = PipelineConfig(scale=2.0, dcfg_form="conditional")  # the default solver settings (docs/solvers.md)
        pipe = CounterfactualPipeline(graph, scm, image_model, pcfg, predictors=predictors, oracles="predictors",
                                      card=card)
        pipe.save(out / "pipeline")
        if losses:
            plot_training_curve(out / "image_model_run" / "loss.csv", out / "training_curve.png")
        ctx.barrier()
        return pipe
    finally:
        ctx.close()


def _read_attributes(dataset: Any, nodes: Sequence[str]) -> dict[str, Tensor]:
    rows = [dataset[i][1] for i in range(len(dataset))]
    return {n: torch.stack([torch.as_tensor(r[n]) for r in rows]) for n in nodes}


def _loss_column(loss_csv: Path) -> list[float]:
    import csv

    if not loss_csv.is_file():
        return []
    with open(loss_csv, newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def train_colour_classifier(out_dir: str | os.PathLike, image_data: Any, *, epochs: int = 12, n_images: int = 20000,
                            seed: int = 0, root: str | os.PathLike | None = None, resume: bool = True,
                            progress: bool = True):
    """The colour benchmark's digit classifier, on the saturation (the grey digit) of the training renders.

    Trained (or, when resuming, loaded) into ``out_dir/classifier`` like the Morpho-MNIST one, with small affine
    and elastic distortions; its accuracy on the saturation of the 1,000 colour test renders is recorded per epoch
    in ``classifier/history.json`` (never used for selection).
    """
    from .classifier import DigitClassifier, train_classifier
    from .datasets import MorphoColour
    from .morphometry.colour import saturation

    clf_dir = Path(out_dir) / "classifier"
    if resume and (clf_dir / "model.safetensors").is_file():
        return DigitClassifier.from_pretrained(clf_dir)
    test = MorphoColour("test", root=root, samples_per_digit=1, seed=seed + 2, attribute_sampling="scm",
                        progress=progress)
    labels = image_data.attributes["digit"]
    pick = torch.arange(len(image_data))
    if n_images < len(image_data):
        pick = torch.randperm(len(image_data), generator=torch.Generator().manual_seed(seed))[:n_images]
    images = torch.cat([saturation(image_data.images[pick[i:i + 4096]]) for i in range(0, len(pick), 4096)])
    classifier, history = train_classifier(
        images, labels[pick], epochs=epochs, elastic=0.25, max_rot_deg=8.0, seed=seed,
        val=(saturation(test.images), test.attributes["digit"]), progress=progress)
    classifier.save_pretrained(clf_dir)
    (clf_dir / "history.json").write_text(json.dumps(history, indent=2))
    return classifier


#: Guidance defaults of the bundled colour pipeline: DCFG's conditional form, the morphological
#: attributes and the digit amplified like the Morpho-MNIST pipeline's, the colours at the pipeline's scale.
MORPHO_COLOUR_GUIDANCE = dict(scale=2.0, steps=50, attribute_scales={"thickness": 2.0, "intensity": 1.0,
                                                                    "digit": 3.0}, descendant_weight=1.0,
                              dcfg_form="conditional")


def train_morpho_colour(out_dir: str | os.PathLike, *, steps: int = 12000, batch_size: int = 64,
                        samples_per_digit: int = 8, scm_samples_per_digit: int = 5, precision: str = "bf16",
                        seed: int = 0, classifier_epochs: int = 12, root: str | os.PathLike | None = None,
                        resume: bool = True, progress: bool = True, command: str | None = None
                        ) -> CounterfactualPipeline:
    """Train the colour Morpho-MNIST pipeline (the bundled ``morpho-colour`` recipe), resumably.

    * SCM data: the training digits' labels, ``scm_samples_per_digit`` draws of the benchmark's equations each.
    * Image data: :func:`morpho_colour_image_setup` (every continuous attribute drawn independently).
    * Oracles: :func:`train_colour_classifier` and the colour measurement (``oracles="morpho-colour"``).
    """
    from .datasets import colour_equations as ceq
    from .presets import morpho_colour_graph

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_data, image_config, train_config = morpho_colour_image_setup(
        steps=steps, batch_size=batch_size, samples_per_digit=samples_per_digit, seed=seed, precision=precision,
        root=root, progress=progress)
    classifier = train_colour_classifier(out, image_data, epochs=classifier_epochs, seed=seed, root=root,
                                         resume=resume, progress=progress)
    digits = _training_labels(root).repeat(scm_samples_per_digit)
    values = ceq.attributes_from_noise(digits, ceq.sample_noise(len(digits), torch.Generator().manual_seed(seed)))
    scm_data = {k: (v if k == "digit" else v.float()) for k, v in values.items()}
    scm_data["digit"] = digits
    card = {"command": command or f"dcfg train --dataset morpho-colour --out {out_dir} --steps {steps}",
            "description": "Colour Morpho-MNIST (docs/benchmark.md): six attributes, exact ground truth.",
            "data": {"spec": "morpho-colour-train", "samples_per_digit": samples_per_digit, "seed": seed + 1,
                     "rows": len(image_data)}}
    return train_pipeline(morpho_colour_graph(), scm_data, image_data, out, image_config=image_config,
                          train_config=train_config, pipeline_config=PipelineConfig(**MORPHO_COLOUR_GUIDANCE),
                          classifier=classifier, resume=resume, progress=progress, oracles="morpho-colour",
                          card=card)
