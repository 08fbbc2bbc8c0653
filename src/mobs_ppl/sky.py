"""World-coordinate helpers: celestial WCS checks, pixel scales and pixel-to-pixel maps.

Pixel coordinates follow astropy's 0-based convention: the centre of the first pixel is
0, and arrays are indexed ``(y, x)``. Every function here returns ``(y, x)`` ordered
values even though astropy works in ``(x, y)``.
"""

from __future__ import annotations

import copy

import astropy.units as u
import numpy as np
from astropy.wcs import WCS

__all__ = [
    "celestial_wcs",
    "WCSKey",
    "pixel_scale",
    "pixel_to_pixel",
    "local_jacobian",
    "sub_grid_wcs",
    "pixel_edges",
    "pixel_ring",
    "polygon_area",
    "clip_to_grid",
]


def celestial_wcs(wcs: WCS | None, *, argument: str = "wcs") -> WCS | None:
    """Return a private copy of the two celestial axes of ``wcs``.

    A header with a third (band) axis is accepted; its celestial part is kept.

    Raises
    ------
    TypeError
        If ``wcs`` is not an ``astropy.wcs.WCS``.
    ValueError
        If it has no pair of celestial axes.
    """
    if wcs is None:
        return None
    if not isinstance(wcs, WCS):
        raise TypeError(f"{argument} must be an astropy.wcs.WCS, got {type(wcs).__name__}")
    if not wcs.has_celestial:
        raise ValueError(
            f"{argument} has no celestial axes (CTYPE {list(wcs.wcs.ctype)}); "
            "give a WCS with RA/Dec (or GLON/GLAT) axes"
        )
    return copy.deepcopy(wcs.celestial)


class WCSKey:
    """A WCS held by a compiled module, equal to another that maps pixels the same way.

    Frames keep their WCS in a static (hashed) field: JAX reuses a compiled function for
    a new argument only when its static fields compare equal. An astropy ``WCS``
    compares by identity, so a model rebuilt from the same data (a re-run notebook cell,
    a second field with the same geometry) recompiled every function, minutes on a real
    scene. Two keys are equal when their WCS have the same FITS header (SIP terms
    included) and pixel shape. A WCS with lookup-table distortions, which a header does
    not carry, is equal only to itself.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        The WCS, not copied: the owner keeps it private and unchanged.
    """

    __slots__ = ("wcs", "_fingerprint")

    def __init__(self, wcs: WCS):
        self.wcs = wcs
        tables = (wcs.cpdis1, wcs.cpdis2, wcs.det2im1, wcs.det2im2)
        if any(t is not None for t in tables):
            self._fingerprint = None
        else:
            self._fingerprint = (wcs.to_header_string(relax=True), wcs.pixel_shape)

    def __eq__(self, other) -> bool:
        if not isinstance(other, WCSKey):
            return NotImplemented
        if self.wcs is other.wcs:
            return True
        return self._fingerprint is not None and self._fingerprint == other._fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint) if self._fingerprint is not None else id(self.wcs)

    def __repr__(self) -> str:
        return f"WCSKey({self.wcs!r})"


def pixel_scale(wcs: WCS) -> u.Quantity:
    """Mean pixel scale of a celestial WCS, in arcsec per pixel.

    Uses astropy's projection-plane scales, which combine CD, PC and CDELT correctly
    (a header that gives only CDELT is read like one with a CD matrix).
    """
    scales = wcs.proj_plane_pixel_scales()
    values = [s.to_value(u.arcsec) for s in scales]
    return float(np.sqrt(values[0] * values[1])) * u.arcsec


