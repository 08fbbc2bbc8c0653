"""The forward model of one observation: model frame -> predicted data.

The model cube holds, in each model pixel, the flux of the scene convolved with the
model PSF. For an observation with PSF ``P`` on a grid related to the model grid by
the WCS, the prediction is computed exactly for band-limited images, in four steps:

1. select the observation's channels from the model cube;
2. Fourier transform (zero-padded so the convolution does not wrap) and multiply by
   the transfer function ``T(k) = P_obs(J^T k) / P_model(k)``, which replaces the model
   PSF by the observation's PSF; ``J`` is the local Jacobian from observation pixels to
   model pixels, and ``T`` is zero above the observation's Nyquist frequency (those
   modes cannot be seen in its pixels). A shift ``s`` (model pixels) is a phase
   ``exp(-2 pi i k . s)``;
3. crop the spectrum to the band the observation sees and transform back to a grid
   that is just fine enough for it (this is exact: nothing is discarded but zeros);
4. evaluate that band-limited image at the centre of every observed pixel, from the
   WCS, with the periodic-sinc (trigonometric) interpolant, and scale by the pixel-area
   ratio so that fluxes are conserved.

Why Fourier interpolation rather than Lanczos: after step 2 the image is band-limited
by construction, so trigonometric interpolation is exact up to round-off, where a
Lanczos-3 kernel leaves errors of ~1e-3 of the peak for well-sampled PSFs. Its cost
is kept low by step 3: interpolation runs on a grid only ~2x finer than the
observation's Nyquist sampling, not on the full model grid.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import fourier, sky
from ._warnings import MobsPplWarning
from .psf import nyquist_amplitude, psf_light_beyond, psf_sigma

__all__ = ["Renderer", "build_renderer", "point_flux_errors", "FLUX_ERROR_TOLERANCE"]

#: Positions this close to a whole pixel (model pixels) count as on the grid.
_GRID_TOLERANCE = 1e-8

#: Largest departure (intermediate-grid pixels) from a separable set of positions that
#: is handled by the first-order corrected separable interpolation.
_NEAR_SEPARABLE = 1e-2

#: Largest flux error (relative) of a point source that :func:`build_renderer` accepts
#: without a warning; the level of photometric calibration (see ``psf``).
FLUX_ERROR_TOLERANCE = 1e-3

#: Below this Fourier amplitude of the observation's PSF on the edge of its Nyquist
#: band (:func:`mobs_ppl.psf.nyquist_amplitude`) the flux errors are not computed: the
#: ringing of a point scales with that amplitude and stays well below it (measured:
#: 1/8 to 1/20 of it for Gaussians of 0.4 to 1.2 pixels), so below this screen the
#: error stays under a quarter of the tolerance. (The HSC PSFs of the COSMOS field have
#: amplitudes 5e-4 to 1e-3 and rendered errors 1e-5 to 5e-5: the check, a vmapped
#: render of the whole model frame, would cost them ~5 s per observation for nothing.)
_NYQUIST_SCREEN = 2 * FLUX_ERROR_TOLERANCE

#: Sub-pixel positions (observation pixels, per axis) of the points that
#: :func:`point_flux_errors` renders: the flux error of a point is largest half-way
#: between pixel centres and its sign follows the parity of the pixel, hence both.
_PHASES = np.array([0.0, 0.5, 1.0, 1.5])


class Renderer(eqx.Module):
    """Precomputed forward operator from a model frame into one observation.

    Build it with :func:`build_renderer` (or ``Observation.match``); call it with a
    model cube and an optional shift. All arrays are set up once; calling it is a pure
    JAX function that can be jitted and differentiated.
    """

    channel_index: tuple[int, ...] = eqx.field(static=True)
    model_shape: tuple[int, int, int] = eqx.field(static=True)
    padded_shape: tuple[int, int] = eqx.field(static=True)
    grid_shape: tuple[int, int] = eqx.field(static=True)
    out_shape: tuple[int, int] = eqx.field(static=True)
    mode: str = eqx.field(static=True)
    transfer: jax.Array
    freq_y: jax.Array
    freq_x: jax.Array
    # d(model pixel) / d(observation pixel), (y, x) order, at the observation's centre
    jacobian: jax.Array
    # d(observation pixel) / d(model pixel) at the model frame's centre, where the scene
    # lies: a shift in model pixels expressed in observation pixels (the one owner of
    # that conversion, which SceneModel.to_native reads); the inverse of ``jacobian``
    # to the WCS's curvature across the frames (1e-9 for the test fields)
    native_from_model: jax.Array
    interp_y: jax.Array
    interp_x: jax.Array
    coverage: jax.Array
    model_psf: jax.Array | None = None
    delta_y: jax.Array | None = None
    delta_x: jax.Array | None = None
    # the model frame's Frame.key: which frame this operator renders from
    model_frame_key: tuple | None = eqx.field(static=True, default=None)

    def renders_from(self, frame) -> bool:
        """Whether this operator was built for ``frame`` (same :attr:`Frame.key`)."""
        return self.model_frame_key == frame.key

    def model_shift(self, shift) -> jax.Array | None:
        """A shift ``(dy, dx)`` in observation pixels, in model pixels (``None`` stays).

        ``jacobian @ shift``: the one conversion from an observation's pixels to the
        model's, at the observation's centre (:attr:`native_from_model` goes back).
        """
        if shift is None:
            return None
        return self.jacobian @ jnp.asarray(shift, dtype=self.jacobian.dtype)

    def __call__(self, model, shift=None, convolved: bool = True) -> jax.Array:
        """Predicted data ``(channels, height, width)`` for a model-frame cube.

        Parameters
        ----------
        model : array_like
            Cube of shape ``model_shape`` (flux per model pixel).
        shift : array_like, optional
            ``(dy, dx)`` in **model** pixels; sources appear displaced by it. A shift in
            observation pixels converts with :meth:`model_shift`.
        convolved : bool
            Whether the cube is already convolved with the model PSF (the frame's
            convention). ``False`` takes the unconvolved scene and applies the
            observation's PSF directly, which saves one convolution per evaluation.
        """
        model = jnp.asarray(model)
        if model.shape != self.model_shape:
            raise ValueError(
                f"model cube has shape {model.shape}, the frame expects {self.model_shape}"
            )
        cube = model[jnp.array(self.channel_index)]
        _, height, width = self.model_shape
        hp, wp = self.padded_shape
        hq, wq = self.grid_shape
        cube = jnp.pad(cube, ((0, 0), (0, hp - height), (0, wp - width)))
        spectrum = jnp.fft.rfft2(cube)
        if hq < hp:
            spectrum = jnp.concatenate(
                [spectrum[:, : hq // 2], spectrum[:, hp - hq // 2 :]], axis=1
            )
        spectrum = spectrum[:, :, : wq // 2 + 1]
        transfer = self.transfer if convolved else self.transfer * self.model_psf
        if shift is not None:
            offset = jnp.asarray(shift, dtype=self.jacobian.dtype)
            phase = self.freq_y[:, None] * offset[0] + self.freq_x[None, :] * offset[1]
            transfer = transfer * jnp.exp(-2j * jnp.pi * phase)
        if self.mode == "near_separable":
            return self._near_separable(spectrum * transfer) * self.coverage
        image = jnp.fft.irfft2(spectrum * transfer, s=(hq, wq))
        if self.mode == "crop":
            out = image[:, self.interp_y][:, :, self.interp_x]
        elif self.mode == "separable":
            out = jnp.einsum("py,cyx,qx->cpq", self.interp_y, image, self.interp_x)
        else:
            partial = jnp.einsum("cyx,px->cyp", image, self.interp_x)
            out = jnp.einsum("py,cyp->cp", self.interp_y, partial)
            out = out.reshape((out.shape[0], *self.out_shape))
        return out * self.coverage

    def _near_separable(self, spectrum) -> jax.Array:
        """Separable interpolation plus its Taylor correction to second order.

        Positions deviate from a separable grid by ``delta`` (intermediate-grid pixels,
        below ``_NEAR_SEPARABLE``); ``f(p + delta)`` is expanded to second order with
        derivatives computed exactly in Fourier space. The neglected third-order term is
        below ``|delta|^3 (2 pi k_max)^3 / 6`` ~ 5e-6 of the peak for the largest
        deviation allowed (band limit ``k_max`` < 0.5 cycles per grid pixel).
        """
        hp, wp = self.padded_shape
        hq, wq = self.grid_shape
        shape = spectrum.shape[1:]
        iy = 2j * jnp.pi * jnp.broadcast_to((self.freq_y * hp / hq)[:, None], shape)
        ix = 2j * jnp.pi * jnp.broadcast_to((self.freq_x * wp / wq)[None, :], shape)
        factors = jnp.stack([jnp.ones_like(iy), iy, ix, iy * iy, ix * ix, iy * ix])
        images = jnp.fft.irfft2(spectrum[None] * factors[:, None], s=(hq, wq))
        v = jnp.einsum("py,ncyx,qx->ncpq", self.interp_y, images, self.interp_x)
        dy, dx = self.delta_y, self.delta_x
        return (
            v[0]
            + dy * v[1]
            + dx * v[2]
            + 0.5 * dy * dy * v[3]
            + 0.5 * dx * dx * v[4]
            + dy * dx * v[5]
        )


def _positions(obs_frame, model_frame):
    """Model-frame pixel coordinates of every observed pixel centre, and the Jacobians.

    Returns ``y, x`` (``(ho, wo)`` each), the Jacobian from observation to model pixels
    at the observation's centre, and the one from model to observation pixels at the
    model frame's centre.
    """
    _, ho, wo = obs_frame.shape
    yy, xx = np.indices((ho, wo), dtype=float)
    if obs_frame.wcs is None and model_frame.wcs is None:
        if obs_frame.shape[1:] != model_frame.shape[1:]:
            raise ValueError(
                "without WCS an observation can only be matched to a frame of the same "
                f"height and width ({obs_frame.shape[1:]} vs {model_frame.shape[1:]}); "
                "give both a WCS"
            )
        return yy, xx, np.eye(2), np.eye(2)
    if obs_frame.wcs is None or model_frame.wcs is None:
        which = "observation" if obs_frame.wcs is None else "model frame"
        raise ValueError(f"the {which} has no WCS, so the two grids cannot be related")
    y, x = sky.pixel_to_pixel(obs_frame.wcs, model_frame.wcs, yy.ravel(), xx.ravel())
    jac = sky.local_jacobian(obs_frame.wcs, model_frame.wcs, (ho - 1) / 2.0, (wo - 1) / 2.0)
    _, hm, wm = model_frame.shape
    back = sky.local_jacobian(model_frame.wcs, obs_frame.wcs, (hm - 1) / 2.0, (wm - 1) / 2.0)
    return y.reshape(ho, wo), x.reshape(ho, wo), jac, back


def _psf_or_delta(psf, index):
    if psf is None:
        return None
    psf = np.asarray(psf)
    return psf[0] if psf.shape[0] == 1 else psf[index]


def point_flux_errors(renderer: Renderer, anchor) -> np.ndarray:
    """Flux errors of a point source rendered at sub-pixel positions near ``anchor``.

    The renderer is exact for images band-limited at the observation's Nyquist
    frequency. An undersampled PSF (one with amplitude at that frequency:
    :func:`mobs_ppl.psf.nyquist_amplitude`) is not: a point between pixel centres is
    rendered as the band-limited interpolant of the aliased PSF image, which rings far
    beyond the PSF, so the light inside the observation's pixels differs from the
    point's flux. This renders a unit point (an exact band-limited delta, placed by the
    Fourier shift) at ``(0, 0.5, 1, 1.5)`` observation pixels from ``anchor`` on each
    axis and compares each image's sum with that of the point on the pixel centre,
    whose image is the PSF's own pixels (no ringing).

    Parameters
    ----------
    renderer : Renderer
        The operator, as built by :func:`build_renderer`.
    anchor : array_like
        ``(y, x)`` model-frame position of an observed pixel centre inside the model
        frame, far from the edges of the observation (the ringing lost beyond an
        edge grows as the point nears it).

    Returns
    -------
    ndarray
        Per observation channel, the largest ``|flux / flux on the pixel centre - 1|``.
    """
    anchor = np.asarray(anchor, float)
    _, height, width = renderer.model_shape
    pixel = np.clip(np.round(anchor), 0, [height - 1, width - 1]).astype(int)
    cube = jnp.zeros(renderer.model_shape).at[:, pixel[0], pixel[1]].set(1.0)
    phases = np.stack(np.meshgrid(_PHASES, _PHASES, indexing="ij"), axis=-1).reshape(-1, 2)
    jac = np.asarray(renderer.jacobian)
    # model-pixel shifts that put the point at anchor + phase (observation pixels)
    shifts = jnp.asarray(phases @ jac.T + (anchor - pixel))
    images = jax.vmap(lambda s: renderer(cube, s, convolved=False))(shifts)
    sums = np.asarray(jnp.sum(images, axis=(-2, -1)))
    return np.max(np.abs(sums / sums[:1] - 1), axis=0)


def _percent_rounded_up(fraction: float) -> str:
    """``fraction`` in percent to two significant digits, rounded up (a bound stays one)."""
    percent = 100 * float(fraction)
    step = 10.0 ** (np.floor(np.log10(percent)) - 1)
    return f"{np.ceil(percent / step - 1e-9) * step:.2g}"


def _warn_if_undersampled(obs_frame, renderer: Renderer, inside, y, x, name) -> None:
    """Warn when a point source's rendered flux can be off by more than the tolerance.

    The predicted error compares the flux of a point between pixel centres with that of
    a point on a centre (:func:`point_flux_errors`). Where the observation is small
    against its PSF, the true flux in its pixels also changes with the position (the
    PSF's wings leave it), by at most the PSF's light ``wing`` beyond the anchor's
    distance to the nearest pixel not covered; the true error then lies within
    ``predicted +- wing``: the warning needs ``predicted - wing`` above the tolerance
    and states ``predicted + wing``.
    """
    if obs_frame.psf is None or renderer.mode == "crop":
        return  # no PSF to alias, or the observation's own grid (exact)
    psf = np.asarray(obs_frame.psf)
    amplitudes = nyquist_amplitude(psf)
    if amplitudes.max() < _NYQUIST_SCREEN:
        return
    row, col, reach = _central_pixel(inside)
    errors = point_flux_errors(renderer, (y[row, col], x[row, col]))
    # the points lie up to max(_PHASES) pixels from the anchor, their pixels one more
    wings = psf_light_beyond(psf, reach - _PHASES.max() - 1)
    wings = np.broadcast_to(wings, errors.shape)
    c = int(np.argmax(errors - wings))
    if errors[c] - wings[c] <= FLUX_ERROR_TOLERANCE:
        return
    image = psf[0] if psf.shape[0] == 1 else psf[c]
    amplitude = amplitudes[0] if amplitudes.size == 1 else amplitudes[c]
    warnings.warn(
        f"observation {name or '(unnamed)'!r}, channel {obs_frame.channels[c]!r}: its PSF "
        f"(Gaussian-equivalent width {psf_sigma(image):.2f} of its pixels) is "
        "undersampled, so a point source rendered from this model frame has a flux "
        f"error of up to {_percent_rounded_up(errors[c] + wings[c])}% near the "
        "observation's centre (more near its edges), depending on its sub-pixel "
        "position. The renderer treats images as band-limited at the pixels' Nyquist "
        f"frequency, where this PSF keeps {100 * amplitude:.2g}% of its amplitude. A "
        "model frame on this observation's own pixel grid renders its fluxes exactly",
        MobsPplWarning,
        stacklevel=4,
    )


def _central_pixel(inside) -> tuple[int, int, int]:
    """The covered pixel nearest the coverage's centre, and its reach.

    The reach is the Chebyshev distance (pixels) to the nearest pixel that is not
    covered, those beyond the observation's edges included.
    """
    rows, cols = np.nonzero(inside)
    k = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    row, col = int(rows[k]), int(cols[k])
    height, width = inside.shape
    reach = min(row + 1, height - row, col + 1, width - col)
    out_rows, out_cols = np.nonzero(~inside)
    if out_rows.size:
        reach = min(reach, int(np.min(np.maximum(abs(out_rows - row), abs(out_cols - col)))))
    return row, col, reach


def build_renderer(obs_frame, model_frame, name: str | None = None) -> Renderer:
    """Precompute the operator from ``model_frame`` cubes into ``obs_frame`` pixels.

    Parameters
    ----------
    obs_frame, model_frame : Frame
        The observation's frame and the model frame.
    name : str, optional
        The observation's name, for messages.

    Raises
    ------
    ValueError
        If channels are missing from the model frame, a WCS is missing, or no observed
        pixel falls inside the model frame.

    Warns
    -----
    MobsPplWarning
        If the observation's PSF is undersampled enough that a point source near its
        centre renders with a flux error above ``FLUX_ERROR_TOLERANCE`` at some
        sub-pixel position (:func:`point_flux_errors`); the message gives the error.
    """
    channel_index = model_frame.channel_indices(obs_frame)
    _, height, width = model_frame.shape
    _, ho, wo = obs_frame.shape
    y, x, jac, native_from_model = _positions(obs_frame, model_frame)
    inside = (
        (y > -0.5 - 1e-9) & (y < height - 0.5 + 1e-9) & (x > -0.5 - 1e-9) & (x < width - 0.5 + 1e-9)
    )
    if not inside.any():
        raise ValueError(
            "the observation does not overlap the model frame: none of its pixel centres "
            "falls inside it"
        )

    # padding: the PSF-matching kernel reaches as far as the observed PSF (in model
    # pixels) plus the model PSF. The convolution is circular over the padded grid, so
    # a value inside the frame picks up wrapped light only from model pixels more than
    # (padded size - reach) away: padding by one reach keeps every value inside the
    # frame exact (pixels outside the frame are not used: see ``coverage``)
    scale = float(np.max(np.linalg.svd(jac, compute_uv=False)))
    reach = 2
    if obs_frame.psf is not None:
        reach += int(np.ceil(0.5 * max(obs_frame.psf.shape[1:]) * scale))
    if model_frame.psf is not None:
        reach += int(np.ceil(0.5 * max(model_frame.psf.shape[1:])))
    hp = fourier.fast_size(height + reach)
    wp = fourier.fast_size(width + reach)
    freq_y = np.fft.fftfreq(hp)
    freq_x = np.fft.rfftfreq(wp)

    # the band visible in the observation's pixels
    band = fourier.visible_band(jac, *np.meshgrid(freq_y, freq_x, indexing="ij"))

    on_grid = (
        np.allclose(jac, np.eye(2), atol=_GRID_TOLERANCE)
        and np.allclose(y, np.round(y), atol=_GRID_TOLERANCE)
        and np.allclose(x, np.round(x), atol=_GRID_TOLERANCE)
    )
    if on_grid:
        # the grids coincide: use the exact identity, not the WCS round-trip (which is
        # off by ~1e-9 and would scale fluxes by that much)
        jac = np.eye(2)
        band = np.ones_like(band)
        hq, wq = hp, wp
    else:
        rows = np.any(band, axis=1)
        cols = np.any(band, axis=0)
        kmax_y = np.max(np.abs(freq_y[rows]))
        kmax_x = np.max(np.abs(freq_x[cols]))
        hq = min(hp, fourier.fast_size(2 * np.ceil(kmax_y * hp) + 4))
        wq = min(wp, fourier.fast_size(2 * np.ceil(kmax_x * wp) + 4))
    row_index = (
        np.concatenate([np.arange(hq // 2), np.arange(hp - hq // 2, hp)])
        if hq < hp
        else np.arange(hp)
    )
    fy = freq_y[row_index]
    fx = freq_x[: wq // 2 + 1]
    band = band[row_index][:, : wq // 2 + 1]

    transfer = np.zeros((len(channel_index), len(fy), len(fx)), complex)
    model_transfer = np.ones_like(transfer)
    for c, model_c in enumerate(channel_index):
        numerator = np.ones((len(fy), len(fx)), complex)
        obs_psf = _psf_or_delta(obs_frame.psf, c)
        if obs_psf is not None:
            numerator = fourier.image_transform(obs_psf, fy, fx, jac, where=band)
        denominator = np.ones_like(numerator)
        model_psf = _psf_or_delta(model_frame.psf, model_c)
        if model_psf is not None:
            denominator = fourier.image_transform(model_psf, fy, fx)
        model_transfer[c] = denominator
        usable = band & (np.abs(denominator) > 1e-10 * np.abs(denominator).max())
        safe = np.where(usable, denominator, 1.0)
        transfer[c] = np.where(usable, numerator / safe, 0.0)
    # flux per observed pixel = flux per model pixel x area ratio; the crop of the
    # spectrum changes the FFT normalisation by (hq wq) / (hp wp)
    transfer *= abs(np.linalg.det(jac)) * (hq * wq) / (hp * wp)

    if on_grid:
        mode = "crop"
        interp_y = np.mod(np.round(y[:, 0]).astype(int), hp)
        interp_x = np.mod(np.round(x[0, :]).astype(int), wp)
    else:
        yq, xq = y * hq / hp, x * wq / wp
        separable = np.allclose(y, y[:, :1], atol=_GRID_TOLERANCE, rtol=0) and np.allclose(
            x, x[:1, :], atol=_GRID_TOLERANCE, rtol=0
        )
        row_y, col_x = yq.mean(axis=1), xq.mean(axis=0)
        delta_y, delta_x = yq - row_y[:, None], xq - col_x[None, :]
        near = max(np.abs(delta_y).max(), np.abs(delta_x).max()) < _NEAR_SEPARABLE
        if separable:
            mode = "separable"
            interp_y = fourier.interpolation_matrix(yq[:, 0], hq)
            interp_x = fourier.interpolation_matrix(xq[0, :], wq)
        elif near:
            mode = "near_separable"
            interp_y = fourier.interpolation_matrix(row_y, hq)
            interp_x = fourier.interpolation_matrix(col_x, wq)
            deltas = (jnp.asarray(delta_y), jnp.asarray(delta_x))
        else:
            mode = "general"
            interp_y = fourier.interpolation_matrix(yq, hq)
            interp_x = fourier.interpolation_matrix(xq, wq)

    if mode != "near_separable":
        deltas = (None, None)
    renderer = Renderer(
        channel_index=channel_index,
        model_shape=tuple(model_frame.shape),
        padded_shape=(hp, wp),
        grid_shape=(hq, wq),
        out_shape=(ho, wo),
        mode=mode,
        transfer=jnp.asarray(transfer),
        freq_y=jnp.asarray(fy),
        freq_x=jnp.asarray(fx),
        jacobian=jnp.asarray(jac),
        native_from_model=jnp.asarray(native_from_model),
        interp_y=jnp.asarray(interp_y),
        interp_x=jnp.asarray(interp_x),
        coverage=jnp.asarray(inside.astype(float)),
        model_psf=jnp.asarray(model_transfer),
        delta_y=deltas[0],
        delta_x=deltas[1],
        model_frame_key=model_frame.key,
    )
    _warn_if_undersampled(obs_frame, renderer, inside, y, x, name)
    return renderer
