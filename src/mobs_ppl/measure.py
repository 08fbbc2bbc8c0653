"""Measurements on scenes: forced photometry, per-source moments, goodness of fit."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ._warnings import MobsPplWarning
from .correlated import CorrelatedObservation
from .scene import Scene

__all__ = ["forced_photometry", "flux", "centroid", "moments", "goodness_of_fit"]

#: A source is unseen by an observation when less than this fraction of its light lands
#: in the observation's pixels -- its amplitude there would rest on the faint floor of
#: its box, not on the galaxy (a galaxy 5 sigma beyond the edge of an image put 6e-4 of
#: its box's light into it; float32 FFT round-off alone puts ~5e-6 there) -- or when
#: the information on its amplitude (the diagonal of the negative log-likelihood's
#: Hessian) is below ``UNSEEN_INFORMATION`` times the largest of the other sources (its
#: light falls on zero-weight pixels).
UNSEEN_LIGHT = 1e-2
UNSEEN_INFORMATION = 1e-10


def _light_fractions(obs, templates, model_channels, shift) -> np.ndarray:
    """Fraction of each source's (unit-spectrum) light that lands in ``obs``'s pixels."""
    fractions = []
    for template in templates:
        cube = jnp.zeros(obs.renderer.model_shape, dtype=template.dtype)
        rendered = obs.render(cube.at[model_channels].set(template), shift)
        fractions.append(float(jnp.sum(jnp.abs(rendered)) / jnp.sum(jnp.abs(template))))
    return np.array(fractions)


def _bound(observation, frame):
    renderer = observation.renderer
    if renderer is None or renderer.model_shape != frame.shape:
        return observation.match(frame)
    return observation


def _templates(scene: Scene) -> jax.Array:
    """``(sources, channels, H, W)``: each source rendered with a unit spectrum."""
    ones = jnp.ones(scene.frame.n_channels)
    cubes = [scene.replace_sources([s.with_spectrum(ones)]).render() for s in scene.sources]
    return jnp.stack(cubes)


def forced_photometry(scene: Scene, observation, shift=None, return_covariance: bool = False):
    """Spectra of all sources in the channels of ``observation``, morphologies fixed.

    The amplitudes of all sources in all of the observation's channels are solved
    jointly (blended sources together) by maximising the observation's own
    log-likelihood, which is quadratic in them: ``a = -H^{-1} g`` with the gradient and
    Hessian at zero. The solution is therefore the generalised least-squares one under
    the observation's noise model (independent pixels, resampled data, or measured
    correlations) -- exact, not iterative.

    Parameters
    ----------
    scene : Scene
        Sources whose morphologies (and positions) are kept.
    observation : Observation or CorrelatedObservation
        Its channels must be channels of ``scene.frame``.
    shift : array_like, optional
        ``(dy, dx)`` of the observation, in its own pixels (as for ``render``).
    return_covariance : bool
        Also return the ``(sources x channels)`` covariance of the amplitudes.

    Returns
    -------
    Scene
        The scene with those channels of every spectrum replaced (through
        ``frame.map_channels``). Amplitudes that come out non-positive (noise) are set
        to 1e-3 of the channel's largest amplitude, with a warning, because spectra
        must stay positive. With ``return_covariance``: ``(scene, amplitudes, cov)``.
        Sources the observation does not see (their light falls outside it) keep
        their spectra, with a warning; their amplitudes and covariance rows are NaN.

    Raises
    ------
    ValueError
        If the observation shares no channel with the frame, or sees no source.
    """
    frame = scene.frame
    obs = _bound(observation, frame)
    mapping = frame.map_channels(obs.frame)
    if not mapping:
        raise ValueError(f"observation {obs.name!r} shares no channel with the model frame")
    model_channels = jnp.array(list(mapping))
    templates = _templates(scene)[:, model_channels]
    n_sources, n_channels = templates.shape[:2]

    def log_likelihood(amplitudes):
        partial = jnp.einsum("sk,skhw->khw", amplitudes.reshape(n_sources, n_channels), templates)
        cube = jnp.zeros(frame.shape, dtype=partial.dtype).at[model_channels].set(partial)
        return obs.log_likelihood(cube, shift)

    # the log-likelihood is quadratic in the amplitudes: its gradient at zero and its
    # Hessian (one forward-over-reverse product per amplitude, run sequentially so
    # memory stays that of one gradient) give the exact maximum
    zero = jnp.zeros(n_sources * n_channels)
    gradient_fn = jax.grad(log_likelihood)

    @jax.jit
    def normal_equations(zero):
        basis = jnp.eye(zero.size, dtype=zero.dtype)
        columns = jax.lax.map(lambda v: jax.jvp(gradient_fn, (zero,), (v,))[1], basis)
        return gradient_fn(zero), columns

    gradient, hessian = normal_equations(zero)
    hessian = 0.5 * (np.asarray(hessian) + np.asarray(hessian).T)
    # a source with (almost) none of its light in the observation, or none on pixels
    # with weight, has no information there (see UNSEEN_LIGHT): it is left out of the
    # solve and keeps its spectrum in these channels.
    information = -np.diag(hessian).reshape(n_sources, n_channels)
    seen = _light_fractions(obs, templates, model_channels, shift) > UNSEEN_LIGHT
    if np.any(seen):
        seen &= np.all(information > UNSEEN_INFORMATION * information[seen].max(), axis=1)
    if not np.any(seen):
        raise ValueError(
            f"no source of the scene falls on the used pixels of observation {obs.name!r}"
        )
    if not np.all(seen):
        warnings.warn(
            f"sources {np.nonzero(~seen)[0].tolist()} fall outside observation {obs.name!r} "
            "(or on zero-weight pixels); their spectra in its channels were left unchanged",
            MobsPplWarning,
            stacklevel=2,
        )
    keep = np.repeat(seen, n_channels)
    sub_hessian = hessian[np.ix_(keep, keep)]
    amplitudes = np.full(n_sources * n_channels, np.nan)
    amplitudes[keep] = -np.linalg.solve(sub_hessian, np.asarray(gradient)[keep])
    covariance = np.full((keep.size, keep.size), np.nan)
    covariance[np.ix_(keep, keep)] = np.linalg.inv(-sub_hessian)
    amplitudes = amplitudes.reshape(n_sources, n_channels)
    floor = 1e-3 * np.nanmax(np.abs(amplitudes), axis=0, keepdims=True)
    bad = seen[:, None] & ~(amplitudes > 0)
    if np.any(bad):
        warnings.warn(
            f"{int(bad.sum())} forced amplitudes were not positive (noise or no signal); "
            "set to 1e-3 of the channel's largest so spectra stay positive",
            MobsPplWarning,
            stacklevel=2,
        )
    positive = np.where(bad, np.broadcast_to(floor, amplitudes.shape), amplitudes)
    sources = []
    for s, source in enumerate(scene.sources):
        spectrum = np.asarray(source.spectrum).copy()
        if seen[s]:
            spectrum[np.asarray(model_channels)] = positive[s]
        sources.append(source.with_spectrum(spectrum))
    out = scene.replace_sources(sources)
    if return_covariance:
        return out, amplitudes, covariance
    return out


def flux(source) -> np.ndarray:
    """Total flux per channel of a source (before the PSF)."""
    return np.asarray(source.flux())


def centroid(source) -> np.ndarray:
    """Intensity-weighted centre ``(y, x)`` of a source's morphology, model pixels."""
    image = np.asarray(source.image())
    yy, xx = np.indices(image.shape, dtype=float)
    total = image.sum()
    y0, x0 = source.origin
    return np.array([(yy * image).sum() / total + y0, (xx * image).sum() / total + x0])


