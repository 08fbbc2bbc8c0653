"""Multi-scale source detection with the starlet (isotropic undecimated wavelet) transform.

The detection image is the inverse-variance weighted sum of an observation's channels,
in units of its noise; for several observations (e.g. epochs of the same bands) the
weighted sums of the later ones are resampled onto the first one's grid (band-limited
interpolation, :mod:`mobs_ppl.resample`) and added, with their noise variance, before
the division: all observations of a band then contribute to one detection. The
starlet transform (a trous algorithm with the B3-spline kernel ``[1, 4, 6, 4, 1] / 16``)
splits it into scales of 1, 2, 4, ... pixels; a pixel is significant at a scale when
its coefficient exceeds ``n_sigma`` times that scale's noise (measured by a robust
sigma). Sources are connected regions of significant pixels (at least ``min_area``)
and their peaks.

``image_type`` adapts the scales to the PSF: "space" data (PSF of one to a few pixels)
use the finest scale; "ground" data (PSF of several pixels) start at the scale closest
to the PSF width, so that pixel noise does not make spurious detections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from . import sky
from .psf import psf_sigma
from .resample import build_resampler
from .robust import robust_sigma

__all__ = [
    "DEBLEND_SIGMA",
    "Detection",
    "detect_sources",
    "detection_image",
    "robust_sigma",
    "starlet_transform",
]

_B3 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0

#: Default ``deblend_sigma`` of :func:`detect_sources`. On the COSMOS HST image the dips
#: between the peaks of one compact, knotty galaxy are 1.0-2.6 times the noise of the
#: smoothed image, those between distinct galaxies 4.8 and more.
DEBLEND_SIGMA = 3.0


def starlet_transform(image: np.ndarray, scales: int) -> np.ndarray:
    """Starlet coefficients ``(scales + 1, H, W)``: wavelet planes then the smooth residual.

    The planes sum back to the image exactly.
    """
    image = np.asarray(image, float)
    planes = []
    current = image
    for j in range(scales):
        step = 2**j
        kernel = np.zeros(4 * step + 1)
        kernel[::step] = _B3
        smooth = ndimage.convolve1d(current, kernel, axis=0, mode="reflect")
        smooth = ndimage.convolve1d(smooth, kernel, axis=1, mode="reflect")
        planes.append(current - smooth)
        current = smooth
    planes.append(current)
    return np.stack(planes)


def _smoothing_matrices(n: int, scales: int) -> list[np.ndarray]:
    """1-D matrices of the cumulative B3 smoothing (reflected boundary) per level."""
    out = [np.eye(n)]
    current = np.eye(n)
    for j in range(scales):
        step = 2**j
        kernel = np.zeros(4 * step + 1)
        kernel[::step] = _B3
        current = ndimage.convolve1d(current, kernel, axis=0, mode="reflect")
        out.append(current)
    return out


def _noise_profiles(shape, scales: int) -> list[np.ndarray]:
    """Relative noise of each starlet plane for white noise, per pixel (median 1).

    Plane ``j`` is ``(A_j - A_{j+1}) x (A_j - A_{j+1})``-like in 2-D: with 1-D smoothing
    matrices ``A`` the variance of ``S_j - S_{j+1}`` (``S = A (x) A``) at each pixel is
    ``d(A_j A_j^T)^2 - 2 d(A_j A_{j+1}^T)^2 + d(A_{j+1} A_{j+1}^T)^2`` (outer products of
    the diagonals), computed exactly.
    """
    ay = _smoothing_matrices(shape[0], scales)
    ax = _smoothing_matrices(shape[1], scales)
    out = []
    for j in range(scales):

        def diag(a, b):
            return np.einsum("ij,ij->i", a, b)

        var = (
            np.outer(diag(ay[j], ay[j]), diag(ax[j], ax[j]))
            - 2 * np.outer(diag(ay[j], ay[j + 1]), diag(ax[j], ax[j + 1]))
            + np.outer(diag(ay[j + 1], ay[j + 1]), diag(ax[j + 1], ax[j + 1]))
        )
        profile = np.sqrt(np.clip(var, 1e-30, None))
        out.append(profile / np.median(profile))
    return out


def _weighted_sum(observation) -> tuple[np.ndarray, np.ndarray]:
    """``sum_c w d`` and its variance ``sum_c w`` (independent pixels), ``(H, W)`` each."""
    data = np.asarray(observation.data, float)
    weights = np.asarray(observation.weights, float)
    return np.sum(weights * data, axis=0), np.sum(weights, axis=0)


def _on_grid(observation, frame) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_weighted_sum` of ``observation`` resampled onto the pixels of ``frame``.

    Zero (no signal, no variance) at pixels of ``frame`` whose centre lies outside the
    observation's image, where the periodic interpolant would repeat the far edge.
    """
    total, variance = _weighted_sum(observation)
    shape = frame.shape[1:]
    resampler = build_resampler(observation.frame, frame.wcs, shape)
    yy, xx = np.indices(shape, dtype=float)
    y, x = sky.pixel_to_pixel(frame.wcs, observation.wcs, yy.ravel(), xx.ravel())
    _, h, w = observation.shape
    inside = ((y > -0.5) & (y < h - 0.5) & (x > -0.5) & (x < w - 0.5)).reshape(shape)
    total = np.asarray(resampler(total[None]))[0]
    variance = np.asarray(resampler.variance(variance[None]))[0]
    return np.where(inside, total, 0.0), np.where(inside, variance, 0.0)


