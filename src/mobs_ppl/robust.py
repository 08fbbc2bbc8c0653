"""Robust statistics of pixel values: the sigma of the background noise under sources.

One owner of the rule: the Gaussian-consistent median absolute deviation, and its
iterated sigma clipping. Used to estimate weights (:func:`mobs_ppl.estimate_weights`),
background masks (:mod:`mobs_ppl.noise`), detection thresholds
(:mod:`mobs_ppl.detection`) and display stretches (:mod:`mobs_ppl.plot`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAD_TO_SIGMA", "clipped_statistics", "robust_sigma"]

#: The standard deviation of a Gaussian over its median absolute deviation.
MAD_TO_SIGMA = 1.4826


def robust_sigma(values) -> float:
    """Standard deviation from the median absolute deviation (1.4826 MAD), data units."""
    values = np.asarray(values, float)
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def clipped_statistics(values, n_sigma: float = 3.0, iterations: int = 5) -> tuple[float, float]:
    """Median and robust sigma of ``values`` after iterated clipping, data units.

    Each pass computes the median and :func:`robust_sigma` of the values kept so far and
    drops those further than ``n_sigma`` sigma from the median (sources); it stops when
    nothing is dropped or after ``iterations`` passes. Returns the statistics of the
    last pass.
    """
    values = np.asarray(values, float).ravel()
    median, sigma = float(np.median(values)), robust_sigma(values)
    for _ in range(iterations):
        median, sigma = float(np.median(values)), robust_sigma(values)
        keep = np.abs(values - median) < n_sigma * sigma
        if keep.all():
            break
        values = values[keep]
    return median, sigma
