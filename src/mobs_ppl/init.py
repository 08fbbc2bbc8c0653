"""Initial scenes from data: one non-parametric source per detection or catalogue entry."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from . import sky
from ._warnings import MobsPplWarning
from .detection import detect_sources, detection_image
from .frame import Frame
from .measure import forced_photometry
from .psf import psf_sigma
from .scene import Scene
from .sources import Source

__all__ = ["from_observation"]

#: Morphology values are kept this far inside (0, 1), the support of their prior.
MORPHOLOGY_MARGIN = 1e-4


def _catalog_pixels(catalog, observation, frame):
    y, x = observation.frame.sky_to_pixel(catalog)
    y, x = np.atleast_1d(y), np.atleast_1d(x)
    ym, xm = frame.sky_to_pixel(catalog)
    ym, xm = np.atleast_1d(ym), np.atleast_1d(xm)
    _, h, w = frame.shape
    _, ho, wo = observation.shape
    inside = (ym > -0.5) & (ym < h - 0.5) & (xm > -0.5) & (xm < w - 0.5)
    inside &= (y > -0.5) & (y < ho - 0.5) & (x > -0.5) & (x < wo - 0.5)
    if not np.all(inside):
        warnings.warn(
            f"catalogue entries {np.nonzero(~inside)[0].tolist()} lie outside the model frame "
            "or the observation and were skipped",
            MobsPplWarning,
            stacklevel=3,
        )
    if not np.any(inside):
        raise ValueError("no catalogue position lies inside both the observation and the frame")
    return y[inside], x[inside]


def _morphology(image, footprint, own, center_obs, observation, frame, growth, min_box):
    """Morphology box in model pixels from the observation's image around a source.

    The box spans the (possibly shared) footprint grown by ``growth``; the values come
    from the part of it that belongs to this peak, so blended neighbours start with
    distinct morphologies.
    """
    ys, xs = np.nonzero(footprint)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    jac = (
        sky.local_jacobian(observation.wcs, frame.wcs, *center_obs)
        if observation.wcs is not None
        else np.eye(2)
    )
    scale = float(np.sqrt(abs(np.linalg.det(jac))))
    size = max(int(np.ceil(extent * growth * scale)), min_box) | 1
    grown = ndimage.binary_dilation(own, iterations=2)
    masked = np.where(grown, np.clip(image, 0, None), 0.0)
    # model-frame pixel positions of the box, mapped back into the observation
    if observation.wcs is not None:
        cy, cx = frame.sky_to_pixel(observation.frame.pixel_to_sky(*center_obs))
        cy, cx = float(cy), float(cx)
    else:
        cy, cx = center_obs
    y0, x0 = int(np.round(cy)) - size // 2, int(np.round(cx)) - size // 2
    yy, xx = np.mgrid[y0 : y0 + size, x0 : x0 + size].astype(float)
    if observation.wcs is not None:
        yo, xo = sky.pixel_to_pixel(frame.wcs, observation.wcs, yy.ravel(), xx.ravel())
    else:
        yo, xo = yy.ravel(), xx.ravel()
    values = ndimage.map_coordinates(masked, [yo, xo], order=1, mode="constant").reshape(size, size)
    peak = values.max()
    if not peak > 0:
        values = np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * scale) ** 2)
        peak = values.max()
    return np.clip(values / peak, MORPHOLOGY_MARGIN, 1 - MORPHOLOGY_MARGIN), (cy, cx)


def from_observation(
    observation,
    frame: Frame,
    catalog=None,
    image_type: str = "space",
    n_sigma: float = 5.0,
    min_area: int = 4,
    split_peaks: bool = False,
    box_growth: float = 1.5,
    min_box: int = 11,
) -> Scene:
    """A scene with one source per detection (or per catalogue entry) in an observation.

    Parameters
    ----------
    observation : Observation or CorrelatedObservation
        Data to detect on (typically the sharpest, e.g. HST).
    frame : Frame
        The model frame.
    catalog : SkyCoord, optional
        Known source positions: one source per entry inside the frame, with the
        footprint of the nearest detection within two PSF widths, or a compact one
        where nothing was detected.
    image_type : {"space", "ground"}
        Wavelet scales adapted to the PSF (see :mod:`mobs_ppl.detection`).
    n_sigma, min_area, split_peaks :
        Detection settings (see :func:`mobs_ppl.detection.detect_sources`).
    box_growth : float
        Morphology boxes are this many times the footprint's extent, so that the fit
        can reach the faint outskirts that deeper data show.
    min_box : int
        Smallest box side, model pixels.

    Returns
    -------
    Scene
        Centres from the peaks, morphologies from the detection footprints (values
        strictly inside (0, 1)), spectra from forced photometry in the observation's
        channels and a small positive placeholder in the frame's other channels
        (fill those with :func:`mobs_ppl.measure.forced_photometry`).
    """
    detections = detect_sources(observation, image_type, n_sigma, min_area, split_peaks=split_peaks)
    image = detection_image(observation)
    if catalog is not None:
        cat_y, cat_x = _catalog_pixels(catalog, observation, frame)
        width = psf_sigma(np.asarray(observation.psf)) if observation.psf is not None else 1.0
        radius = max(2.0 * width, 2.0)
        entries = []
        for y, x in zip(cat_y, cat_x, strict=True):
            near = [d for d in detections if np.hypot(d.center[0] - y, d.center[1] - x) <= radius]
            if near:
                best = min(near, key=lambda d: np.hypot(d.center[0] - y, d.center[1] - x))
                footprint, own = best.footprint, best.own
            else:
                yy, xx = np.indices(image.shape)
                footprint = own = (yy - y) ** 2 + (xx - x) ** 2 <= (2 * radius) ** 2
            entries.append(((float(y), float(x)), footprint, own))
    else:
        if not detections:
            raise ValueError(
                f"no sources detected in {observation.name!r} at {n_sigma} sigma; lower "
                "n_sigma, or give a catalog"
            )
        entries = [(d.center, d.footprint, d.own) for d in detections]
    sources = []
    channels = frame.n_channels
    for center_obs, footprint, own in entries:
        morph, center = _morphology(
            image, footprint, own, center_obs, observation, frame, box_growth, min_box
        )
        sources.append(Source(np.array(center), np.ones(channels), morph))
    scene = Scene(frame, sources)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MobsPplWarning)
        scene = forced_photometry(scene, observation)
    # channels this observation does not see: a small positive placeholder
    mapping = frame.map_channels(observation.frame)
    others = [c for c in range(channels) if c not in mapping]
    if others:
        known = np.stack([np.asarray(s.spectrum)[list(mapping)] for s in scene.sources])
        placeholder = 1e-3 * float(np.median(known))
        replaced = []
        for s in scene.sources:
            spectrum = np.asarray(s.spectrum).copy()
            spectrum[others] = placeholder
            replaced.append(s.with_spectrum(spectrum))
        scene = scene.replace_sources(replaced)
    return scene
