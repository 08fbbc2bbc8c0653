"""The ``Observation`` container: data, inverse-variance weights and the data's frame.

An observation is immutable. Binding it to a model frame with :meth:`Observation.match`
returns a new observation that also holds the precomputed forward-model operator, so
that rendering inside a fit loop does no set-up work.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .distributions import pixel_normal
from .frame import Frame
from .renderer import Renderer, build_renderer
from .robust import clipped_statistics

__all__ = ["Observation", "estimate_weights"]


def estimate_weights(data: np.ndarray, n_sigma: float = 3.0, iterations: int = 5) -> np.ndarray:
    """Per-channel inverse variance of the background, from a clipped robust sigma.

    Parameters
    ----------
    data : ndarray
        ``(channels, height, width)`` image (data units).
    n_sigma : float
        Pixels further than this many sigma from the median are dropped (sources).
    iterations : int
        Number of clipping passes.

    Returns
    -------
    ndarray
        ``(channels,)`` inverse variances, in 1 / data units squared. The sigma is
        1.4826 times the median absolute deviation (the Gaussian-consistent factor).
    """
    out = []
    for image in np.asarray(data, float):
        _, sigma = clipped_statistics(image[np.isfinite(image)], n_sigma, iterations)
        if not sigma > 0:
            raise ValueError("cannot estimate weights: the data have zero spread in a channel")
        out.append(1.0 / sigma**2)
    return np.array(out)


def _as_cube(array, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must be (height, width) or (channels, height, width); got {arr.shape}"
        )
    if 0 in arr.shape:
        raise ValueError(
            f"{name} is empty: shape (channels, height, width) = {arr.shape}; an image "
            "needs at least one channel and one pixel in height and width"
        )
    return arr


def _unmasked(array, fill: float):
    """``array`` with a ``numpy.ma`` mask's pixels set to ``fill`` (else ``array`` itself).

    ``np.asarray`` would drop the mask and keep the masked values (often 1e30 or NaN):
    data fill with NaN (which then get zero weight, see :class:`Observation`), weights
    with zero.
    """
    if not np.ma.isMaskedArray(array):
        return array
    return np.ma.filled(np.ma.asarray(array, dtype=float), fill)


def _weight_cube(weights, shape: tuple[int, int, int]) -> np.ndarray:
    """Weights of the data's ``shape``: from one number, one per channel, or an image."""
    w = np.asarray(weights, float)
    n_channels = shape[0]
    if w.ndim == 0:
        return np.full(shape, float(w))
    if w.ndim == 1:
        if w.shape[0] != n_channels:
            raise ValueError(
                f"weights has {w.shape[0]} values per channel; the data has {n_channels}"
            )
        return np.broadcast_to(w[:, None, None], shape).copy()
    w = _as_cube(w, "weights")
    if w.shape[0] == 1 and n_channels > 1:
        w = np.broadcast_to(w, shape).copy()
    if w.shape != shape:
        raise ValueError(
            f"weights shape {w.shape} does not match data shape {shape}: give one number, "
            "one per channel, or an image of the data's (height, width) or shape"
        )
    return w


