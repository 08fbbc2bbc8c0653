"""Observations with correlated pixel noise: resampled data and drizzled co-adds.

Two kinds, one container:

* **Resampled** (``from_observation(obs, resample_to_frame=frame)``): the data are
  resampled once onto the model frame's grid by the band-limited operator ``R`` of
  :mod:`mobs_ppl.resample`. With native weights ``W`` the resampled noise has
  covariance ``Sigma = R W^{-1} R^T``, of rank ``N_native``: Fourier modes above the
  native Nyquist frequency carry nothing. Its Gaussian density on the range of ``R``
  uses the pseudo-inverse, and the identity (``R`` injective)

  ``(R r)^T (R W^{-1} R^T)^+ (R r) = r^T W r``

  makes it exact and cheap: the quadratic form equals the native chi-square of the
  native residual, which the forward model predicts directly. The log pseudo-
  determinant adds the model-independent ``log det(R^T R)`` to the native one. So the
  error bars of a resampled observation are those of the native data, by construction.

* **Measured** (``from_observation(obs)``): no resampling; the pixel noise of the data
  itself (e.g. a drizzled HST co-add) is measured from the source-free background and
  used as a stationary Fourier-diagonal covariance (:class:`mobs_ppl.noise.StationaryNoise`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import noise as noise_models
from . import sky
from .distributions import StationaryImageNormal
from .frame import Frame, relative_jacobian
from .observation import FramedData, Observation
from .renderer import Renderer, build_renderer
from .resample import Resampler, build_resampler, resample_psf

__all__ = ["CorrelatedObservation"]


def _covered_box(obs: Observation, frame: Frame) -> tuple[int, int, int, int]:
    """Pixel box ``(y0, y1, x0, x1)`` (inclusive) of ``frame`` whose centres lie in ``obs``."""
    ymin, ymax, xmin, xmax = obs.frame.footprint(frame.wcs)
    y0 = max(int(np.ceil(ymin - 1e-6)), 0)
    x0 = max(int(np.ceil(xmin - 1e-6)), 0)
    y1 = min(int(np.floor(ymax + 1e-6)), frame.shape[1] - 1)
    x1 = min(int(np.floor(xmax + 1e-6)), frame.shape[2] - 1)
    if y1 < y0 or x1 < x0:
        raise ValueError(
            f"observation {obs.name!r} does not overlap the frame it should be resampled to"
        )
    return y0, y1, x0, x1


class CorrelatedObservation(FramedData, eqx.Module):
    """An observation whose pixel noise is correlated.

    Use :meth:`from_observation` to make one. It has the interface of
    :class:`~mobs_ppl.Observation`: ``frame``, ``data``, ``weights``, ``match``,
    ``render`` and ``log_likelihood``.

    Attributes
    ----------
    data : jax.Array
        ``(channels, height, width)`` image on this observation's grid (resampled data
        for the resampled kind).
    weights : jax.Array
        Inverse of each pixel's marginal noise variance (for display, detection and
        initialisation; the likelihood uses the full covariance). Zero where masked.
    frame : Frame
        The grid of ``data`` (for the resampled kind: a sub-box of the model frame,
        with the resampled PSF).
    native : Observation or None
        The observation that was resampled (resampled kind).
    resampler : Resampler or None
        The operator ``R`` from native to resampled pixels.
    noise : StationaryNoise or None
        The measured noise model (measured kind).
    correlation : ndarray or None
        The measured autocovariance ``(channels, 2r + 1, 2r + 1)`` (measured kind).
    log_det_resampling : float
        ``log det(R^T R)`` summed over channels (resampled kind). It does not depend on
        the model; where the grids are not aligned (so ``R`` does not factorise by
        axis) it is not computed and set to zero, which shifts the log-likelihood by a
        constant only.
    """

    data: jax.Array
    weights: jax.Array
    frame: Frame
    name: str = eqx.field(static=True)
    native: Observation | None = None
    resampler: Resampler | None = None
    noise: noise_models.StationaryNoise | None = None
    correlation: jax.Array | None = None
    log_det_resampling: float = eqx.field(static=True, default=0.0)
    native_jacobian: jax.Array | None = None
    renderer: Renderer | None = None

    @classmethod
    def from_observation(
        cls,
        observation: Observation,
        resample_to_frame: Frame | None = None,
        *,
        radius: int = 4,
    ) -> CorrelatedObservation:
        """Correlated-noise observation from a plain one.

        Parameters
        ----------
        observation : Observation
            The native data.
        resample_to_frame : Frame, optional
            Resample the data once onto this frame's grid (the part of it that the
            observation covers). Its pixels must be at least as fine as the native ones.
        radius : int
            Without resampling: largest lag (pixels) of the measured correlation.

        Raises
        ------
        ValueError
            If the observation does not overlap the frame, the frame is coarser than
            the data, or every pixel is masked.
        """
        if not isinstance(observation, Observation):
            raise TypeError(f"expected an Observation, got {type(observation).__name__}")
        if not np.any(np.asarray(observation.weights) > 0):
            raise ValueError(f"observation {observation.name!r} is fully masked")
        if resample_to_frame is None:
            return cls._measured(observation, radius)
        return cls._resampled(observation, resample_to_frame)

    @classmethod
    def _measured(cls, obs: Observation, radius: int) -> CorrelatedObservation:
        correlation = noise_models.measure_correlation(obs.data, obs.weights, radius=radius)
        noise = noise_models.StationaryNoise.from_correlation(correlation, obs.shape)
        variance = correlation[:, radius, radius]
        weights = np.where(np.asarray(obs.weights) > 0, 1.0 / variance[:, None, None], 0.0)
        return cls(
            data=obs.data,
            weights=jnp.asarray(weights),
            frame=obs.frame,
            name=obs.name,
            noise=noise,
            correlation=jnp.asarray(correlation),
        )

    @classmethod
    def _resampled(cls, obs: Observation, frame: Frame) -> CorrelatedObservation:
        if obs.wcs is None or frame.wcs is None:
            raise ValueError("resampling needs the WCS of both the observation and the frame")
        ratio = (frame.pixel_scale / obs.frame.pixel_scale).decompose().value
        if ratio > 1 + 1e-6:
            raise ValueError(
                f"the frame's pixels ({frame.pixel_scale:.4g}) are coarser than those of "
                f"{obs.name!r} ({obs.frame.pixel_scale:.4g}): resampling would lose "
                "information; fit this observation natively instead"
            )
        y0, y1, x0, x1 = _covered_box(obs, frame)
        wcs = sky.sub_grid_wcs(frame.wcs, y0, x0)
        shape = (y1 - y0 + 1, x1 - x0 + 1)
        resampler = build_resampler(obs.frame, wcs, shape)
        native_weights = np.asarray(obs.weights)
        used = native_weights > 0
        data = resampler(jnp.where(jnp.asarray(used), obs.data, 0.0))
        variance = resampler.variance(
            np.where(used, 1.0 / np.where(used, native_weights, 1.0), 0.0)
        )
        # a resampled pixel is masked where the nearest native pixel is
        yy, xx = np.indices(shape, dtype=float)
        yn, xn = sky.pixel_to_pixel(wcs, obs.wcs, yy.ravel(), xx.ravel())
        iy = np.clip(np.round(yn).astype(int), 0, obs.shape[1] - 1)
        ix = np.clip(np.round(xn).astype(int), 0, obs.shape[2] - 1)
        # pixels of the box outside the native image (corners of a rotated footprint)
        # would only hold periodic copies of the interpolant: mask them and zero them
        # (same tolerance as ``_covered_box``: centres on the native edge are kept)
        eps = 1e-6
        inside = (
            (yn > -0.5 - eps)
            & (yn < obs.shape[1] - 0.5 + eps)
            & (xn > -0.5 - eps)
            & (xn < obs.shape[2] - 0.5 + eps)
        )
        nearest_used = (used[:, iy, ix] & inside[None]).reshape((obs.shape[0], *shape))
        data = jnp.where(jnp.asarray(nearest_used), data, 0.0)
        weights = np.where(nearest_used, 1.0 / np.maximum(np.asarray(variance), 1e-300), 0.0)

        own_frame = Frame((obs.shape[0], *shape), wcs=wcs, channels=obs.channels)
        to_native = relative_jacobian(own_frame, obs.frame)
        psf = None
        if obs.psf is not None:
            to_fine = np.linalg.inv(to_native)
            psf = np.stack([resample_psf(np.asarray(p), to_fine) for p in np.asarray(obs.psf)])
        if psf is not None:
            # the resampled PSF is exact as it is: its peak may lie up to half a native
            # pixel (several fine pixels) from the centre, which must not be "fixed"
            own_frame = eqx.tree_at(
                lambda f: f.psf, own_frame, jnp.asarray(psf), is_leaf=lambda x: x is None
            )
        return cls(
            data=data,
            weights=jnp.asarray(weights),
            frame=own_frame,
            name=obs.name,
            native=obs,
            resampler=resampler,
            log_det_resampling=_log_det_gram(resampler, obs.shape[0]),
            native_jacobian=jnp.asarray(to_native),
        )

    # -- views ------------------------------------------------------------------------
    @property
    def is_resampled(self) -> bool:
        """Whether the data were resampled from a native observation."""
        return self.native is not None

    # -- forward model ----------------------------------------------------------------
    def match(self, frame: Frame) -> CorrelatedObservation:
        """Bind to a model frame (operators computed once); returns a new object."""
        new = eqx.tree_at(
            lambda o: o.renderer,
            self,
            build_renderer(self.frame, frame, name=self.name),
            is_leaf=lambda x: x is None,
        )
        if self.native is not None:
            new = eqx.tree_at(lambda o: o.native, new, self.native.match(frame))
        return new

    def render(self, model, shift=None, *, convolved: bool = True) -> jax.Array:
        """Predicted data on this observation's grid.

        ``shift`` is ``(dy, dx)`` in pixels of this observation's grid (for the
        resampled kind: model-frame pixels).
        """
        return self._require_renderer()(model, self.model_shift(shift), convolved)

    def native_shift(self, shift) -> jax.Array | None:
        """A shift in this grid's pixels expressed in native pixels (resampled kind).

        ``native_jacobian @ shift``, the derivative of the exact map from this grid to
        the native one at this grid's centre (the same map that resampled the PSF).
        A shift sampled in model pixels converts with :attr:`native_from_model`.
        """
        if shift is None:
            return None
        return self.native_jacobian @ jnp.asarray(shift)

    # -- the likelihood (the interface of Observation) --------------------------------
    @property
    def likelihood_observation(self):
        """The observation whose pixels the likelihood counts.

        Resampled kind: the native observation (the resampled density is the native
        one, by the pseudo-inverse identity); measured kind: this one.
        """
        return self.native if self.native is not None else self

    def likelihood(self, model, shift=None, *, convolved: bool = False):
        """The observed site's distribution and value for a model cube.

        As :meth:`mobs_ppl.Observation.likelihood`, ``shift`` in model pixels.
        Resampled kind: the native observation's independent pixels. Measured kind:
        :class:`~mobs_ppl.distributions.StationaryImageNormal` over the counted pixels.
        """
        if self.native is not None:
            return self.native.likelihood(model, shift, convolved=convolved)
        prediction = self._require_renderer()(model, shift, convolved)
        used = self.counted_weights() > 0
        return StationaryImageNormal(prediction, self.noise, used), self.data

    def chi2_per_channel(self, model, shift=None, *, convolved: bool = True):
        """Chi-square and number of counted pixels per channel (see :meth:`likelihood`).

        ``shift`` in model pixels. Measured kind: the chi-square under the correlated
        noise, ``r^T C^{-1} r``.
        """
        if self.native is not None:
            return self.native.chi2_per_channel(model, shift, convolved=convolved)
        used = self.counted_weights() > 0
        residual = (self.data - self._require_renderer()(model, shift, convolved)) * used
        return self.noise.chi2_per_channel(residual), jnp.sum(used, axis=(1, 2))

    def log_likelihood(self, model, shift=None, *, convolved: bool = True) -> jax.Array:
        """Gaussian log-likelihood under the correlated noise model, normalised.

        Resampled kind: the exact density of the resampled data on the range of ``R``
        (pseudo-inverse), computed as the native log-likelihood minus
        ``0.5 * log det(R^T R)``. Measured kind: the Fourier-diagonal density. Both are
        the density of :meth:`likelihood` (``shift`` here in this grid's pixels, as in
        :meth:`render`).
        """
        distribution, value = self.likelihood(model, self.model_shift(shift), convolved=convolved)
        constant = -0.5 * self.log_det_resampling if self.native is not None else 0.0
        return jnp.sum(distribution.log_prob(value)) + constant

    def sample_noise(self, key) -> jax.Array:
        """One realisation of the noise on this observation's grid."""
        if self.native is not None:
            w = self.native.weights
            sigma = jnp.where(w > 0, 1.0 / jnp.sqrt(jnp.where(w > 0, w, 1.0)), 0.0)
            return self.resampler(jax.random.normal(key, w.shape, dtype=w.dtype) * sigma)
        return self.noise.sample(key)


def _log_det_gram(resampler: Resampler, n_channels: int) -> float:
    """``log det(R^T R)`` over all channels, when ``R`` factorises by axis.

    For grids whose axes are aligned, the resampling weights of pixel ``(i, j)`` are a
    product ``a_i b_j`` and ``R = area * (A kron B)``, so ``log det(R^T R)`` is
    ``W log det(A^T A) + H log det(B^T B) + N log(area^2)``. Otherwise returns 0
    (a model-independent constant is then left out).
    """
    hn, wn = resampler.native_shape
    h, w = resampler.out_shape
    wy = np.asarray(resampler.weights_y).reshape(h, w, hn)
    wx = np.asarray(resampler.weights_x).reshape(h, w, wn)
    if not (np.allclose(wy, wy[:, :1], atol=1e-10) and np.allclose(wx, wx[:1], atol=1e-10)):
        return 0.0
    a, b = wy[:, 0], wx[0]
    _, logdet_a = np.linalg.slogdet(a.T @ a)
    _, logdet_b = np.linalg.slogdet(b.T @ b)
    per_channel = wn * logdet_a + hn * logdet_b + hn * wn * np.log(resampler.area_ratio**2)
    return float(n_channels * per_channel)