def pixel_to_pixel(
    wcs_from: WCS, wcs_to: WCS, y: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Map pixel positions of one celestial WCS into the pixels of another.

    Parameters
    ----------
    wcs_from, wcs_to : WCS
        Celestial WCS of the source and target grids.
    y, x : array_like
        Pixel coordinates in ``wcs_from`` (0-based, pixel centres are integers).

    Returns
    -------
    y, x : ndarray
        The same sky positions in pixels of ``wcs_to``; different celestial frames
        (ICRS, FK5, ...) are converted through ``SkyCoord``.
    """
    sky = wcs_from.pixel_to_world(np.asarray(x, float), np.asarray(y, float))
    xt, yt = wcs_to.world_to_pixel(sky)
    return np.asarray(yt, float), np.asarray(xt, float)


def local_jacobian(wcs_from: WCS, wcs_to: WCS, y: float, x: float) -> np.ndarray:
    """2x2 matrix of derivatives d(pixel_to)/d(pixel_from) at one point, in (y, x) order.

    Central differences with a step of one pixel: for the smooth projections of
    celestial WCS the truncation error is of order (pixel / field radius)^2, far below
    1e-9 in practice.
    """
    step = 1.0
    ys = np.array([y + step, y - step, y, y])
    xs = np.array([x, x, x + step, x - step])
    yt, xt = pixel_to_pixel(wcs_from, wcs_to, ys, xs)
    jac = np.array(
        [
            [(yt[0] - yt[1]) / (2 * step), (yt[2] - yt[3]) / (2 * step)],
            [(xt[0] - xt[1]) / (2 * step), (xt[2] - xt[3]) / (2 * step)],
        ]
    )
    return jac


def sub_grid_wcs(wcs: WCS, y0: int, x0: int) -> WCS:
    """The WCS of the pixel grid whose first pixel is pixel ``(y0, x0)`` of ``wcs``'s grid.

    A cut-out (``image[y0:, x0:]``) or a box of a larger frame: the same projection with
    the reference pixel moved by ``(-x0, -y0)``. ``wcs`` is not modified.
    """
    out = copy.deepcopy(wcs)
    out.wcs.crpix = out.wcs.crpix - np.array([x0, y0], float)
    out.wcs.set()
    return out


def pixel_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Points along the outer edge of a ``height x width`` pixel grid, (y, x).

    The edge runs through the pixel corners (``-0.5`` and ``n - 0.5``), sampled every
    pixel so that the footprint of a rotated or distorted grid is traced closely.
    """
    ys = np.arange(-0.5, height, 1.0)
    xs = np.arange(-0.5, width, 1.0)
    top = np.stack([np.full_like(xs, -0.5), xs])
    bottom = np.stack([np.full_like(xs, height - 0.5), xs])
    left = np.stack([ys, np.full_like(ys, -0.5)])
    right = np.stack([ys, np.full_like(ys, width - 0.5)])
    edge = np.concatenate([top, bottom, left, right], axis=1)
    return edge[0], edge[1]


def pixel_ring(height: int, width: int, points_per_side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The outer edge of a ``height x width`` pixel grid as a closed ring, (y, x).

    Unlike :func:`pixel_edges` the points run in order around the grid (corners
    included, the first not repeated), so that the ring is a polygon; each side is
    sampled at ``points_per_side`` points so that a distorted grid is traced closely.
    """
    ys = np.linspace(-0.5, height - 0.5, points_per_side + 1)
    xs = np.linspace(-0.5, width - 0.5, points_per_side + 1)
    top = np.stack([np.full_like(xs, -0.5), xs])[:, :-1]
    right = np.stack([ys, np.full_like(ys, width - 0.5)])[:, :-1]
    bottom = np.stack([np.full_like(xs, height - 0.5), xs[::-1]])[:, :-1]
    left = np.stack([ys[::-1], np.full_like(ys, -0.5)])[:, :-1]
    ring = np.concatenate([top, right, bottom, left], axis=1)
    return ring[0], ring[1]


def polygon_area(y: np.ndarray, x: np.ndarray) -> float:
    """Area of a simple polygon (shoelace formula), whatever its orientation."""
    y, x = np.asarray(y, float), np.asarray(x, float)
    if y.size < 3:
        return 0.0
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def clip_to_grid(y, x, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of a polygon inside a ``height x width`` pixel grid (Sutherland-Hodgman).

    Parameters
    ----------
    y, x : array_like
        Vertices of a simple polygon, in the grid's pixel coordinates.
    height, width : int
        The grid: pixel edges run from ``-0.5`` to ``height - 0.5`` (``width - 0.5``).

    Returns
    -------
    y, x : ndarray
        Vertices of the clipped polygon (empty when the two do not meet).
    """
    points = np.stack([np.asarray(y, float), np.asarray(x, float)], axis=1)
    # each boundary as (axis, limit, keep values above the limit)
    for axis, limit, above in (
        (0, -0.5, True),
        (0, height - 0.5, False),
        (1, -0.5, True),
        (1, width - 0.5, False),
    ):
        if len(points) == 0:
            break
        side = points[:, axis] - limit if above else limit - points[:, axis]
        kept = []
        for i in range(len(points)):
            j = (i + 1) % len(points)
            if side[i] >= 0:
                kept.append(points[i])
            if (side[i] >= 0) != (side[j] >= 0):
                t = side[i] / (side[i] - side[j])
                kept.append(points[i] + t * (points[j] - points[i]))
        points = np.array(kept).reshape(-1, 2)
    return points[:, 0], points[:, 1]
