"""Properties of the forward model that need no reference renderer.

jit against eager execution, gradients against finite differences, flux conservation,
the identity on the model's own grid, float32, the log-likelihood against a direct
NumPy sum, errors, and the absence of recompilation when values change.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS

import mobs_ppl as mp

MODEL_SCALE = 0.05  # arcsec per model pixel
MODEL_N = 64
OBS_SCALE = 0.11  # arcsec per observed pixel
OBS_N = 22
MODEL_SIGMA = 1.0  # model PSF, model pixels
OBS_SIGMA = 1.6  # observed PSF, observed pixels


def _wcs(scale, theta_deg, n, offset=(0.0, 0.0)):
    """TAN WCS, ``scale`` arcsec/px rotated by ``theta``, tangent point at centre + offset."""
    t = np.deg2rad(theta_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [34.5, -5.1]
    w.wcs.cd = np.diag([-1.0, 1.0]) @ (scale * rot) / 3600.0
    centre = (n - 1) / 2.0
    w.wcs.crpix = [centre + offset[0] + 1, centre + offset[1] + 1]
    w.wcs.set()
    return w


def _model_frame(n=MODEL_N, channels=("a",)):
    return mp.Frame(
        (len(channels), n, n),
        wcs=_wcs(MODEL_SCALE, 0.0, n),
        channels=list(channels),
        psf=mp.psf.gaussian_psf(MODEL_SIGMA),
    )


def _blob(n, centre, sigma, flux=1.0):
    """Elliptical Gaussian source on an ``n x n`` grid, total flux ``flux``."""
    yy, xx = np.indices((n, n), dtype=float)
    dy, dx = yy - centre[0], xx - centre[1]
    image = np.exp(
        -0.5 * ((dy / sigma) ** 2 + (dx / (1.4 * sigma)) ** 2 + 0.6 * dx * dy / sigma**2)
    )
    return flux * image / image.sum()


def _model_cube(n=MODEL_N):
    centre = ((n - 1) / 2.0 + 1.3, (n - 1) / 2.0 - 0.8)
    return (_blob(n, centre, 3.0, flux=10.0) + _blob(n, (centre[0] + 6, centre[1] - 5), 2.0))[None]


def _rotated_observation(frame, data=None, **kwargs):
    """A coarser observation rotated by 20 degrees and offset by a fraction of a pixel."""
    data = np.zeros((1, OBS_N, OBS_N)) if data is None else data
    kwargs.setdefault("weights", 1.0)
    return mp.Observation(
        data,
        psf=mp.psf.gaussian_psf(OBS_SIGMA),
        wcs=_wcs(OBS_SCALE, 20.0, OBS_N, offset=(0.27, -0.41)),
        channels=["a"],
        **kwargs,
    ).match(frame)


def _same_grid_observation(frame, psf):
    return mp.Observation(
        np.zeros(frame.shape), weights=1.0, psf=psf, wcs=frame.wcs, channels=frame.channels
    ).match(frame)


# On the model's own grid the relation between the grids is the identity, with or
# without a WCS (the renderer must not keep the ~1e-9 error of astropy round trips).
SAME_GRID_WCS = [pytest.param(False, id="no-wcs"), pytest.param(True, id="tan-wcs")]


def _same_grid_frame(with_wcs):
    frame = _model_frame()
    return frame if with_wcs else mp.Frame(frame.shape, channels=frame.channels, psf=frame.psf)


def test_jit_equals_eager():
    frame = _model_frame()
    obs = _rotated_observation(frame)
    cube = jnp.asarray(_model_cube())
    shift = jnp.array([0.31, -0.47])
    eager = np.asarray(obs.render(cube, shift))
    jitted = np.asarray(jax.jit(lambda c, s: obs.render(c, s))(cube, shift))
    peak = np.abs(eager).max()
    assert peak > 0
    np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-12 * peak)
    # the observation itself can be an argument of the jitted function
    by_arg = np.asarray(jax.jit(lambda o, c, s: o.render(c, s))(obs, cube, shift))
    np.testing.assert_allclose(by_arg, eager, rtol=0, atol=1e-12 * peak)
    # equinox's filter_jit takes the bound method directly (plain jax.jit cannot hash it)
    filtered = np.asarray(eqx.filter_jit(obs.render)(cube, shift))
    np.testing.assert_allclose(filtered, eager, rtol=0, atol=1e-12 * peak)


def test_gradients_match_finite_differences(rng):
    frame = _model_frame()
    obs = _rotated_observation(frame)
    cube = jnp.asarray(_model_cube())
    shift0 = jnp.array([0.31, -0.47])
    probe = jnp.asarray(rng.normal(size=obs.shape))

    def scalar(c, s):
        return jnp.sum(obs.render(c, s) * probe)

    grad_cube, grad_shift = jax.grad(scalar, argnums=(0, 1))(cube, shift0)
    grad_cube, grad_shift = np.asarray(grad_cube), np.asarray(grad_shift)

    # the scalar is linear in the cube: central differences are exact up to round-off
    eps = 1e-3
    pixels = [(0, 31, 32), (0, 20, 45), (0, 40, 17), (0, 33, 29)]
    for pixel in pixels:
        step = jnp.zeros_like(cube).at[pixel].set(eps)
        fd = (scalar(cube + step, shift0) - scalar(cube - step, shift0)) / (2 * eps)
        assert abs(grad_cube[pixel]) > 1e-3
        np.testing.assert_allclose(grad_cube[pixel], fd, rtol=1e-5)

    eps = 1e-5
    for axis in range(2):
        step = jnp.zeros(2).at[axis].set(eps)
        fd = (scalar(cube, shift0 + step) - scalar(cube, shift0 - step)) / (2 * eps)
        assert abs(grad_shift[axis]) > 1e-3
        np.testing.assert_allclose(grad_shift[axis], fd, rtol=1e-5)


@pytest.mark.parametrize("with_wcs", SAME_GRID_WCS)
def test_flux_is_conserved_on_the_model_grid(with_wcs):
    frame = _same_grid_frame(with_wcs)
    obs = _same_grid_observation(frame, mp.psf.gaussian_psf(2.5))
    assert obs.renderer.mode == "crop"
    # compact and central: its wings at the frame edge are below 1e-20
    cube = _blob(MODEL_N, (32.3, 30.6), 2.0, flux=7.0)[None]
    rendered = np.asarray(obs.render(cube))
    error = abs(rendered.sum() / cube.sum() - 1)
    print(f"\nsame-grid flux ({'tan' if with_wcs else 'no'} wcs): |ratio - 1| = {error:.2e}")
    assert error < 1e-10
    # the wider PSF really changed the image
    assert np.abs(rendered - cube).max() > 1e-2 * cube.max()


@pytest.mark.parametrize("with_wcs", SAME_GRID_WCS)
def test_model_psf_on_the_model_grid_is_the_identity(with_wcs, rng):
    frame = _same_grid_frame(with_wcs)
    obs = _same_grid_observation(frame, np.asarray(frame.psf[0]))
    cube = rng.normal(size=frame.shape)
    rendered = np.asarray(obs.render(cube))
    error = np.abs(rendered - cube).max() / np.abs(cube).max()
    print(f"\nsame-grid identity ({'tan' if with_wcs else 'no'} wcs): max|diff|/max = {error:.2e}")
    assert error < 1e-10


@pytest.fixture(scope="module")
def float64_reference():
    """Rendering of the test scene in float64 (module scope: built before ``float32``)."""
    frame = _model_frame()
    obs = _rotated_observation(frame)
    rendered = obs.render(_model_cube(), shift=(0.31, -0.47))
    assert rendered.dtype == jnp.float64
    return np.asarray(rendered)


def test_render_in_float32(float64_reference, float32):
    assert not jax.config.jax_enable_x64
    frame = _model_frame()
    obs = _rotated_observation(frame)
    cube = jnp.asarray(_model_cube(), dtype=jnp.float32)
    shift = jnp.array([0.31, -0.47], dtype=jnp.float32)
    rendered = obs.render(cube, shift=shift)
    assert rendered.dtype == jnp.float32
    jitted = jax.jit(lambda c, s: obs.render(c, s))(cube, shift)
    assert jitted.dtype == jnp.float32
    peak = np.abs(float64_reference).max()
    error = np.abs(np.asarray(rendered, dtype=float) - float64_reference).max() / peak
    print(f"\nfloat32 vs float64: max|diff|/peak = {error:.2e}")
    assert error < 1e-4


def test_log_likelihood_matches_numpy(rng):
    # a model frame smaller than the observation's footprint: its corners are uncovered
    frame = _model_frame(n=40)
    data = rng.normal(size=(1, OBS_N, OBS_N))
    weights = rng.uniform(0.5, 2.0, size=(1, OBS_N, OBS_N))
    mask = np.zeros((1, OBS_N, OBS_N), bool)
    mask[0, 11, 9] = True
    obs = _rotated_observation(frame, data=data, weights=weights, mask=mask)

    # coverage, independently: observed pixel centres inside the model frame
    yy, xx = np.indices((OBS_N, OBS_N), dtype=float)
    x, y = frame.wcs.world_to_pixel(obs.wcs.pixel_to_world(xx, yy))
    inside = (y >= -0.5) & (y <= 40 - 0.5) & (x >= -0.5) & (x <= 40 - 0.5)
    np.testing.assert_array_equal(np.asarray(obs.renderer.coverage, bool), inside)
    assert 0 < inside.sum() < inside.size
    assert inside[11, 9]  # the masked pixel would count if it were not masked

    cube = _model_cube(40)
    shift = (0.2, -0.3)
    prediction = np.asarray(obs.render(cube, shift))
    w = weights * inside[None] * ~mask
    used = w > 0
    expected = -0.5 * np.sum(w * (data - prediction) ** 2) + 0.5 * np.sum(
        np.log(w[used] / (2 * np.pi))
    )
    assert float(obs.log_likelihood(cube, shift)) == pytest.approx(expected, rel=1e-12)

    # changing data where pixels are masked or uncovered changes nothing
    changed = data.copy()
    changed[0, 11, 9] += 100.0
    changed[0][~inside] += 100.0
    other = _rotated_observation(frame, data=changed, weights=weights, mask=mask)
    assert float(other.log_likelihood(cube, shift)) == pytest.approx(expected, rel=1e-12)


def test_render_unbound_observation_raises():
    obs = mp.Observation(
        np.zeros((1, OBS_N, OBS_N)),
        weights=1.0,
        psf=mp.psf.gaussian_psf(OBS_SIGMA),
        wcs=_wcs(OBS_SCALE, 20.0, OBS_N),
        channels=["a"],
    )
    with pytest.raises(ValueError, match="match"):
        obs.render(_model_cube())
    with pytest.raises(ValueError, match="match"):
        obs.log_likelihood(_model_cube())


def test_wrong_model_shape_raises():
    frame = _model_frame()
    obs = _rotated_observation(frame)
    with pytest.raises(ValueError, match="shape"):
        obs.render(np.zeros((1, MODEL_N, MODEL_N - 1)))
    with pytest.raises(ValueError, match="shape"):
        obs.render(np.zeros((2, MODEL_N, MODEL_N)))
    with pytest.raises(ValueError, match="shape"):
        obs.render(np.zeros((MODEL_N, MODEL_N)))


def test_no_retrace_for_new_values(rng):
    frame = _model_frame()
    obs = _rotated_observation(frame)
    traces = 0

    @jax.jit
    def loss(cube, shift):
        nonlocal traces
        traces += 1
        return obs.log_likelihood(cube, shift)

    for _ in range(4):
        cube = jnp.asarray(rng.uniform(size=frame.shape))
        shift = jnp.asarray(rng.normal(scale=0.5, size=2))
        float(loss(cube, shift))
    assert traces == 1