class FramedData:
    """Views shared by the observation containers: the data's frame and renderer.

    A mixin for :class:`Observation` and :class:`~mobs_ppl.CorrelatedObservation`,
    which both hold ``frame``, ``name`` and ``renderer`` fields.
    """

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the data."""
        return self.frame.shape

    @property
    def channels(self) -> tuple[str, ...]:
        """Band names."""
        return self.frame.channels

    @property
    def wcs(self):
        """Celestial WCS of the data (or ``None``)."""
        return self.frame.wcs

    @property
    def psf(self):
        """PSF images ``(1 or channels, h, w)`` on the data grid (or ``None``)."""
        return self.frame.psf

    def counted_weights(self) -> jax.Array:
        """Weights of the pixels that count in the likelihood, ``(channels, h, w)``.

        ``weights`` times the bound model frame's coverage: a pixel whose centre lies
        outside the model frame is predicted as zero, so it does not count (its weight
        is zero here), whatever its data. The one rule of which pixels count, for every
        observation kind.
        """
        return self.weights * self._require_renderer().coverage

    def bound_to(self, frame: Frame):
        """The observation bound to the model ``frame``.

        Itself if it already is, else ``self.match(frame)``: the one test of "already
        bound", by :attr:`Frame.key`.
        """
        if self.renderer is not None and self.renderer.renders_from(frame):
            return self
        return self.match(frame)

    # -- the shift: observation pixels <-> model pixels (the renderer owns both) --------
    def model_shift(self, shift) -> jax.Array | None:
        """A shift ``(dy, dx)`` in this observation's pixels, in model pixels.

        ``None`` stays ``None``. The bound renderer's :meth:`~Renderer.model_shift`.
        """
        return self._require_renderer().model_shift(shift)

    @property
    def native_from_model(self) -> jax.Array:
        """``(2, 2)`` matrix from a shift in model pixels to the likelihood's pixels.

        The pixels of :attr:`likelihood_observation` (native pixels for a resampled
        observation). The one conversion that the ``shift_native`` site,
        :meth:`mobs_ppl.MAPResult.shift_native`, the Laplace approximation, the
        workflow and the plots reuse (through :attr:`mobs_ppl.SceneModel.to_native`).
        """
        return self.likelihood_observation._require_renderer().native_from_model

    def _require_renderer(self) -> Renderer:
        if self.renderer is None:
            raise ValueError(
                f"observation {self.name!r} is not bound to a model frame: call "
                "obs = obs.match(frame) first"
            )
        return self.renderer


class Observation(FramedData, eqx.Module):
    """Image data of one instrument, with noise, PSF and WCS.

    Parameters
    ----------
    data : array_like
        ``(channels, height, width)`` or ``(height, width)`` image, any units. The
        masked pixels of a ``numpy.ma`` array get zero weight (their values are not
        used).
    weights : array_like or float, optional
        Inverse variances in 1 / data units squared: an array of the data's shape, one
        number per channel, or one number. Zero marks a pixel as unused, as does the
        mask of a ``numpy.ma`` array. By default estimated per channel from the
        background (see :func:`estimate_weights`).
    psf : array_like, optional
        PSF image per channel ``(channels, h, w)`` or one for all ``(h, w)``, in this
        observation's pixels, summing to one, centred on the array centre.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS; a third band axis in the header is dropped.
    channels : sequence of str, optional
        Band names, one per channel.
    name : str, optional
        Name used for parameters and results (e.g. ``"HSC"``).
    mask : array_like of bool, optional
        ``True`` where a pixel must not be used (its weight is set to zero).
    """

    data: jax.Array
    weights: jax.Array
    frame: Frame
    name: str = eqx.field(static=True)
    renderer: Renderer | None = None

    def __init__(
        self,
        data,
        weights=None,
        psf=None,
        wcs=None,
        channels: Sequence[str] | None = None,
        name: str | None = None,
        mask=None,
        *,
        renderer: Renderer | None = None,
    ):
        cube = _as_cube(_unmasked(data, np.nan), "data").astype(float)
        n_channels = cube.shape[0]
        data_mask = None
        if np.ma.isMaskedArray(data):
            data_mask = _as_cube(np.ma.getmaskarray(data), "data")
        if weights is None:
            weights = estimate_weights(cube)
        w = _weight_cube(_unmasked(weights, 0.0), cube.shape)
        if np.any(np.isnan(w)) or np.any(w < 0) or np.any(np.isinf(w)):
            raise ValueError("weights must be finite and non-negative (inverse variances)")
        if mask is not None:
            m = _as_cube(np.asarray(mask, bool), "mask")
            if m.shape[1:] != cube.shape[1:] or m.shape[0] not in (1, n_channels):
                raise ValueError(f"mask shape {m.shape} does not match data shape {cube.shape}")
            w = np.where(m, 0.0, w)
        bad = ~np.isfinite(cube)
        if data_mask is not None:
            w = np.where(data_mask, 0.0, w)  # the masked pixels (NaN here) do not count
        if np.any(bad & (w > 0)):
            count = int(np.sum(bad & (w > 0)))
            raise ValueError(
                f"data has {count} NaN/inf pixels with non-zero weight: set their weight "
                "to zero or pass them in mask="
            )
        if np.all(w == 0):
            raise ValueError("every pixel has zero weight (or is masked): nothing to fit")
        cube = np.where(bad, 0.0, cube)
        if channels is not None and not isinstance(channels, str) and len(channels) != n_channels:
            raise ValueError(f"{len(channels)} channel names for {n_channels} channels of data")
        self.data = jnp.asarray(cube)
        self.weights = jnp.asarray(w)
        self.frame = Frame(cube.shape, wcs=wcs, channels=channels, psf=psf)
        self.name = name or "observation"
        self.renderer = renderer

    # -- forward model -------------------------------------------------------------------
    def match(self, frame: Frame) -> Observation:
        """Bind this observation to a model frame.

        All operators (channel selection, PSF-matching kernel, resampling matrices) are
        computed here, once.

        Parameters
        ----------
        frame : Frame
            The model frame whose cubes :meth:`render` will take.

        Returns
        -------
        Observation
            A copy holding the operator; the data are shared, not copied.
        """
        renderer = build_renderer(self.frame, frame, name=self.name)
        return eqx.tree_at(lambda o: o.renderer, self, renderer, is_leaf=lambda x: x is None)

    def render(self, model, shift=None, *, convolved: bool = True) -> jax.Array:
        """Predicted data for a model cube.

        Parameters
        ----------
        model : array_like
            ``frame.shape`` cube in the model frame (flux per model pixel).
        shift : array_like, optional
            ``(dy, dx)`` in pixels of this observation: sources appear at their WCS
            position plus this offset (positive toward larger pixel coordinates).
        convolved : bool
            ``False`` if ``model`` is the scene before the model PSF (see
            :meth:`mobs_ppl.Scene.render`); saves a convolution.

        Returns
        -------
        jax.Array
            ``(channels, height, width)`` prediction in data units per pixel.
        """
        return self._require_renderer()(model, self.model_shift(shift), convolved)

    # -- the likelihood: the interface every observation kind owns ---------------------
    @property
    def likelihood_observation(self) -> Observation:
        """The observation whose pixels the likelihood counts: this one.

        (A resampled :class:`~mobs_ppl.CorrelatedObservation` answers its native
        observation.) Its ``data`` are the observed values, its ``channels`` those of
        :meth:`chi2_per_channel`.
        """
        return self

    def likelihood(self, model, shift=None, *, convolved: bool = False):
        """The observed site's distribution and value for a model cube.

        Parameters
        ----------
        model : array_like
            ``(channels, height, width)`` model cube on the bound frame, before the
            model PSF unless ``convolved``.
        shift : array_like, optional
            ``(dy, dx)`` in **model** pixels, as the NumPyro model samples it (handed
            to the renderer as it is).

        Returns
        -------
        distribution : numpyro.distributions.Distribution
            Independent Gaussian pixels with the counted weights
            (:meth:`counted_weights`), exposing ``whitened_residual``.
        value : jax.Array
            The data.
        """
        prediction = self._require_renderer()(model, shift, convolved)
        return pixel_normal(prediction, self.counted_weights()), self.data

    def chi2_per_channel(self, model, shift=None, *, convolved: bool = True):
        """Chi-square and number of counted pixels per channel, ``(channels,)`` each.

        ``shift`` in model pixels, as in :meth:`likelihood`; ``model`` convolved with
        the model PSF by default, as :meth:`mobs_ppl.Scene.render` gives it.
        """
        weights = self.counted_weights()
        residual = self.data - self._require_renderer()(model, shift, convolved)
        return jnp.sum(weights * residual**2, axis=(1, 2)), jnp.sum(weights > 0, axis=(1, 2))

    def log_likelihood(self, model, shift=None, *, convolved: bool = True) -> jax.Array:
        """Gaussian log-likelihood of the data given a model cube (independent pixels).

        Includes the normalisation ``0.5 * sum(log(w / 2 pi))`` over used pixels. Pixels
        outside the model frame's coverage do not count. The sum of the pointwise
        density of :meth:`likelihood` (the one implementation, which the NumPyro model
        uses too). ``shift`` in this observation's pixels, as in :meth:`render`.
        """
        distribution, value = self.likelihood(model, self.model_shift(shift), convolved=convolved)
        return jnp.sum(distribution.log_prob(value))
