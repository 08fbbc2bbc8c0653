"""Residual diagnostics shared by the COSMOS and GalSim tests: the dipole of a residual.

``D = sum_b |sum_p r_b(p) (p - c)| / sum_b sum_p |m_b(p)|`` over the pixels ``p`` within
``radius`` pixels of ``c``, with ``r = data - model`` and ``m`` the model, both in the
observation's own pixels. A model displaced by ``a`` pixels from the data gives
``D ~ |a|``; a residual of pure noise gives :func:`dipole_noise_floor`.
"""

from __future__ import annotations

import numpy as np


def _disc(observation, centre, radius):
    yy, xx = np.indices(observation.shape[1:], dtype=float)
    dy, dx = yy - centre[0], xx - centre[1]
    return dy, dx, dy**2 + dx**2 <= radius**2


def residual_dipole(observation, prediction, centre, radius=4.0):
    """``D`` and the ``(bands, 2)`` per-band dipole vectors ``(dy, dx)``, pixels."""
    dy, dx, inside = _disc(observation, centre, radius)
    residual = np.asarray(observation.data) - prediction
    vectors = np.array([[(r * dy)[inside].sum(), (r * dx)[inside].sum()] for r in residual])
    total = np.abs(prediction[:, inside]).sum()
    per_band = vectors / np.abs(prediction[:, inside]).sum(axis=1)[:, None]
    return float(np.hypot(*vectors.T).sum() / total), per_band


def dipole_noise_floor(observation, centre, radius=4.0):
    """Expected ``D`` of a residual that is pure noise (independent pixels, weights).

    Each band's dipole vector then has two independent normal components of the same
    sd, so its expected length is that sd times ``sqrt(pi / 2)``.
    """
    dy, dx, inside = _disc(observation, centre, radius)
    variance = 1.0 / np.asarray(observation.weights)[:, inside]
    sd = np.sqrt(0.5 * (variance * (dy[inside] ** 2 + dx[inside] ** 2)).sum(axis=1))
    total = np.abs(np.asarray(observation.data)[:, inside]).sum()
    return float(np.sqrt(np.pi / 2) * sd.sum() / total)
