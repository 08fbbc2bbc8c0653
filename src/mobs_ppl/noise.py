"""Stationary correlated pixel noise: measurement from the background, likelihood.

Co-added (drizzled) images have pixel noise correlated over a few pixels. We describe
it by its autocovariance ``xi(dy, dx)`` (data units squared) within a small radius,
measured on source-free pixels, and use the circulant covariance it defines over the
image: diagonal in Fourier space, with eigenvalues ``lambda(k) = sum xi(d) e^{-2 pi i
k.d}`` (the noise power spectrum). The quadratic form is then one FFT:
``r^T C^{-1} r = (1/N) sum_k |r^(k)|^2 / lambda(k)``.

Where it is approximate: the circulant form treats the image as periodic (pixels on
opposite edges are taken as neighbours) and masked pixels enter as zero residuals.
Both effects are confined to a band of ``radius`` pixels along edges and mask borders;
the test suite bounds them against the dense marginal covariance.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from .robust import clipped_statistics

__all__ = [
    "StationaryNoise",
    "background_mask",
    "measure_correlation",
    "dense_covariance",
    "background_chi2",
]

#: Power-spectrum floor relative to its mean: measured autocovariances are noisy and
#: their transform can dip below zero at a few frequencies; no real noise field has
#: less power than this there.
POWER_FLOOR = 1e-3


def background_mask(data, weights=None, n_sigma: float = 3.0, grow: int = 8) -> np.ndarray:
    """Pixels usable as background: not masked, and away from sources.

    Sources are pixels more than ``n_sigma`` robust sigma above the median, grown by
    ``grow`` pixels (binary dilation) so that their faint wings are excluded too (with
    3 pixels the wings of the COSMOS HST galaxies still leave a correlation floor of
    3% at lag 4; with 8 it drops to the noise, 1%).

    Returns
    -------
    ndarray of bool
        ``(channels, height, width)``, ``True`` for background pixels.
    """
    data = np.asarray(data, float)
    if data.ndim == 2:
        data = data[None]
    used = np.ones(data.shape, bool) if weights is None else np.asarray(weights) > 0
    out = np.zeros(data.shape, bool)
    for c, (image, ok) in enumerate(zip(data, used, strict=True)):
        median, sigma = clipped_statistics(image[ok], n_sigma)
        source = (image - median) > n_sigma * sigma
        if grow > 0:
            source = ndimage.binary_dilation(source, iterations=grow)
        out[c] = ok & ~source
    return out


def measure_correlation(data, weights=None, radius: int = 4, mask=None) -> np.ndarray:
    """Autocovariance of the background noise for lags up to ``radius`` pixels.

    Parameters
    ----------
    data : array_like
        ``(channels, height, width)`` image.
    weights : array_like, optional
        Pixels of zero weight are not used.
    radius : int
        Largest lag (pixels) measured; the result is zero beyond it.
    mask : array_like of bool, optional
        ``True`` for pixels to use; by default :func:`background_mask`.

    Returns
    -------
    ndarray
        ``(channels, 2 radius + 1, 2 radius + 1)``; element ``[c, radius + dy, radius +
        dx]`` is the mean of ``n(y, x) n(y + dy, x + dx)`` over background pixel pairs,
        after subtracting the background median. Symmetric under ``d -> -d``.
    """
    data = np.asarray(data, float)
    if data.ndim == 2:
        data = data[None]
    use = background_mask(data, weights) if mask is None else np.asarray(mask, bool)
    if use.ndim == 2:
        use = np.broadcast_to(use, data.shape)
    size = 2 * radius + 1
    out = np.zeros((data.shape[0], size, size))
    for c in range(data.shape[0]):
        if use[c].sum() < 10 * size * size:
            raise ValueError(
                f"channel {c} has only {int(use[c].sum())} background pixels: too few to "
                "measure the noise correlation"
            )
        g = np.where(use[c], data[c] - np.median(data[c][use[c]]), 0.0)
        m = use[c].astype(float)
        h, w = g.shape
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                ys = slice(max(0, -dy), min(h, h - dy))
                xs = slice(max(0, -dx), min(w, w - dx))
                yt = slice(max(0, dy), min(h, h + dy))
                xt = slice(max(0, dx), min(w, w + dx))
                pairs = np.sum(m[ys, xs] * m[yt, xt])
                out[c, radius + dy, radius + dx] = np.sum(g[ys, xs] * g[yt, xt]) / pairs
    return out


def dense_covariance(correlation: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Dense covariance of one channel on a ``shape`` grid (non-periodic), for tests.

    ``C[i, j] = xi(pos_i - pos_j)`` within the measured radius, zero beyond.
    """
    radius = correlation.shape[-1] // 2
    yy, xx = np.indices(shape)
    dy = yy.ravel()[:, None] - yy.ravel()[None, :]
    dx = xx.ravel()[:, None] - xx.ravel()[None, :]
    inside = (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    return np.where(
        inside,
        correlation[np.clip(dy + radius, 0, 2 * radius), np.clip(dx + radius, 0, 2 * radius)],
        0.0,
    )


def background_chi2(residual, correlation, mask, tile: int = 12) -> tuple[float, int]:
    """Chi-square of background residuals under a correlated-noise model, exactly.

    The image is cut into ``tile x tile`` blocks; in each, the used pixels' residuals
    are weighed by the inverse of their dense marginal covariance (no periodic or
    masking approximation). Neighbouring tiles are treated as independent, which
    neglects only correlations across tile borders.

    Returns
    -------
    chi2 : float
        Sum over tiles.
    dof : int
        Number of pixels used.
    """
    residual = np.asarray(residual, float)
    mask = np.asarray(mask, bool)
    h, w = residual.shape
    cov = dense_covariance(correlation, (tile, tile))
    chi2, dof = 0.0, 0
    for y0 in range(0, h - tile + 1, tile):
        for x0 in range(0, w - tile + 1, tile):
            m = mask[y0 : y0 + tile, x0 : x0 + tile].ravel()
            if m.sum() < 2:
                continue
            r = residual[y0 : y0 + tile, x0 : x0 + tile].ravel()[m]
            c = cov[np.ix_(m, m)]
            chi2 += float(r @ np.linalg.solve(c, r))
            dof += int(m.sum())
    return chi2, dof


class StationaryNoise(eqx.Module):
    """Circulant (Fourier-diagonal) Gaussian noise model of an image stack.

    Parameters
    ----------
    power : jax.Array
        ``(channels, height, width // 2 + 1)`` eigenvalues of the covariance on the
        real-FFT grid (data units squared).
    shape : tuple of int
        ``(channels, height, width)`` of the images.
    """

    power: jax.Array
    shape: tuple[int, int, int] = eqx.field(static=True)

    @classmethod
    def from_correlation(cls, correlation, shape) -> StationaryNoise:
        """Noise model of images of ``shape`` from a measured autocovariance stack."""
        correlation = np.asarray(correlation, float)
        c, h, w = shape
        radius = correlation.shape[-1] // 2
        if 2 * radius + 1 > min(h, w):
            raise ValueError(f"correlation radius {radius} is too large for images of {h}x{w}")
        kernel = np.zeros((correlation.shape[0], h, w))
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                kernel[:, dy % h, dx % w] = correlation[:, radius + dy, radius + dx]
        power = np.real(np.fft.rfft2(kernel))
        floor = POWER_FLOOR * power.mean(axis=(1, 2), keepdims=True)
        power = np.maximum(power, floor)
        if power.shape[0] == 1 and c > 1:
            power = np.repeat(power, c, axis=0)
        return cls(power=jnp.asarray(power), shape=tuple(shape))

    def column_weights(self) -> jax.Array:
        """Multiplicity of each real-FFT column (1 or 2: conjugate pairs stored once)."""
        width = self.shape[2]
        weights = np.full(width // 2 + 1, 2.0)
        weights[0] = 1.0
        if width % 2 == 0:
            weights[-1] = 1.0
        return jnp.asarray(weights)

    def chi2_per_channel(self, residual) -> jax.Array:
        """``r_c^T C_c^{-1} r_c`` for each channel ``c``."""
        spectrum = jnp.fft.rfft2(residual)
        n = self.shape[1] * self.shape[2]
        terms = jnp.abs(spectrum) ** 2 / self.power * self.column_weights()
        return jnp.sum(terms, axis=(-2, -1)) / n

    def chi2(self, residual) -> jax.Array:
        """``r^T C^{-1} r`` summed over channels."""
        return jnp.sum(self.chi2_per_channel(residual))

    def whiten(self, residual) -> jax.Array:
        """``C^{-1/2} r`` per channel: ``|whiten(r)|^2 = r^T C^{-1} r`` (one FFT pair)."""
        spectrum = jnp.fft.rfft2(residual) / jnp.sqrt(self.power)
        return jnp.fft.irfft2(spectrum, s=self.shape[1:])

    def log_det(self) -> jax.Array:
        """``log det C`` summed over channels."""
        return jnp.sum(jnp.log(self.power) * self.column_weights())

    def log_likelihood(self, residual) -> jax.Array:
        """Gaussian log-density of a residual stack, normalisation included."""
        n = self.shape[0] * self.shape[1] * self.shape[2]
        return -0.5 * (self.chi2(residual) + self.log_det() + n * jnp.log(2 * jnp.pi))

    def sample(self, key) -> jax.Array:
        """One noise realisation ``(channels, height, width)`` with this covariance."""
        white = jax.random.normal(key, self.shape, dtype=self.power.dtype)
        return jnp.fft.irfft2(jnp.fft.rfft2(white) * jnp.sqrt(self.power), s=self.shape[1:])
