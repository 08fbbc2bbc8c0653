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

__all__ = ["Scene", "convolve_frame_psf", "box_in_frame", "rendered_flux"]


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


def box_in_frame(source: AbstractSource, height: int, width: int):
    """The part of a source's box inside a ``height x width`` frame (static slices).

    Returns
    -------
    tuple or None
        ``((y_start, y_end, x_start, x_end), patch)``: the frame's pixel range and the
        morphology on it; ``None`` when the box lies wholly outside.
    """
    y0, x0 = source.origin
    h, w = source.box_shape
    ys, ye = max(y0, 0), min(y0 + h, height)
    xs, xe = max(x0, 0), min(x0 + w, width)
    if ye <= ys or xe <= xs:
        return None
    image = source.image()
    return (ys, ye, xs, xe), image[ys - y0 : ye - y0, xs - x0 : xe - x0]


def rendered_flux(source: AbstractSource, height: int, width: int) -> jax.Array:
    """Flux per channel of a source inside a ``height x width`` frame (before the PSF).

    ``source.flux()`` scaled by the fraction of its morphology's sum that falls in the
    frame: what :meth:`Scene.render` puts there. A box wholly inside gives
    ``source.flux()`` itself (a parametric profile's unit flux included).
    """
    y0, x0 = source.origin
    h, w = source.box_shape
    if y0 >= 0 and x0 >= 0 and y0 + h <= height and x0 + w <= width:
        return source.flux()
    clip = box_in_frame(source, height, width)
    if clip is None:
        return jnp.zeros_like(source.flux())
    _, patch = clip
    return source.flux() * (jnp.sum(patch) / jnp.sum(source.image()))


def _check_groups(groups, n: int) -> tuple[int, ...]:
    if groups is None:
        return tuple(range(n))
    values = np.asarray(groups)
    if values.shape != (n,) or (n and not np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"groups must be one integer per source ({n}); got {groups!r}")
    out = tuple(int(g) for g in values)
    first_seen = list(dict.fromkeys(out))
    if first_seen != list(range(len(first_seen))):
        raise ValueError(
            f"groups must be numbered 0, 1, 2, ... in order of first appearance; got {out}"
        )
    return out


class Scene(eqx.Module):
    """Sources on a model frame.

    Parameters
    ----------
    frame : Frame
        The model frame (pixel grid, channels, model PSF).
    sources : sequence of AbstractSource
        Sources; a ``SkyCoord`` centre is converted to model pixels here. Spectra must
        have one value per frame channel.
    groups : sequence of int, optional
        The galaxy each source belongs to, when a galaxy is modelled by several sources
        (components with their own spectra, e.g. a red bulge and a blue disk: see
        :func:`mobs_ppl.init.from_observation`). Groups are numbered ``0 .. G - 1`` in
        order of first appearance; fluxes (:meth:`fluxes`, the ``flux`` site) are per
        group. Default: every source is its own group.
    """

    frame: Frame
    sources: tuple[AbstractSource, ...]
    groups: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, frame: Frame, sources: Sequence[AbstractSource] = (), groups=None):
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
        self.groups = _check_groups(groups, len(placed))

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def n_groups(self) -> int:
        """Number of galaxies (groups of sources)."""
        return max(self.groups) + 1 if self.groups else 0

    def members(self, group: int) -> tuple[int, ...]:
        """Indices of the sources of one group."""
        return tuple(i for i, g in enumerate(self.groups) if g == group)

    def replace_sources(self, sources: Sequence[AbstractSource]) -> Scene:
        """A copy with other sources (same frame, same groups)."""
        sources = tuple(sources)
        if len(sources) != len(self.sources):
            return Scene(self.frame, sources)
        return eqx.tree_at(lambda s: s.sources, self, sources)

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
            clip = box_in_frame(source, height, width)
            if clip is None:
                continue
            (ys, ye, xs, xe), patch = clip
            cube = cube.at[:, ys:ye, xs:xe].add(source.spectrum[:, None, None] * patch[None])
        if convolve:
            cube = convolve_frame_psf(cube, self.frame.psf)
        return cube

    def source_fluxes(self) -> jax.Array:
        """``(sources, channels)`` flux of every source in the frame (before the PSF).

        The flux that :meth:`render` puts into the frame: a source whose box reaches
        beyond the frame's edge is cropped there (:func:`rendered_flux`), so its light
        outside, which no observation is fitted to, is not counted.
        """
        _, height, width = self.frame.shape
        return jnp.stack([rendered_flux(s, height, width) for s in self.sources])

    def fluxes(self) -> jax.Array:
        """``(groups, channels)`` flux of every galaxy in the frame: sum of its sources."""
        per_source = self.source_fluxes()
        if self.groups == tuple(range(len(self.sources))):
            return per_source
        return jax.ops.segment_sum(per_source, jnp.asarray(self.groups), self.n_groups)
