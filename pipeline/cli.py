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


@main.group()
def data() -> None:
    """Inspect the bundled Morpho-MNIST benchmark data."""


if __name__ == "__main__":  # pragma: no cover - `python -m pipeline.cli`
    main()
