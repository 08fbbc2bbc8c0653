"""Band-limited resampling of observed images onto a finer grid (set-up time).

An observed image with pixel values ``d[n]`` is represented by its trigonometric
interpolant over the observed grid (periodic over the image): the only band-limited
function, below the observation's Nyquist frequency, that passes through the samples.
Resampling evaluates it at the centres of the target pixels and rescales by the pixel
area ratio, so that flux per target pixel is conserved:

``d'[p] = (A_target / A_native) * sum_n S_y[p, n_y] S_x[p, n_x] d[n]``

with ``S`` the periodic-sinc weights (:func:`mobs_ppl.fourier.periodic_sinc`). The
operator ``R`` defined this way is linear and, when the target grid is finer than the
native one, injective: the native image is recoverable from the resampled one. That is
what makes the noise model of the resampled data exact (see
:mod:`mobs_ppl.correlated`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import fourier, sky

__all__ = ["Resampler", "build_resampler", "resample_psf"]


class Resampler(eqx.Module):
    """The linear operator ``R`` from native pixels to target pixels.

    ``weights_y[p, n_y]`` and ``weights_x[p, n_x]`` are the periodic-sinc weights of
    target pixel ``p`` (row-major over ``out_shape``); ``area_ratio`` is
    ``A_target / A_native``.
    """

    native_shape: tuple[int, int] = eqx.field(static=True)
    out_shape: tuple[int, int] = eqx.field(static=True)
    weights_y: jax.Array
    weights_x: jax.Array
    area_ratio: float = eqx.field(static=True)

    def __call__(self, image) -> jax.Array:
        """Resample ``(channels, Hn, Wn)`` native images to ``(channels, H, W)``."""
        image = jnp.asarray(image)
        partial = jnp.einsum("cyx,px->cyp", image, self.weights_x)
        out = jnp.einsum("py,cyp->cp", self.weights_y, partial) * self.area_ratio
        return out.reshape((image.shape[0], *self.out_shape))

    def variance(self, native_variance) -> jax.Array:
        """Per-pixel variance of ``R n`` for independent native noise of given variance."""
        native_variance = jnp.asarray(native_variance)
        partial = jnp.einsum("cyx,px->cyp", native_variance, self.weights_x**2)
        out = jnp.einsum("py,cyp->cp", self.weights_y**2, partial) * self.area_ratio**2
        return out.reshape((native_variance.shape[0], *self.out_shape))

    def matrix(self) -> np.ndarray:
        """Dense ``(H*W, Hn*Wn)`` matrix of the operator (small images only: tests)."""
        wy = np.asarray(self.weights_y)
        wx = np.asarray(self.weights_x)
        return self.area_ratio * np.einsum("pi,pj->pij", wy, wx).reshape(wy.shape[0], -1)


def build_resampler(native_frame, target_wcs, target_shape) -> Resampler:
    """Operator resampling images of ``native_frame`` onto a target pixel grid.

    Parameters
    ----------
    native_frame : Frame
        Frame of the observed image (with WCS).
    target_wcs : WCS
        Celestial WCS of the target grid.
    target_shape : tuple of int
        ``(height, width)`` of the target grid.
    """
    _, hn, wn = native_frame.shape
    yy, xx = np.indices(target_shape, dtype=float)
    y, x = sky.pixel_to_pixel(target_wcs, native_frame.wcs, yy.ravel(), xx.ravel())
    jac = sky.local_jacobian(
        target_wcs, native_frame.wcs, (target_shape[0] - 1) / 2.0, (target_shape[1] - 1) / 2.0
    )
    return Resampler(
        native_shape=(hn, wn),
        out_shape=tuple(int(s) for s in target_shape),
        weights_y=jnp.asarray(fourier.interpolation_matrix(y, hn)),
        weights_x=jnp.asarray(fourier.interpolation_matrix(x, wn)),
        area_ratio=float(abs(np.linalg.det(jac))),
    )


def resample_psf(psf: np.ndarray, jacobian: np.ndarray, size: int | None = None) -> np.ndarray:
    """A PSF image resampled onto a finer grid through its band-limited transform.

    Parameters
    ----------
    psf : ndarray
        ``(h, w)`` PSF in native pixels, centred on the array centre.
    jacobian : ndarray
        ``(2, 2)`` matrix taking native pixel offsets to target pixel offsets.
    size : int, optional
        Odd side length of the result (target pixels); by default large enough for the
        native stamp.

    Returns
    -------
    ndarray
        ``(size, size)`` image summing to one, centred on its middle pixel: the native
        PSF's transform restricted to the native band, sampled on the target grid.
    """
    h, w = psf.shape
    scale = float(np.max(np.linalg.svd(jacobian, compute_uv=False)))
    if size is None:
        size = int(np.ceil(max(h, w) * scale)) | 1
    n = fourier.fast_size(2 * size)
    freq = np.fft.fftfreq(n)
    ky, kx = np.meshgrid(freq, freq, indexing="ij")
    jac = np.asarray(jacobian, float)
    band = fourier.visible_band(jac, ky, kx)
    spectrum = fourier.image_transform(psf, freq, freq, jac, where=band) * band
    image = np.real(np.fft.ifft2(spectrum))
    image = np.fft.fftshift(image)
    c = n // 2
    half = size // 2
    image = image[c - half : c + half + 1, c - half : c + half + 1]
    return image / image.sum()
