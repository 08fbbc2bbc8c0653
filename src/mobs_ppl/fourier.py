"""Fourier-space building blocks of the forward model (NumPy, used at set-up time).

Conventions: frequencies are in cycles per pixel of the grid named in each function,
``(y, x)`` order; the Fourier transform of an image ``f`` is
``F(k) = sum_n f[n] exp(-2 pi i k . (n - c))`` with ``c`` the image's reference point.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "fast_size",
    "periodic_sinc",
    "interpolation_matrix",
    "image_transform",
    "visible_band",
]

_CHUNK = 4096


def fast_size(n: int, even: bool = True) -> int:
    """Smallest integer >= ``n`` whose prime factors are 2, 3 and 5 (even if asked).

    FFTs of such lengths are fast; even lengths keep the real-FFT layout simple.
    """
    n = max(int(np.ceil(n)), 2)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1 and (not even or n % 2 == 0):
            return n
        n += 1


def periodic_sinc(t: np.ndarray, n: int) -> np.ndarray:
    """Interpolation kernel of a band-limited signal sampled ``n`` times per period.

    ``sum_m f[m] * periodic_sinc(t - m, n)`` is the trigonometric interpolant of the
    samples ``f[m]`` at position ``t`` (grid units). It is exact for signals without
    power at or above the Nyquist frequency of the grid. For even ``n`` the Nyquist
    term is the cosine one (``sin(pi t) / (n tan(pi t / n))``), for odd ``n`` the kernel
    is the Dirichlet kernel ``sin(pi t) / (n sin(pi t / n))``.
    """
    t = np.asarray(t, float)
    t = (t + n / 2.0) % n - n / 2.0
    small = np.abs(t) < 1e-12
    ts = np.where(small, 1.0, t)
    if n % 2 == 0:
        value = np.sin(np.pi * ts) / (n * np.tan(np.pi * ts / n))
    else:
        value = np.sin(np.pi * ts) / (n * np.sin(np.pi * ts / n))
    return np.where(small, 1.0, value)


def interpolation_matrix(positions: np.ndarray, n: int) -> np.ndarray:
    """Matrix ``W`` with ``W[p, m] = periodic_sinc(positions[p] - m, n)``."""
    positions = np.asarray(positions, float).ravel()
    return periodic_sinc(positions[:, None] - np.arange(n)[None, :], n)


def image_transform(image: np.ndarray, freq_y, freq_x, jacobian=None, where=None) -> np.ndarray:
    """Fourier transform of an image, evaluated on a grid of another frame's frequencies.

    Parameters
    ----------
    image : ndarray
        ``(h, w)`` image; its reference point is the array centre ``((h-1)/2, (w-1)/2)``.
    freq_y, freq_x : ndarray
        Frequencies of the target grid, cycles per target pixel; the result is on the
        outer grid ``(len(freq_y), len(freq_x))``.
    jacobian : ndarray, optional
        ``(2, 2)`` matrix taking pixel offsets of the image's grid to offsets of the
        target grid; identity by default. The image's own frequencies are
        ``jacobian.T @ k``.
    where : ndarray of bool, optional
        Only these frequencies are needed (the others are returned as zero); saves
        time when the grids are not aligned.

    Returns
    -------
    ndarray
        Complex ``(len(freq_y), len(freq_x))`` array.
    """
    image = np.asarray(image, float)
    h, w = image.shape
    ay = np.arange(h) - (h - 1) / 2.0
    ax = np.arange(w) - (w - 1) / 2.0
    freq_y = np.asarray(freq_y, float)
    freq_x = np.asarray(freq_x, float)
    jac = np.eye(2) if jacobian is None else np.asarray(jacobian, float)
    # phase neglected by treating the grids as aligned, at the largest frequency and
    # image offset; below 1e-10 radians it is far under round-off of the result
    cross = (
        2
        * np.pi
        * (
            abs(jac[0, 1]) * np.abs(freq_y).max() * np.abs(ax).max()
            + abs(jac[1, 0]) * np.abs(freq_x).max() * np.abs(ay).max()
        )
    )
    if cross < 1e-10:
        # axis-aligned: the transform factorises into two small matrix products
        ey = np.exp(-2j * np.pi * np.outer(jac[0, 0] * freq_y, ay))
        ex = np.exp(-2j * np.pi * np.outer(jac[1, 1] * freq_x, ax))
        return ey @ image @ ex.T
    ky, kx = np.meshgrid(freq_y, freq_x, indexing="ij")
    selected = np.ones(ky.shape, bool) if where is None else np.asarray(where, bool)
    ky_img = jac[0, 0] * ky[selected] + jac[1, 0] * kx[selected]
    kx_img = jac[0, 1] * ky[selected] + jac[1, 1] * kx[selected]
    values = np.empty(ky_img.size, complex)
    for start in range(0, ky_img.size, _CHUNK):
        stop = start + _CHUNK
        ey = np.exp(-2j * np.pi * np.outer(ky_img[start:stop], ay))
        ex = np.exp(-2j * np.pi * np.outer(kx_img[start:stop], ax))
        values[start:stop] = np.sum(ey * (ex @ image.T), axis=1)
    out = np.zeros(ky.shape, complex)
    out[selected] = values
    return out


def visible_band(jacobian: np.ndarray, freq_y: np.ndarray, freq_x: np.ndarray) -> np.ndarray:
    """Which frequencies of a grid the pixels of another (coarser or rotated) grid resolve.

    Parameters
    ----------
    jacobian : ndarray
        ``(2, 2)`` matrix, ``(y, x)`` order, taking pixel offsets of the resolving
        grid (the observation's native pixels) to pixel offsets of the grid whose
        frequencies are tested.
    freq_y, freq_x : ndarray
        Frequencies in cycles per pixel of the tested grid, broadcast against each
        other (e.g. the two outputs of ``np.meshgrid(..., indexing="ij")``).

    Returns
    -------
    ndarray of bool
        ``|J^T k| <= 1/2`` on both native axes (the native Nyquist band), with ``1e-9``
        of slack for rounding in ``J``.
    """
    jac = np.asarray(jacobian, float)
    k_native_y = jac[0, 0] * freq_y + jac[1, 0] * freq_x
    k_native_x = jac[0, 1] * freq_y + jac[1, 1] * freq_x
    return (np.abs(k_native_y) <= 0.5 + 1e-9) & (np.abs(k_native_x) <= 0.5 + 1e-9)
