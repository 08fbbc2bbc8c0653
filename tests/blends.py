"""Small simulated blends that share shapes, for :func:`mobs_ppl.fit_map_batch`.

Each blend is one multi-band image (0.2"/px, Gaussian PSF) of a few elliptical Gaussian
galaxies, drawn here with numpy alone: every galaxy convolved with the PSF is again a
Gaussian (covariances add), evaluated at pixel centres. Blends of different seeds
differ in the galaxies' sub-pixel positions, sizes, ellipticities, colours and fluxes,
and in the noise, but share every shape the compiled fit depends on: the image size,
the PSF stamp, the number and kind of sources, and the boxes -- an explicit
``box_size``, and initial centres within 0.3 px of the same pixels (a box's origin is
its initial centre rounded, a static part of the model).
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

import mobs_ppl as mp

#: Nominal pixel ``(y, x)`` of each galaxy: the second and third overlap the first.
NOMINAL = np.array([[12.0, 12.0], [18.0, 17.0], [13.0, 20.0], [20.0, 11.0]])
CHANNELS = ("g", "r", "i")
PSF_SIGMA = 1.2  # pixels
PSF_SIZE = 11


def _wcs(size: int) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cd = np.diag([-0.2, 0.2]) / 3600.0
    wcs.wcs.crpix = [(size - 1) / 2 + 1, (size - 1) / 2 + 1]
    wcs.wcs.set()
    return wcs


def _covariance(sigma: float, q: float, angle: float) -> np.ndarray:
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return rotation @ np.diag([sigma**2 / q, sigma**2 * q]) @ rotation.T


def blend_model(
    seed: int,
    n_sources: int = 3,
    size: int = 32,
    box_size: int = 15,
    noise: float = 0.01,
    start_offset: float = 0.3,
    start_radius: float = 1.5,
    dtype=float,
) -> mp.SceneModel:
    """A :class:`~mobs_ppl.SceneModel` of one simulated blend.

    Parameters
    ----------
    seed : int
        Seed of the galaxies and of the noise.
    n_sources : int
        Galaxies (1 to 4), at :data:`NOMINAL` plus up to 0.4 px.
    size : int
        Side of the square image, pixels.
    box_size : int
        Side of every source's box, pixels (the same for every blend).
    noise : float
        Gaussian noise sd per pixel (galaxies have total fluxes 0.5 to 2 per band).
    start_offset : float
        The fit starts within this distance (per axis, pixels) of each galaxy's
        nominal pixel; below 0.5 every blend gets the same boxes.
    start_radius : float
        Initial half-light radius of every source, pixels (true: 1.2 to 2.4).
    dtype : dtype
        Of the data, weights and PSF.
    """
    rng = np.random.default_rng(seed)
    nominal = NOMINAL[:n_sources]
    true_centres = nominal + rng.uniform(-0.4, 0.4, nominal.shape)
    yy, xx = np.mgrid[:size, :size].astype(float)
    data = np.zeros((len(CHANNELS), size, size))
    for centre in true_centres:
        sed = rng.uniform(0.5, 2.0, len(CHANNELS))
        sigma = rng.uniform(1.0, 2.0)
        cov = _covariance(sigma, rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
        cov = cov + PSF_SIGMA**2 * np.eye(2)
        inv = np.linalg.inv(cov)
        dy, dx = yy - centre[0], xx - centre[1]
        r2 = inv[0, 0] * dy**2 + 2 * inv[0, 1] * dy * dx + inv[1, 1] * dx**2
        image = np.exp(-0.5 * r2) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))
        data += sed[:, None, None] * image
    data += rng.normal(0.0, noise, data.shape)
    k = np.arange(PSF_SIZE) - PSF_SIZE // 2
    psf = np.exp(-0.5 * (k[:, None] ** 2 + k[None, :] ** 2) / PSF_SIGMA**2)
    psf = np.broadcast_to(psf / psf.sum(), (len(CHANNELS), PSF_SIZE, PSF_SIZE))
    observation = mp.Observation(
        data.astype(dtype),
        weights=np.full(data.shape, noise**-2.0, dtype=dtype),
        psf=psf.astype(dtype),
        wcs=_wcs(size),
        channels=list(CHANNELS),
        name="blend",
    )
    frame = mp.Frame.from_observations([observation])
    starts = nominal + rng.uniform(-start_offset, start_offset, nominal.shape)
    sources = [
        mp.GaussianSource(centre, np.ones(len(CHANNELS)), radius=start_radius, box_size=box_size)
        for centre in starts
    ]
    return mp.SceneModel(mp.Scene(frame, sources), [observation])