def detection_image(observation) -> np.ndarray:
    """Channel sum weighted by inverse variance, divided by its noise (S/N per pixel).

    Parameters
    ----------
    observation : Observation, CorrelatedObservation, or a sequence of them
        For a sequence (several epochs of a field), the image is on the first one's
        pixels: every later observation's weighted sum and its variance are resampled
        onto them and added (only where its image covers them), so that the S/N of a
        source seen by all of them grows as in a stack. The resampled noise is
        correlated between pixels; :func:`detect_sources` measures the noise of every
        wavelet scale from the image itself.
    """
    observations = list(observation) if isinstance(observation, Sequence) else [observation]
    if not observations:
        raise ValueError("detection_image needs at least one observation")
    total, variance = _weighted_sum(observations[0])
    for later in observations[1:]:
        if later.wcs is None or observations[0].wcs is None:
            raise ValueError(
                "detection on several observations needs the WCS of each, to bring them "
                f"onto the pixels of the first ({observations[0].name!r})"
            )
        t, v = _on_grid(later, observations[0].frame)
        total, variance = total + t, variance + v
    return np.where(variance > 0, total / np.sqrt(np.where(variance > 0, variance, 1.0)), 0.0)


@dataclasses.dataclass(frozen=True)
class Detection:
    """A detected source, in the pixels of the observation it was found in.

    Attributes
    ----------
    center : tuple of float
        ``(y, x)`` of the peak (intensity-weighted within the 3x3 peak pixels).
    peak : float
        Detection significance at the peak (S/N of the detection image).
    footprint : ndarray of bool
        ``(H, W)`` mask of the source's footprint (shared by blended peaks unless
        ``split_peaks``).
    own : ndarray of bool
        The part of the footprint closer to this peak than to any other peak of it
        (equal to ``footprint`` for an isolated source).
    bbox : tuple of int
        ``(y0, y1, x0, x1)`` inclusive box of the footprint.
    """

    center: tuple[float, float]
    peak: float
    footprint: np.ndarray
    own: np.ndarray
    bbox: tuple[int, int, int, int]


def _first_scale(observation, image_type: str) -> int:
    if image_type == "space":
        return 0
    if image_type != "ground":
        raise ValueError(f"image_type must be 'space' or 'ground'; got {image_type!r}")
    if observation.psf is None:
        return 1
    sigma = psf_sigma(np.asarray(observation.psf))
    # scale j responds to structures of ~2^j pixels; start near the PSF width
    return int(np.clip(np.floor(np.log2(max(sigma, 1.0))), 1, 3))


