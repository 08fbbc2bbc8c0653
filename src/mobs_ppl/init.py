"""Initial scenes: one non-parametric source per detection or catalogue entry.

From one observation (:func:`from_observation`) or from joint detection in several
(:func:`from_observations`).
"""

from __future__ import annotations

import warnings

import astropy.units as u
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

__all__ = ["from_observation", "from_observations"]

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


def _entries(observation, frame, catalog, image_type, n_sigma, min_area, split_peaks):
    """``(center, footprint, own)`` in the observation's pixels, one per source to make."""
    detections = detect_sources(observation, image_type, n_sigma, min_area, split_peaks=split_peaks)
    if catalog is None:
        if not detections:
            raise ValueError(
                f"no sources detected in {observation.name!r} at {n_sigma} sigma; lower "
                "n_sigma, or give a catalog"
            )
        return [(d.center, d.footprint, d.own) for d in detections]
    cat_y, cat_x = _catalog_pixels(catalog, observation, frame)
    radius = max(2.0 * _psf_width(observation), 2.0)
    entries = []
    for y, x in zip(cat_y, cat_x, strict=True):
        near = [d for d in detections if np.hypot(d.center[0] - y, d.center[1] - x) <= radius]
        if near:
            best = min(near, key=lambda d: np.hypot(d.center[0] - y, d.center[1] - x))
            footprint, own = best.footprint, best.own
        else:
            yy, xx = np.indices(observation.shape[1:])
            footprint = own = (yy - y) ** 2 + (xx - x) ** 2 <= (2 * radius) ** 2
        entries.append(((float(y), float(x)), footprint, own))
    return entries


def _psf_width(observation) -> float:
    """Gaussian-equivalent PSF width, the observation's pixels (1 without a PSF)."""
    return psf_sigma(np.asarray(observation.psf)) if observation.psf is not None else 1.0


def _make_sources(entries, observation, frame, box_growth, min_box) -> list[Source]:
    image = detection_image(observation)
    sources = []
    for center_obs, footprint, own in entries:
        morph, center = _morphology(
            image, footprint, own, center_obs, observation, frame, box_growth, min_box
        )
        sources.append(Source(np.array(center), np.ones(frame.n_channels), morph))
    return sources


def _measure_spectra(scene: Scene, observations) -> Scene:
    """Spectra by forced photometry in every observation, in turn.

    Each observation fills its own channels of the sources it sees; channels that no
    observation measured for a source get a small positive placeholder, 1e-3 of the
    channel's median measured amplitude (of all measured amplitudes for a channel no
    observation has), because spectra must stay positive.
    """
    measured = np.zeros((len(scene.sources), scene.frame.n_channels), bool)
    for observation in observations:
        mapping = scene.frame.map_channels(observation.frame)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MobsPplWarning)
            scene, amplitudes, _ = forced_photometry(scene, observation, return_covariance=True)
        seen = np.all(np.isfinite(amplitudes), axis=1)
        measured[np.ix_(seen, list(mapping))] = True
    spectra = np.stack([np.asarray(s.spectrum) for s in scene.sources])
    if np.all(measured):
        return scene
    overall = np.median(spectra[measured])
    placeholder = [
        1e-3 * (np.median(column[seen]) if np.any(seen) else overall)
        for column, seen in zip(spectra.T, measured.T, strict=True)
    ]
    spectra = np.where(measured, spectra, np.array(placeholder)[None, :])
    return scene.replace_sources(
        [s.with_spectrum(spectrum) for s, spectrum in zip(scene.sources, spectra, strict=True)]
    )


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

    See Also
    --------
    from_observations : sources from several observations (those only coarser data see).
    """
    entries = _entries(observation, frame, catalog, image_type, n_sigma, min_area, split_peaks)
    sources = _make_sources(entries, observation, frame, box_growth, min_box)
    return _measure_spectra(Scene(frame, sources), [observation])


def from_observations(
    observations,
    frame: Frame,
    image_types,
    catalog=None,
    match_radius=None,
    n_sigma: float = 5.0,
    min_area: int = 4,
    split_peaks: bool = False,
    box_growth: float = 1.5,
    min_box: int = 11,
) -> Scene:
    """A scene from joint detection in several observations.

    The first observation (typically the sharpest) gives the sources as in
    :func:`from_observation`; each later one adds the sources it detects farther than
    ``match_radius`` from every source so far -- galaxies outside the first image, or
    too faint or too diffuse in it -- with morphologies from its own image. Spectra come
    from forced photometry in every observation (each fills its own channels, blended
    sources solved together); a source an observation does not see keeps a small
    positive placeholder there.

    Parameters
    ----------
    observations : sequence of Observation or CorrelatedObservation
        Data to detect on; native (not resampled) observations detect best.
    frame : Frame
        The model frame.
    image_types : str or sequence of {"space", "ground"}
        Wavelet scales of each observation's detection (one value for all, or one per
        observation), e.g. ``["space", "ground"]`` for HST then HSC.
    catalog : SkyCoord, optional
        Known positions, used on the first observation (see :func:`from_observation`).
    match_radius : astropy Quantity (angle), optional
        A later detection within this distance of an existing source is the same
        source. Default: two PSF widths (Gaussian sigma) of that later observation.
    n_sigma, min_area, split_peaks, box_growth, min_box :
        As in :func:`from_observation`, for every observation.

    Returns
    -------
    Scene
        The first observation's sources, then the added ones in observation order.
    """
    observations = list(observations)
    if not observations:
        raise ValueError("from_observations needs at least one observation")
    if isinstance(image_types, str):
        image_types = [image_types] * len(observations)
    image_types = list(image_types)
    if len(image_types) != len(observations):
        raise ValueError(
            f"{len(image_types)} image_types for {len(observations)} observations: give one "
            "per observation, or a single value"
        )
    for observation in observations:
        if observation.wcs is None:
            raise ValueError(
                f"observation {observation.name!r} has no WCS: joint detection places the "
                "sources of different observations on the sky"
            )
    first = observations[0]
    entries = _entries(first, frame, catalog, image_types[0], n_sigma, min_area, split_peaks)
    sources = _make_sources(entries, first, frame, box_growth, min_box)
    _, height, width = frame.shape
    for observation, image_type in zip(observations[1:], image_types[1:], strict=True):
        if match_radius is None:
            scale = observation.frame.pixel_scale.to_value(u.arcsec)
            radius = 2.0 * _psf_width(observation) * scale
        else:
            radius = u.Quantity(match_radius).to_value(u.arcsec)
        known = frame.pixel_to_sky(*np.array([np.asarray(s.center) for s in sources]).T)
        detections = detect_sources(
            observation, image_type, n_sigma, min_area, split_peaks=split_peaks
        )
        new = []
        for d in detections:
            position = observation.frame.pixel_to_sky(*d.center)
            if np.min(position.separation(known).to_value(u.arcsec)) <= radius:
                continue
            y, x = frame.sky_to_pixel(position)
            if not (-0.5 <= float(y) < height - 0.5 and -0.5 <= float(x) < width - 0.5):
                continue
            new.append((d.center, d.footprint, d.own))
        sources += _make_sources(new, observation, frame, box_growth, min_box)
    return _measure_spectra(Scene(frame, sources), observations)