def moments(source) -> np.ndarray:
    """Second central moments ``[[Iyy, Iyx], [Ixy, Ixx]]`` of a morphology, pixels^2."""
    image = np.asarray(source.image())
    yy, xx = np.indices(image.shape, dtype=float)
    total = image.sum()
    cy, cx = (yy * image).sum() / total, (xx * image).sum() / total
    dy, dx = yy - cy, xx - cx
    iyy = (dy * dy * image).sum() / total
    ixx = (dx * dx * image).sum() / total
    ixy = (dx * dy * image).sum() / total
    return np.array([[iyy, ixy], [ixy, ixx]])


def goodness_of_fit(scene: Scene, observation, shift=None) -> dict[str, float]:
    """Chi-square per degree of freedom of a scene in each channel of an observation.

    Parameters
    ----------
    scene : Scene
        The (fitted) scene.
    observation : Observation or CorrelatedObservation
        Native observations are evaluated on their own pixels; a resampled observation
        is evaluated on its native data (its exact noise model).
    shift : array_like, optional
        ``(dy, dx)`` in the observation's own pixels (for a native observation use
        ``mp.frame.relative_jacobian(model_frame, obs.frame) @ fit.shift(name)``).

    Returns
    -------
    dict
        ``{channel: chi2 / number of used pixels}``.
    """
    obs = _bound(observation, scene.frame)
    cube = scene.render()
    if isinstance(obs, CorrelatedObservation) and obs.native is not None:
        shift = obs.native_shift(shift)
        obs = obs.native
    prediction = obs.render(cube, shift)
    residual = obs.data - prediction
    out = {}
    if isinstance(obs, CorrelatedObservation):
        used = obs.weights > 0
        chi2 = np.asarray(obs.noise.chi2_per_channel(residual * used))
        counts = np.asarray(jnp.sum(used, axis=(1, 2)))
    else:
        weights = obs.weights * obs.renderer.coverage
        chi2 = np.asarray(jnp.sum(weights * residual**2, axis=(1, 2)))
        counts = np.asarray(jnp.sum(weights > 0, axis=(1, 2)))
    for c, name in enumerate(obs.channels):
        out[name] = float(chi2[c] / max(counts[c], 1))
    return out
