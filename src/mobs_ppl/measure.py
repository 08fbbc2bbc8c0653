"""Measurements on scenes: forced photometry, per-source moments, goodness of fit."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from ._warnings import MobsPplWarning
from .scene import Scene, rendered_flux

__all__ = [
    "TemplateShift",
    "centroid",
    "flux",
    "forced_photometry",
    "goodness_of_fit",
    "moments",
    "template_shift",
]

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
    correlations) -- exact, not iterative. The components of one galaxy (a scene's
    ``groups``) share one amplitude per channel: their spectra there come out equal.

    Parameters
    ----------
    scene : Scene
        Sources whose morphologies (and positions) are kept.
    observation : Observation or CorrelatedObservation
        Its channels must be channels of ``scene.frame``.
    shift : array_like, optional
        ``(dy, dx)`` of the observation, in its own pixels (as for ``render``).
    return_covariance : bool
        Also return the ``(sources x channels)`` covariance of the amplitudes (equal
        rows for the components of one galaxy).

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
    obs = observation.bound_to(frame)
    mapping = frame.map_channels(obs.frame)
    if not mapping:
        raise ValueError(f"observation {obs.name!r} shares no channel with the model frame")
    model_channels = jnp.array(list(mapping))
    groups = np.asarray(scene.groups)
    # one amplitude per galaxy: the components of a group share it (a core and its
    # envelope are nearly degenerate in a coarse image; the fit separates their colours)
    templates = jax.ops.segment_sum(
        _templates(scene)[:, model_channels], jnp.asarray(groups), scene.n_groups
    )
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
    component_index = (groups[:, None] * n_channels + np.arange(n_channels)).ravel()
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
    for source, g in zip(scene.sources, groups, strict=True):
        spectrum = np.asarray(source.spectrum).copy()
        if seen[g]:
            spectrum[np.asarray(model_channels)] = positive[g]
        sources.append(source.with_spectrum(spectrum))
    out = scene.replace_sources(sources)
    if return_covariance:
        return (
            out,
            amplitudes[groups],
            covariance[np.ix_(component_index, component_index)],
        )
    return out


def flux(source, frame=None) -> np.ndarray:
    """Flux per channel of a source (before the PSF).

    Parameters
    ----------
    source : AbstractSource
        The source.
    frame : Frame, optional
        The model frame it is rendered on: the flux is then that of the part of its box
        inside the frame, what is rendered and fitted (see
        :func:`mobs_ppl.scene.rendered_flux`), as :meth:`Scene.source_fluxes` reports.
        Without it, the flux of the whole box (``source.flux()``).
    """
    if frame is None:
        return np.asarray(source.flux())
    _, height, width = frame.shape
    return np.asarray(rendered_flux(source, height, width))


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
        ``(dy, dx)`` in the observation's own pixels (for a native observation fitted
        directly or through a resampled one: ``fit.shift_native(name)``).

    Returns
    -------
    dict
        ``{channel: chi2 / number of used pixels}``.
    """
    obs = observation.bound_to(scene.frame)
    chi2, counts = (
        np.asarray(a) for a in obs.chi2_per_channel(scene.render(), obs.model_shift(shift))
    )
    channels = obs.likelihood_observation.channels
    return {name: float(chi2[c] / max(counts[c], 1)) for c, name in enumerate(channels)}


@dataclasses.dataclass(frozen=True)
class TemplateShift:
    """Result of :func:`template_shift`.

    Attributes
    ----------
    shift : ndarray
        ``(dy, dx)`` of the target observation, in its native pixels: where the
        template's light appears in it minus where the WCS puts it.
    sd : ndarray
        Standard deviation of ``shift`` from the noise of both images: the target's,
        and the template's own as it propagates through the rendering (to first
        order, from the template's weights).
    amplitudes : dict
        Fitted scale of the template in every channel used.
    per_channel : dict
        The shift fitted in each channel alone, with its sd: ``{channel: (shift, sd)}``
        (a trend with wavelength means colour gradients).
    pixels : int
        Target pixels used.
    """

    shift: np.ndarray
    sd: np.ndarray
    amplitudes: dict
    per_channel: dict
    pixels: int


