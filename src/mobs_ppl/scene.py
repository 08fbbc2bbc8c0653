"""The ``Scene``: sources placed on a model frame, rendered into a model cube."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .fourier import fast_size
from .frame import Frame
from .sources import AbstractSource

__all__ = ["Scene", "convolve_frame_psf"]


def convolve_frame_psf(cube, psf) -> jax.Array:
    """Convolve a ``(channels, H, W)`` cube with the model PSF (zero-padded FFT).

    ``psf`` is ``(1 or channels, h, w)``, centred on its array centre, or ``None``.
    """
    if psf is None:
        return cube
    _, height, width = cube.shape
    h, w = psf.shape[1:]
    # zero padding by the PSF size avoids wrap-around; sizes with small prime factors
    # keep the FFTs fast
    shape = (fast_size(height + h), fast_size(width + w))
    kernel = jnp.zeros((psf.shape[0], *shape), dtype=cube.dtype)
    kernel = kernel.at[:, :h, :w].set(psf)
    kernel = jnp.roll(kernel, (-(h // 2), -(w // 2)), axis=(1, 2))
    transfer = jnp.fft.rfft2(kernel)
    # the PSF's centre is its geometric centre (h - 1) / 2: for an even size the roll
    # above leaves it half a pixel off, which this phase puts back
    dy, dx = h // 2 - (h - 1) / 2.0, w // 2 - (w - 1) / 2.0
    if dy or dx:
        ky = jnp.fft.fftfreq(shape[0])[:, None]
        kx = jnp.fft.rfftfreq(shape[1])[None, :]
        transfer = transfer * jnp.exp(-2j * jnp.pi * (ky * dy + kx * dx))
    spectrum = jnp.fft.rfft2(cube, s=shape) * transfer
    return jnp.fft.irfft2(spectrum, s=shape)[:, :height, :width]


class Scene(eqx.Module):
    """Sources on a model frame.

    Parameters
    ----------
    frame : Frame
        The model frame (pixel grid, channels, model PSF).
    sources : sequence of AbstractSource
        Sources; a ``SkyCoord`` centre is converted to model pixels here. Spectra must
        have one value per frame channel.
    """

    frame: Frame
    sources: tuple[AbstractSource, ...]

    def __init__(self, frame: Frame, sources: Sequence[AbstractSource] = ()):
        if not isinstance(frame, Frame):
            raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
        placed = []
        for i, source in enumerate(sources):
            if not isinstance(source, AbstractSource):
                raise TypeError(f"source {i} is a {type(source).__name__}, not a source")
            if source.spectrum.shape != (frame.n_channels,):
                raise ValueError(
                    f"source {i} has {source.spectrum.shape[0]} spectrum values; the frame "
                    f"has {frame.n_channels} channels {frame.channels}"
                )
            if not isinstance(source.center, jax.Array):
                y, x = frame.sky_to_pixel(source.center)
                source = source.with_center(np.array([float(y), float(x)]))
            y, x = np.asarray(source.center)
            if not (-0.5 <= y < frame.shape[1] - 0.5 and -0.5 <= x < frame.shape[2] - 0.5):
                raise ValueError(
                    f"source {i} centre (y, x) = ({y:.2f}, {x:.2f}) lies outside the model "
                    f"frame of {frame.shape[1]} x {frame.shape[2]} pixels"
                )
            placed.append(source)
        self.frame = frame
        self.sources = tuple(placed)

    def __len__(self) -> int:
        return len(self.sources)

    def replace_sources(self, sources: Sequence[AbstractSource]) -> Scene:
        """A copy with other sources (same frame)."""
        return eqx.tree_at(lambda s: s.sources, self, tuple(sources))

    def render(self, convolve: bool = True) -> jax.Array:
        """Model cube ``frame.shape``: the sum of all sources, convolved with the model PSF.

        Parameters
        ----------
        convolve : bool
            Apply the model PSF (what observations expect). ``False`` gives the
            deconvolved scene.
        """
        _, height, width = self.frame.shape
        dtype = jnp.result_type(float)
        cube = jnp.zeros(self.frame.shape, dtype=dtype)
        for source in self.sources:
            image = source.image()
            y0, x0 = source.origin
            h, w = source.box_shape
            # clip the box to the frame (static slices)
            ys, ye = max(y0, 0), min(y0 + h, height)
            xs, xe = max(x0, 0), min(x0 + w, width)
            if ye <= ys or xe <= xs:
                continue
            patch = image[ys - y0 : ye - y0, xs - x0 : xe - x0]
            cube = cube.at[:, ys:ye, xs:xe].add(source.spectrum[:, None, None] * patch[None])
        if convolve:
            cube = convolve_frame_psf(cube, self.frame.psf)
        return cube

    def fluxes(self) -> jax.Array:
        """``(sources, channels)`` total flux of every source (before the PSF)."""
        return jnp.stack([s.flux() for s in self.sources])
