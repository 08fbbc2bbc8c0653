"""Point-spread-function images: validation, re-centring, widths and Gaussian models.

A PSF image is an array ``(channels, h, w)`` (or ``(h, w)`` for all channels) in the
pixels of its own observation. Its centre is the geometric centre of the array,
``((h - 1) / 2, (w - 1) / 2)`` in 0-based pixel coordinates; the forward model places
the PSF's origin there. Images must sum to one per channel.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import erf

from . import fourier
from ._warnings import MobsPplWarning

__all__ = [
    "check_psf",
    "gaussian_psf",
    "psf_sigma",
    "psf_center",
    "nyquist_amplitude",
    "psf_light_beyond",
]

#: Largest tolerated departure of a PSF's sum from one before it is renormalised with a
#: warning. A flux error of 1e-3 is below what photometric calibration delivers, so
#: smaller departures are kept as given.
NORMALISATION_TOLERANCE = 1e-3


def psf_center(psf: np.ndarray) -> tuple[float, float]:
    """Geometric centre ``((h - 1) / 2, (w - 1) / 2)`` of a PSF image, in its pixels."""
    h, w = psf.shape[-2:]
    return (h - 1) / 2.0, (w - 1) / 2.0


def check_psf(psf, n_channels: int, *, name: str = "psf") -> np.ndarray:
    """Validate a PSF image stack and return it as a normalised, centred float array.

    Parameters
    ----------
    psf : array_like
        ``(h, w)`` (one PSF for every channel) or ``(n_channels, h, w)``.
    n_channels : int
        Number of channels of the observation.
    name : str
        Name used in messages.

    Returns
    -------
    ndarray
        ``(1 or n_channels, h, w)`` float64 array: each channel sums to one and has its
        brightest pixel within half a pixel of the array centre.

    Warns
    -----
    MobsPplWarning
        If a channel's sum departs from one by more than 1e-3 (it is renormalised), or
        if its peak is a whole pixel or more from the array centre (the image is rolled
        by whole pixels so the peak is at the centre: otherwise every rendered image
        would be displaced by that offset).
    """
    arr = np.asarray(psf, dtype=float)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (h, w) or (channels, h, w); got shape {arr.shape}")
    if arr.shape[0] not in (1, n_channels):
        raise ValueError(
            f"{name} has {arr.shape[0]} channels but the data has {n_channels}: give one "
            "PSF image per channel or a single image for all"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    out = []
    for c, image in enumerate(arr):
        total = image.sum()
        if not total > 0:
            raise ValueError(f"{name} channel {c} sums to {total:g}: a PSF must sum to one")
        if abs(total - 1.0) > NORMALISATION_TOLERANCE:
            warnings.warn(
                f"{name} channel {c} sums to {total:.6g}, not 1; it was divided by its sum",
                MobsPplWarning,
                stacklevel=3,
            )
            image = image / total
        peak = np.array(np.unravel_index(np.argmax(image), image.shape), float)
        offset = peak - np.array(psf_center(image))
        roll = np.where(np.abs(offset) > 0.5 + 1e-9, np.round(offset), 0).astype(int)
        if np.any(roll != 0):
            warnings.warn(
                f"{name} channel {c} peaks at pixel {tuple(int(p) for p in peak)}, "
                f"{tuple(int(r) for r in roll)} pixels from the array centre "
                f"{psf_center(image)}; it was rolled to put the peak at the centre",
                MobsPplWarning,
                stacklevel=3,
            )
            image = np.roll(image, tuple(-roll), axis=(0, 1))
        out.append(image)
    return np.stack(out)


def psf_sigma(psf: np.ndarray) -> float:
    """Gaussian-equivalent width of a PSF image, in its own pixels.

    Computed from the second moments of the positive part of the image within a
    radius of four times a first estimate (so that noise in the wings does not
    dominate); returns ``sqrt((Ixx + Iyy) / 2)``.
    """
    image = np.clip(np.asarray(psf, float), 0, None)
    if image.ndim == 3:
        return float(np.min([psf_sigma(p) for p in image]))
    cy, cx = psf_center(image)
    yy, xx = np.indices(image.shape, dtype=float)
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    sigma = np.sqrt(np.sum(image * r2) / image.sum() / 2)
    for _ in range(3):
        weight = image * (r2 < (4 * sigma) ** 2)
        sigma = np.sqrt(np.sum(weight * r2) / weight.sum() / 2)
    return float(sigma)


def nyquist_amplitude(psf) -> np.ndarray:
    """Largest Fourier amplitude of a PSF image on the edge of its own pixels' band.

    The forward model treats an observation's images as band-limited at the Nyquist
    frequency of its pixels (1/2 cycle per pixel). A PSF that keeps amplitude there is
    undersampled: its image is aliased, and the band-limited rendering of a point at a
    sub-pixel position rings (see :func:`mobs_ppl.renderer.point_flux_errors`).

    Parameters
    ----------
    psf : array_like
        ``(h, w)`` or ``(channels, h, w)`` PSF image(s), each summing to one.

    Returns
    -------
    ndarray
        Per channel, ``max |P(k)|`` over the frequencies with ``|k_y| = 1/2`` or
        ``|k_x| = 1/2`` (``P(0)`` is the image's sum, one). A pixel-integrated Gaussian
        of width ``sigma`` pixels has about ``0.64 exp(-pi^2 sigma^2 / 2)``: 0.29 at
        ``sigma = 0.4``, 5e-3 at 1, 1e-5 at 1.5.
    """
    arr = np.asarray(psf, float)
    if arr.ndim == 2:
        arr = arr[None]
    edge = np.array([0.5])
    freq = np.linspace(-0.5, 0.5, 65)
    # a real image's transform is Hermitian: the edges at +1/2 cover those at -1/2
    return np.array(
        [
            max(
                np.abs(fourier.image_transform(image, edge, freq)).max(),
                np.abs(fourier.image_transform(image, freq, edge)).max(),
            )
            for image in arr
        ]
    )


def psf_light_beyond(psf, half_width: float) -> np.ndarray:
    """Fraction of a PSF image's light outside the square of ``half_width`` pixels.

    Parameters
    ----------
    psf : array_like
        ``(h, w)`` or ``(channels, h, w)`` PSF image(s), each summing to one.
    half_width : float
        Half the side of the square, pixels, centred on the image's centre; pixels
        whose centres lie within it count as inside.

    Returns
    -------
    ndarray
        Per channel, ``sum |psf|`` outside the square over ``sum |psf|``.
    """
    arr = np.abs(np.asarray(psf, float))
    if arr.ndim == 2:
        arr = arr[None]
    cy, cx = psf_center(arr[0])
    yy, xx = np.indices(arr.shape[1:], dtype=float)
    inside = (np.abs(yy - cy) <= half_width) & (np.abs(xx - cx) <= half_width)
    return 1.0 - np.sum(arr * inside, axis=(1, 2)) / np.sum(arr, axis=(1, 2))


def gaussian_psf(sigma: float, size: int | None = None) -> np.ndarray:
    """Circular Gaussian integrated over square pixels, normalised to one.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels.
    size : int, optional
        Odd side length; by default ``2 * ceil(6 sigma) + 1`` (the truncated wings then
        hold less than 1e-9 of the flux).

    Returns
    -------
    ndarray
        ``(size, size)`` image centred on its middle pixel.
    """
    if size is None:
        size = 2 * int(np.ceil(6 * sigma)) + 1
    if size % 2 == 0:
        raise ValueError(f"size must be odd, got {size}")
    edges = np.arange(size + 1) - size / 2.0
    cdf = 0.5 * (1 + erf(edges / (np.sqrt(2) * sigma)))
    profile = np.diff(cdf)
    image = np.outer(profile, profile)
    return image / image.sum()
