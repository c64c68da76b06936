"""Morphometry of digit images (thickness, intensity, slant) and the perturbations that set them
(``set_thickness``, ``set_intensity``, ``set_slant``).

Example:
    >>> from pipeline.datasets import load_mnist5k
    >>> from pipeline.morphometry import measure, set_thickness
    >>> images, _ = load_mnist5k()
    >>> thick = set_thickness(images[:2], 4.0, n_jobs=1)
    >>> bool((abs(measure(thick, n_jobs=1)["thickness"] - 4.0) < 0.5).all())
    True
"""
from pipeline.morphometry.measure import (
    MEASURE_SCALE,
    measure,
    measure_intensity,
    measure_slant,
    measure_thickness,
    reference_thickness,
)
from pipeline.morphometry.perturb import (
    INTENSITY_RANGE,
    PERTURB_SCALE,
    THICKNESS_RANGE,
    set_intensity,
    set_thickness,
)
from pipeline.morphometry.slant import SLANT_RANGE, set_slant

__all__ = ["MEASURE_SCALE", "measure", "measure_intensity", "measure_slant", "measure_thickness",
           "reference_thickness", "set_thickness", "set_intensity", "THICKNESS_RANGE", "INTENSITY_RANGE",
           "PERTURB_SCALE", "set_slant", "SLANT_RANGE"]