def detect_sources(
    observation,
    image_type: str = "space",
    n_sigma: float = 5.0,
    min_area: int = 4,
    scales: int = 4,
    split_peaks: bool = True,
    deblend_sigma: float = DEBLEND_SIGMA,
) -> list[Detection]:
    """Detect sources in an observation.

    Parameters
    ----------
    observation : Observation or CorrelatedObservation, or a sequence of them
        Data and weights. A sequence (e.g. the epochs of one band) is detected on
        jointly, on the first one's pixels (see :func:`detection_image`), whose PSF
        sets the scales of ``image_type``.
    image_type : {"space", "ground"}
        Adapts the finest wavelet scale used to the PSF width (see module docstring).
    n_sigma : float
        Significance threshold per wavelet scale.
    min_area : int
        Smallest footprint, pixels.
    scales : int
        Number of wavelet scales.
    split_peaks : bool
        Split a footprint with several peaks between them (each pixel goes to the peak
        it is closest to); otherwise the peaks share the whole footprint (blends).
    deblend_sigma : float
        A fainter peak of a footprint is a source of its own only if the image dips
        between it and every brighter source peak by more than this many times the
        noise of the smoothed image (the dip: the fainter peak's value minus the
        lowest value on the straight line between the two). Knots of one galaxy dip
        less and stay one source; see :data:`DEBLEND_SIGMA`.

    Returns
    -------
    list of Detection
        Brightest first, in the pixels of the (first) observation.
    """
    image = detection_image(observation)
    reference = observation[0] if isinstance(observation, Sequence) else observation
    if not np.any(image != 0):
        raise ValueError(f"observation {reference.name!r} has no data to detect on (all zero)")
    coefficients = starlet_transform(image, scales)
    first = _first_scale(reference, image_type)
    significant = np.zeros(image.shape, bool)
    profiles = _noise_profiles(image.shape, scales)
    for j in range(first, scales):
        plane = coefficients[j]
        # the coefficients' noise grows near the borders (reflected boundary): scale the
        # robust sigma of the plane by the exact relative noise profile of the transform
        relative = profiles[j]
        sigma = robust_sigma(plane / relative)
        significant |= plane > n_sigma * sigma * relative
    labels, count = ndimage.label(significant)
    # peaks of the image smoothed to the first scale used
    smooth = image - coefficients[:first].sum(axis=0) if first > 0 else image
    smooth = ndimage.gaussian_filter(smooth, 1.0)
    smooth_noise = robust_sigma(smooth)
    maxima = (smooth == ndimage.maximum_filter(smooth, size=5)) & significant
    detections = []
    for index in range(1, count + 1):
        region = labels == index
        if region.sum() < min_area:
            continue
        ys, xs = np.nonzero(maxima & region)
        if len(ys) == 0:
            continue
        order = np.argsort(-smooth[ys, xs])
        peaks = _separate_peaks(
            smooth, [(ys[k], xs[k]) for k in order], deblend_sigma * smooth_noise
        )
        yy, xx = np.nonzero(region)
        distance = np.stack([(yy - py) ** 2 + (xx - px) ** 2 for py, px in peaks])
        owner = np.argmin(distance, axis=0)
        parts = []
        for k in range(len(peaks)):
            part = np.zeros(image.shape, bool)
            part[yy[owner == k], xx[owner == k]] = True
            parts.append(part)
        for (py, px), part in zip(peaks, parts, strict=True):
            if part.sum() < min_area:
                continue
            footprint = part if split_peaks else region
            detections.append(_detection(smooth, image, py, px, footprint, part))
    detections.sort(key=lambda d: -d.peak)
    return detections


def _dip(image, a, b) -> float:
    """How far the image falls below the fainter of two pixels on the line between them."""
    distance = float(np.hypot(a[0] - b[0], a[1] - b[1]))
    t = np.linspace(0.0, 1.0, max(int(4 * distance), 2) + 1)
    ys = a[0] + t * (b[0] - a[0])
    xs = a[1] + t * (b[1] - a[1])
    profile = ndimage.map_coordinates(image, [ys, xs], order=1)
    return float(min(image[a], image[b]) - profile.min())


def _separate_peaks(image, peaks, threshold):
    """The peaks (brightest first) that dip by more than ``threshold`` from brighter ones.

    A peak whose dip to some brighter kept peak is smaller belongs to that peak's source
    (a knot, a spiral arm or a noise bump of the same galaxy).
    """
    kept = []
    for peak in peaks:
        if all(_dip(image, other, peak) > threshold for other in kept):
            kept.append(peak)
    return kept


def _peak_offset(minus, centre, plus) -> float:
    """Sub-pixel offset of a peak from three samples, by a parabola through their logs.

    Exact for a Gaussian profile (whose log is a parabola); the result is clipped to
    half a pixel.
    """
    values = np.log(np.clip([minus, centre, plus], 1e-300, None))
    curvature = values[0] - 2 * values[1] + values[2]
    if not curvature < 0:
        return 0.0
    return float(np.clip(0.5 * (values[0] - values[2]) / curvature, -0.5, 0.5))


def _detection(smooth, image, py, px, footprint, own) -> Detection:
    h, w = smooth.shape
    dy = dx = 0.0
    if 0 < py < h - 1:
        dy = _peak_offset(smooth[py - 1, px], smooth[py, px], smooth[py + 1, px])
    if 0 < px < w - 1:
        dx = _peak_offset(smooth[py, px - 1], smooth[py, px], smooth[py, px + 1])
    ys, xs = np.nonzero(footprint)
    return Detection(
        center=(py + dy, px + dx),
        peak=float(image[py, px]),
        footprint=footprint,
        own=own,
        bbox=(int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())),
    )