def template_shift(template, target, channels=None, margin: float = 2.0) -> TemplateShift:
    """Astrometric shift of an observation measured against another one's image.

    An estimate of a coarse observation's shift independent of any scene model: the
    image of a sharp ``template`` observation (e.g. HST) is rendered into the
    ``target``'s native pixels (PSF-matched by the forward model of
    :mod:`mobs_ppl.renderer`) and fitted to the target's data channel by channel with
    a free amplitude per channel and one common shift, by Gauss-Newton on the weighted
    residuals. Only target pixels whose PSF footprint (``margin`` PSF widths) lies
    inside the template image are used, so that light from outside the template does
    not enter.

    Parameters
    ----------
    template : Observation
        The sharp observation whose first channel is the template image.
    target : Observation
        The observation whose shift is measured (native, not resampled).
    channels : sequence of str, optional
        Channels of ``target`` to fit (default: all). Red channels are closest in
        colour to a red template.
    margin : float
        Target pixels within this many target PSF widths (Gaussian sigma) of the edge
        of the template image are not used.

    Returns
    -------
    TemplateShift

    Notes
    -----
    The template image carries the galaxies' light in its own band: a galaxy whose
    colour varies across it appears in another band with its light elsewhere, so a
    shift measured this way includes the colour gradients between the template's band
    and the target's (``per_channel`` shows their trend).
    """
    from .frame import Frame
    from .observation import Observation
    from .psf import psf_sigma

    channels = list(target.channels if channels is None else channels)
    unknown = [c for c in channels if c not in target.channels]
    if unknown:
        raise ValueError(f"channels {unknown} are not in {target.name!r} {target.channels}")
    if template.wcs is None or target.wcs is None:
        raise ValueError("template_shift needs the WCS of both observations")
    index = [target.channels.index(c) for c in channels]
    psf = None if target.psf is None else np.asarray(target.psf)
    if psf is not None and psf.shape[0] > 1:
        psf = psf[index]
    sub = Observation(
        np.asarray(target.data)[index],
        weights=np.asarray(target.weights)[index],
        psf=psf,
        wcs=target.wcs,
        channels=channels,
        name=target.name,
    )
    image = jnp.asarray(np.asarray(template.data)[0])
    frame = Frame(
        (len(channels), *image.shape), wcs=template.wcs, channels=channels, psf=template.psf
    )
    bound = sub.match(frame)
    # target pixels far enough inside the template image
    width = psf_sigma(np.asarray(sub.psf)) if sub.psf is not None else 1.0
    inside = np.asarray(bound.renderer.coverage) > 0
    inside = ndimage.binary_erosion(inside, iterations=max(int(np.ceil(margin * width)), 1))
    weights = jnp.asarray(np.asarray(sub.weights) * inside[None])
    pixels = int(np.sum(weights[0] > 0))
    if pixels == 0:
        raise ValueError(f"no pixel of {target.name!r} lies far enough inside the template")
    template_weights = np.asarray(template.weights)[0]
    template_variance = jnp.asarray(
        np.where(template_weights > 0, 1.0 / np.where(template_weights > 0, template_weights, 1), 0)
    )

    def residual(params, image, mask):
        amplitudes, shift = params[:-2], params[-2:]
        cube = jnp.broadcast_to(image, frame.shape) * amplitudes[:, None, None]
        model = bound.render(cube, shift)
        return (jnp.sqrt(weights * mask[:, None, None]) * (sub.data - model)).ravel()

    residual = jax.jit(residual)
    jacobian = jax.jit(jax.jacfwd(residual))

    def fit(mask):
        data = np.asarray(sub.data)
        w = np.asarray(weights)
        first = np.asarray(bound.render(jnp.broadcast_to(jnp.asarray(image), frame.shape)))
        start = np.sum(w * first * data, axis=(1, 2)) / np.maximum(
            np.sum(w * first * first, axis=(1, 2)), 1e-300
        )
        params = jnp.asarray(np.concatenate([np.where(start > 0, start, 1.0), [0.0, 0.0]]))
        keep = np.concatenate([np.asarray(mask) > 0, [True, True]])
        for _ in range(20):
            r = residual(params, image, mask)
            jac = np.asarray(jacobian(params, image, mask))[:, keep]
            normal = jac.T @ jac
            step = np.linalg.solve(normal, -jac.T @ np.asarray(r))
            full = np.zeros(params.size)
            full[keep] = step
            params = params + full
            if np.max(np.abs(step[-2:])) < 1e-8:
                break
        jac = np.asarray(jacobian(params, image, mask))[:, keep]
        inverse = np.linalg.inv(jac.T @ jac)
        # the template's noise enters through the model: to first order the estimate
        # moves by N^-1 J^T (d model / d template) dt, whose covariance the template's
        # weights give (two reverse passes, one per shift axis)
        _, pullback = jax.vjp(lambda t: residual(params, t, mask), jnp.asarray(image))
        rows = inverse[-2:] @ jac.T
        sensitivity = np.stack([np.asarray(pullback(jnp.asarray(row))[0]).ravel() for row in rows])
        template_cov = (sensitivity * np.asarray(template_variance).ravel()) @ sensitivity.T
        covariance = inverse[-2:, -2:] + template_cov
        return np.asarray(params), np.sqrt(np.diag(covariance))

    params, sd = fit(jnp.ones(len(channels)))
    per_channel = {}
    for c, name in enumerate(channels):
        if len(channels) == 1:
            per_channel[name] = (params[-2:], sd)
            break
        mask = jnp.zeros(len(channels)).at[c].set(1.0)
        p, s = fit(mask)
        per_channel[name] = (p[-2:], s)
    return TemplateShift(
        shift=params[-2:],
        sd=sd,
        amplitudes=dict(zip(channels, params[:-2].tolist(), strict=True)),
        per_channel=per_channel,
        pixels=pixels,
    )
