"""CorrelatedObservation of the resampled kind against dense linear algebra.

A native image with independent pixel noise (weights ``W``) is resampled onto a finer
grid by the operator ``R`` (``co.resampler.matrix()``). The resampled noise has the
rank-deficient covariance ``Sigma = R W^-1 R^T``; its Gaussian density on the range of
``R`` uses the pseudo-inverse and the pseudo-determinant. These tests build ``Sigma``
explicitly on small images (12 x 12 native pixels) and compare
``CorrelatedObservation.log_likelihood`` with it (on the used resampled pixels: those
outside the native image, in the corners of a rotated footprint, are masked), then
check the statistics of pure noise (chi-square per effective degree of freedom), the
shift convention, the rendering into the resampled grid, and the errors raised for
bad input.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS

import mobs_ppl as mp
from mobs_ppl.psf import gaussian_psf

NATIVE_SCALE = 0.168  # arcsec per native pixel
NATIVE_N = 12
MODEL_PSF = gaussian_psf(0.8)

# name: (fine pixels per native pixel, rotation of the native grid in degrees)
CASES = {
    "aligned-4x": (4.0, 0.0),
    "aligned-3.3x": (3.3, 0.0),
    # 3x rather than 4x keeps the dense matrix at 48^2 pixels (a 64^2 one takes ~1 min)
    "rotated-3x-25deg": (3.0, 25.0),
}
ALIGNED = [name for name, (_, theta) in CASES.items() if theta == 0.0]

DENSE_RTOL = 1e-6  # the acceptance bound (measured: ~1e-12 and below)
EIG_CUT = 1e-10  # eigenvalues below this fraction of the largest are the null space


def _wcs(scale, theta_deg, n, offset=(0.0, 0.0)):
    """TAN WCS, ``scale`` arcsec/px, rotated by ``theta``; tangent point at centre + offset.

    ``offset`` is ``(dy, dx)`` in this grid's pixels.
    """
    t = np.deg2rad(theta_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.cd = np.diag([-1.0, 1.0]) @ (scale * rot) / 3600.0
    centre = (n - 1) / 2.0
    w.wcs.crpix = [centre + offset[1] + 1, centre + offset[0] + 1]
    w.wcs.set()
    return w


def _blob(shape, y0, x0, sigma, flux, q=1.0):
    """Elliptical Gaussian image (flux per pixel) centred at ``(y0, x0)``."""
    yy, xx = np.indices(shape, dtype=float)
    r2 = ((yy - y0) / (sigma * q)) ** 2 + ((xx - x0) / sigma) ** 2
    image = np.exp(-0.5 * r2)
    return flux * image / image.sum()


@functools.cache
def _setup(case):
    """Native observation, fine frame, resampled observation and the dense covariance."""
    ratio, theta = CASES[case]
    rng = np.random.default_rng(7)
    native_wcs = _wcs(NATIVE_SCALE, theta, NATIVE_N, offset=(0.1, -0.2))
    n_fine = int(np.ceil(NATIVE_N * ratio * 1.5))
    frame = mp.Frame(
        (1, n_fine, n_fine),
        wcs=_wcs(NATIVE_SCALE / ratio, 0.0, n_fine),
        channels=["a"],
        psf=MODEL_PSF,
    )
    weights = rng.uniform(0.5, 2.0, (1, NATIVE_N, NATIVE_N))  # non-uniform on purpose
    signal = _blob((NATIVE_N, NATIVE_N), 5.5, 6.3, 1.5, 20.0)[None]
    data = signal + rng.normal(size=weights.shape) / np.sqrt(weights)
    obs = mp.Observation(
        data, weights=weights, psf=gaussian_psf(1.3, 11), wcs=native_wcs, channels=["a"]
    )
    co = mp.CorrelatedObservation.from_observation(obs, resample_to_frame=frame).match(frame)
    nat = obs.match(frame)
    assert float(np.min(nat.renderer.coverage)) == 1.0  # the frame holds every native pixel
    # resampled pixels outside the native image are masked (zero weight, zero data):
    # the observed data are R_used @ native, with R_used the rows of the used pixels
    used = np.asarray(co.weights).ravel() > 0
    r_mat = co.resampler.matrix()[used]
    sigma = (r_mat / weights.ravel()) @ r_mat.T
    sigma_pinv = np.linalg.pinv(sigma, rcond=1e-10, hermitian=True)
    c = n_fine // 2
    models = (
        _blob(frame.shape[1:], c - 3.0, c + 2.0, 4.0, 15.0, q=0.7)[None],
        _blob(frame.shape[1:], c + 1.0, c - 2.0, 3.0, 25.0)[None],
    )
    return {
        "ratio": ratio,
        "frame": frame,
        "obs": obs,
        "nat": nat,
        "co": co,
        "R": r_mat,
        "used": used,
        "sigma": sigma,
        "sigma_pinv": sigma_pinv,
        "models": models,
    }


def _dense_quadratic(s, model, native_shift=None):
    """``r^T Sigma^+ r`` with ``r = co.data - R @ native_prediction`` on used pixels."""
    prediction = np.asarray(s["nat"].render(model, native_shift)).ravel()
    residual = np.asarray(s["co"].data).ravel()[s["used"]] - s["R"] @ prediction
    return float(residual @ s["sigma_pinv"] @ residual)


# -- the identity, against the dense pseudo-inverse ------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_resampled_data_is_R_times_native_data(case):
    s = _setup(case)
    data = np.asarray(s["co"].data).ravel()
    expected = s["R"] @ np.asarray(s["obs"].data).ravel()
    np.testing.assert_allclose(data[s["used"]], expected, rtol=0, atol=1e-12)
    assert np.all(data[~s["used"]] == 0)
    assert np.linalg.matrix_rank(s["R"]) == NATIVE_N**2  # R (used rows) is injective


@pytest.mark.parametrize("case", list(CASES))
def test_loglike_difference_matches_dense_pseudo_inverse(case):
    s = _setup(case)
    co = s["co"]
    m1, m2 = s["models"]
    shift = jnp.array([0.7, -1.3])  # model pixels
    ours = float(co.log_likelihood(m1) - co.log_likelihood(m2, shift))
    dense = -0.5 * (
        _dense_quadratic(s, m1) - _dense_quadratic(s, m2, np.asarray(co.native_shift(shift)))
    )
    rel = abs(ours - dense) / abs(dense)
    print(f"\n{case}: dLL ours {ours:.10g}, dense {dense:.10g}, rel diff {rel:.1e}")
    assert rel < DENSE_RTOL


@pytest.mark.parametrize("case", ALIGNED)
def test_normalisation_matches_dense_pseudo_determinant(case):
    """Absolute log-density on the range of R: -0.5 r^T S^+ r - 0.5 log pdet(2 pi S)."""
    s = _setup(case)
    eig = np.linalg.eigvalsh(s["sigma"])
    nonzero = eig[eig > EIG_CUT * eig.max()]
    assert nonzero.size == NATIVE_N**2  # rank of Sigma = number of native pixels
    # the null space is numerically clean: a wide gap separates it from the range
    assert np.max(np.abs(eig[eig <= EIG_CUT * eig.max()])) < 1e-13 * eig.max()
    log_pdet = float(np.sum(np.log(2 * np.pi * nonzero)))
    m1, _ = s["models"]
    dense = -0.5 * _dense_quadratic(s, m1) - 0.5 * log_pdet
    ours = float(s["co"].log_likelihood(m1))
    rel = abs(ours - dense) / abs(dense)
    print(f"\n{case}: LL ours {ours:.10g}, dense {dense:.10g}, rel diff {rel:.1e}")
    assert rel < DENSE_RTOL


def test_rotated_log_det_is_left_out():
    """Where R does not factorise by axis the constant log det(R^T R) is documented as 0."""
    assert _setup("rotated-3x-25deg")["co"].log_det_resampling == 0.0


def _left_inverse_chi2(co, residual):
    """``r^T Sigma^+ r`` for an aligned resampling through the left inverse of R.

    With ``R = a (A kron B)`` of full column rank, ``Sigma^+ = R (R^T R)^-1 W (R^T R)^-1
    R^T``, so the quadratic form is ``u^T W u`` with ``u = R^+ r`` (least squares).
    The same formula evaluates the resampled-grid likelihood in test_error_bars.py.
    """
    res = co.resampler
    (h, w), (hn, wn) = res.out_shape, res.native_shape
    a_mat = np.asarray(res.weights_y).reshape(h, w, hn)[:, 0]
    b_mat = np.asarray(res.weights_x).reshape(h, w, wn)[0]
    u = np.einsum(
        "iy,cyx,jx->cij",
        np.linalg.pinv(a_mat) / res.area_ratio,
        np.asarray(residual),
        np.linalg.pinv(b_mat),
    )
    return float(np.sum(np.asarray(co.native.weights) * u**2))


@pytest.mark.parametrize("case", ALIGNED)
def test_left_inverse_quadratic_form_matches_pseudo_inverse(case, rng):
    """Also for residuals off the range of R (e.g. a model rendered on the fine grid)."""
    s = _setup(case)
    co = s["co"]
    assert s["used"].all()  # aligned: every resampled pixel lies in the native image
    for residual in (
        rng.normal(size=co.shape),
        np.asarray(co.data - co.render(s["models"][0])),
    ):
        dense = float(residual.ravel() @ s["sigma_pinv"] @ residual.ravel())
        assert _left_inverse_chi2(co, residual) == pytest.approx(dense, rel=1e-8)


# -- shifts and rendering ---------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_native_shift_is_relative_jacobian(case):
    s = _setup(case)
    co = s["co"]
    shift = np.array([0.9, -2.2])
    expected = mp.relative_jacobian(co.frame, co.native.frame) @ shift
    np.testing.assert_allclose(np.asarray(co.native_shift(shift)), expected, atol=1e-12)
    ratio, theta = CASES[case]
    # one model pixel is 1/ratio native pixels, rotated with the native grid
    assert np.linalg.norm(expected) == pytest.approx(np.linalg.norm(shift) / ratio, rel=1e-6)
    assert co.native_shift(None) is None


@pytest.mark.parametrize("case", list(CASES))
def test_shifted_loglike_equals_native_with_converted_shift(case):
    s = _setup(case)
    co, nat = s["co"], s["nat"]
    m1, _ = s["models"]
    shift = jnp.array([1.1, -0.4])  # model pixels
    converted = mp.relative_jacobian(co.frame, nat.frame) @ np.asarray(shift)
    constant = float(co.log_likelihood(m1) - nat.log_likelihood(m1))
    assert constant == pytest.approx(-0.5 * co.log_det_resampling, abs=1e-9)
    ours = float(co.log_likelihood(m1, shift))
    native = float(nat.log_likelihood(m1, jnp.asarray(converted)))
    assert ours - native == pytest.approx(constant, abs=1e-9)
    # and the shift does move the source: the likelihood changes
    assert abs(ours - float(co.log_likelihood(m1))) > 1e-3


RENDER_EDGE = 2  # native pixels excluded along the border of the resampled grid
RENDER_TOLERANCE = 1e-3  # max |difference| / peak inside (measured: 0.7e-4 to 3.2e-4)
RENDER_EDGE_TOLERANCE = 1e-2  # same over the whole footprint (measured: up to ~5e-3)


@pytest.mark.parametrize("case", list(CASES))
def test_render_matches_resampled_noiseless_native(case):
    """co.render(model) ~ co.data of a resampled noiseless native rendering.

    Both are the band-limited image on the fine grid; they differ by the periodic-sinc
    interpolant's ringing at the image border (the native image is not periodic) and
    the native PSF's power beyond the native Nyquist frequency (aliasing, ~1e-4).
    """
    s = _setup(case)
    frame, obs = s["frame"], s["obs"]
    m1, _ = s["models"]
    shift = jnp.array([0.6, -0.8])
    clean = np.asarray(s["nat"].render(m1, s["co"].native_shift(shift)))
    noiseless = mp.Observation(
        clean, weights=obs.weights, psf=obs.psf, wcs=obs.wcs, channels=obs.channels
    )
    co = mp.CorrelatedObservation.from_observation(noiseless, resample_to_frame=frame)
    co = co.match(frame)
    rendered = np.asarray(co.render(m1, shift))[0]
    target = np.asarray(co.data)[0]
    peak = np.abs(target).max()
    footprint = _inside_native(co, obs, 0)
    inner = _inside_native(co, obs, RENDER_EDGE)
    inside = float(np.abs(rendered - target)[inner].max() / peak)
    in_footprint = float(np.abs(rendered - target)[footprint].max() / peak)
    print(
        f"\n{case}: max|render - resampled|/peak: {inside:.1e} at >= {RENDER_EDGE} native px "
        f"from the edge, {in_footprint:.1e} over the whole native footprint"
    )
    assert inside < RENDER_TOLERANCE
    assert in_footprint < RENDER_EDGE_TOLERANCE
    # total flux in the footprint agrees too (flux per fine pixel, area ratio applied)
    assert rendered[footprint].sum() == pytest.approx(target[footprint].sum(), rel=1e-3)


def _inside_native(co, obs, margin):
    """Resampled pixels whose centres lie ``margin`` native pixels inside the native image."""
    shape = co.shape[1:]
    yy, xx = np.indices(shape, dtype=float)
    yn, xn = mp.sky.pixel_to_pixel(co.wcs, obs.wcs, yy.ravel(), xx.ravel())
    hn, wn = obs.shape[1:]
    return (
        (yn > margin - 0.5)
        & (yn < hn - 0.5 - margin)
        & (xn > margin - 0.5)
        & (xn < wn - 0.5 - margin)
    ).reshape(shape)


@pytest.mark.parametrize("case", list(CASES))
def test_resampled_pixels_outside_native_image_are_masked(case):
    """The box around a rotated footprint has corners outside the native image.

    There the periodic interpolant holds only wrapped copies of the image: those pixels
    must be masked (zero weight) and zeroed, and every pixel inside must be used.
    """
    s = _setup(case)
    co, obs = s["co"], s["obs"]
    inside = _inside_native(co, obs, 0)
    outside_fraction = 1 - inside.mean()
    print(f"\n{case}: {outside_fraction:.0%} of the resampled box is outside the native image")
    if CASES[case][1] != 0.0:
        assert outside_fraction > 0.3  # 44% at 25 degrees
    weights, data = np.asarray(co.weights)[0], np.asarray(co.data)[0]
    assert np.all(weights[~inside] == 0) and np.all(data[~inside] == 0)
    assert np.all(weights[inside] > 0)


def test_border_mask_does_not_depend_on_round_off():
    obs = mp.Observation(np.zeros((1, 25, 25)), weights=1.0, wcs=_wcs(0.168, 0.0, 25))
    frame = mp.Frame((1, 151, 151), wcs=_wcs(0.03, 0.0, 151))  # edges on pixel centres
    co = mp.CorrelatedObservation.from_observation(obs, resample_to_frame=frame)
    used = np.asarray(co.weights)[0] > 0
    for border in (used[0], used[-1], used[:, 0], used[:, -1]):
        assert border.all() or not border.any()


# -- pure noise: chi-square per effective degree of freedom ----------------------------

NOISE_N = 16  # native pixels
NOISE_RATIO = 3.0
NOISE_SIGMAS = np.array([0.5, 1.0, 2.0, 0.8, 1.5])  # per channel, known
N_REALISATIONS = 200


@functools.cache
def _noise_setup():
    channels = [f"c{i}" for i in range(len(NOISE_SIGMAS))]
    weights = np.broadcast_to(
        (1 / NOISE_SIGMAS**2)[:, None, None], (len(channels), NOISE_N, NOISE_N)
    ).copy()
    obs = mp.Observation(
        np.zeros(weights.shape),
        weights=weights,
        psf=gaussian_psf(1.2, 11),
        wcs=_wcs(NATIVE_SCALE, 0.0, NOISE_N),
        channels=channels,
    )
    # even: native pixel edges fall between resampled pixel centres, not on them
    n_fine = 2 * int(np.ceil(NOISE_N * NOISE_RATIO * 0.625))
    frame = mp.Frame(
        (len(channels), n_fine, n_fine),
        wcs=_wcs(NATIVE_SCALE / NOISE_RATIO, 0.0, n_fine),
        channels=channels,
        psf=MODEL_PSF,
    )
    co = mp.CorrelatedObservation.from_observation(obs, resample_to_frame=frame).match(frame)
    key = jax.random.PRNGKey(2024)
    noise = jax.random.normal(key, (N_REALISATIONS, *obs.shape)) * NOISE_SIGMAS[:, None, None]
    return obs, frame, co, noise


def _with_native_data(co, native_data):
    """What from_observation builds from this native data (nothing else depends on it)."""
    return eqx.tree_at(
        lambda o: (o.native.data, o.data), co, (native_data, co.resampler(native_data))
    )


def test_with_native_data_matches_from_observation():
    obs, frame, co, noise = _noise_setup()
    zero = jnp.zeros(frame.shape)
    for i in range(2):
        built = mp.CorrelatedObservation.from_observation(
            mp.Observation(
                np.asarray(noise[i]),
                weights=obs.weights,
                psf=obs.psf,
                wcs=obs.wcs,
                channels=obs.channels,
            ),
            resample_to_frame=frame,
        ).match(frame)
        swapped = _with_native_data(co, noise[i])
        np.testing.assert_allclose(np.asarray(built.data), np.asarray(swapped.data), atol=1e-13)
        assert float(built.log_likelihood(zero)) == pytest.approx(
            float(swapped.log_likelihood(zero)), rel=1e-12
        )


@functools.cache
def _noise_chi2():
    """Per realisation and channel: chi2 from the likelihood, and the independent one."""
    obs, frame, co, noise = _noise_setup()
    zero = jnp.zeros(frame.shape)
    n_channels = obs.shape[0]
    normalisation = _with_native_data(co, jnp.zeros(obs.shape)).log_likelihood(zero)
    onehot = jnp.eye(n_channels)[:, :, None, None]

    def per_channel(native):
        def one(select):
            return -2 * (
                _with_native_data(co, native * select).log_likelihood(zero) - normalisation
            )

        chi2 = jax.vmap(one)(onehot)
        resampled = co.resampler(native)
        independent = jnp.sum(co.weights * resampled**2, axis=(1, 2))
        return chi2, independent

    chi2, independent = jax.jit(jax.vmap(per_channel))(noise)
    return np.asarray(chi2), np.asarray(independent), float(normalisation)


def test_normalisation_of_zero_data_is_analytic():
    obs, frame, co, _ = _noise_setup()
    _, _, normalisation = _noise_chi2()
    weights = np.asarray(obs.weights)
    analytic = 0.5 * np.sum(np.log(weights / (2 * np.pi))) - 0.5 * co.log_det_resampling
    assert normalisation == pytest.approx(analytic, rel=1e-12)


def test_pure_noise_chi2_per_native_dof():
    """200 realisations, 5 channels: chi2 / N_native is 1 within 3 standard errors."""
    obs, _, co, _ = _noise_setup()
    chi2, _, _ = _noise_chi2()
    dof = NOISE_N * NOISE_N  # native pixels, not the co.shape[1] * co.shape[2] resampled
    assert co.shape[1] * co.shape[2] > 8 * dof
    for values, label, n_dof in (
        *((chi2[:, c], f"channel {c}", dof) for c in range(chi2.shape[1])),
        (chi2.sum(axis=1), "all channels", dof * chi2.shape[1]),
    ):
        per_dof = values / n_dof
        mean = per_dof.mean()
        se = per_dof.std(ddof=1) / np.sqrt(len(per_dof))
        # the variance of a chi2 with n_dof degrees of freedom is 2 n_dof
        var_ratio = values.var(ddof=1) / (2 * n_dof)
        print(f"\n{label}: chi2/dof {mean:.4f} +- {se:.4f}, var/(2 dof) {var_ratio:.2f}")
        assert abs(mean - 1) < 3 * se
        # relative standard error of a sample variance from 200 draws: ~0.1
        assert 0.7 < var_ratio < 1.3


def test_pure_noise_chi2_from_resampled_pixels_alone():
    """The same chi2 from co.data alone (left inverse of R), independent of co.native."""
    obs, _, co, noise = _noise_setup()
    chi2, _, _ = _noise_chi2()
    for i in range(3):
        swapped = _with_native_data(co, noise[i])
        assert _left_inverse_chi2(swapped, swapped.data) == pytest.approx(
            float(chi2[i].sum()), rel=1e-9
        )


def test_independent_pixels_have_wrong_dof():
    """Resampled pixels as independent with their marginal variance (co.weights).

    Each resampled pixel's chi2 is 1 on average, so chi2 / N_resampled ~ 1; but the
    ~9 resampled pixels per native pixel are strongly correlated, and the chi2 sum
    fluctuates like one with ~N_native degrees of freedom: its variance across
    realisations is ~ratio^2 = 9 times the 2 N_resampled of independent pixels.
    """
    obs, _, co, _ = _noise_setup()
    _, independent, _ = _noise_chi2()
    n_fine = co.shape[1] * co.shape[2]
    assert np.all(np.asarray(co.weights) > 0)
    per_pixel = independent.mean(axis=0) / n_fine
    var_ratio = independent.var(axis=0, ddof=1) / (2 * n_fine)
    effective_dof = 2 * independent.mean(axis=0) ** 2 / independent.var(axis=0, ddof=1)
    print(
        f"\nindependent: chi2/N_resampled {np.round(per_pixel, 4)}, var/(2 N_resampled) "
        f"{np.round(var_ratio, 2)}, effective dof {np.round(effective_dof)} "
        f"(N_native {NOISE_N**2}, N_resampled {n_fine})"
    )
    np.testing.assert_allclose(per_pixel, 1.0, atol=0.03)  # marginally right...
    assert np.all(var_ratio > 4)  # ...but the sum has far fewer dof than pixels
    assert np.all(effective_dof < n_fine / 4)
    np.testing.assert_allclose(effective_dof, NOISE_N**2, rtol=0.35)


# -- bad input --------------------------------------------------------------------------


def _small_obs(n=12, scale=NATIVE_SCALE, weights=1.0, wcs=None):
    rng = np.random.default_rng(3)
    return mp.Observation(
        rng.normal(size=(1, n, n)),
        weights=weights,
        psf=gaussian_psf(1.3, 11),
        wcs=_wcs(scale, 0.0, n) if wcs is None else wcs,
        channels=["a"],
    )


def test_frame_without_overlap_raises():
    obs = _small_obs()
    far = _wcs(NATIVE_SCALE / 4, 0.0, 48)
    far.wcs.crval = [150.1, 2.3]  # 6 arcmin away
    far.wcs.set()
    frame = mp.Frame((1, 48, 48), wcs=far, channels=["a"], psf=MODEL_PSF)
    with pytest.raises(ValueError, match="does not overlap"):
        mp.CorrelatedObservation.from_observation(obs, resample_to_frame=frame)


def test_coarser_frame_raises_about_information():
    obs = _small_obs()
    frame = mp.Frame((1, 8, 8), wcs=_wcs(2 * NATIVE_SCALE, 0.0, 8), channels=["a"])
    with pytest.raises(ValueError, match="information"):
        mp.CorrelatedObservation.from_observation(obs, resample_to_frame=frame)


def test_frame_without_wcs_raises():
    obs = _small_obs()
    with pytest.raises(ValueError, match="WCS"):
        mp.CorrelatedObservation.from_observation(obs, resample_to_frame=mp.Frame((1, 48, 48)))


def test_all_masked_observation_cannot_be_built():
    with pytest.raises(ValueError, match="zero weight"):
        _small_obs(weights=0.0)
    with pytest.raises(ValueError, match="zero weight"):
        mp.Observation(np.ones((1, 12, 12)), weights=1.0, mask=np.ones((12, 12), bool))


@pytest.mark.parametrize("thing", ["array", "frame"])
def test_from_observation_needs_an_observation(thing):
    obs = _small_obs()
    value = np.asarray(obs.data) if thing == "array" else obs.frame
    with pytest.raises(TypeError, match="Observation"):
        mp.CorrelatedObservation.from_observation(value)


def test_measured_correlation_on_too_small_image_raises():
    # 12 x 12 pixels cannot give 10 pairs per lag of a 9 x 9 correlation stamp
    with pytest.raises(ValueError, match="too few"):
        mp.CorrelatedObservation.from_observation(_small_obs())
    # a lag radius as large as the image is refused too
    with pytest.raises(ValueError):
        mp.CorrelatedObservation.from_observation(_small_obs(n=40), radius=25)


def test_unbound_resampled_observation_asks_for_match():
    obs = _small_obs()
    frame = mp.Frame((1, 60, 60), wcs=_wcs(NATIVE_SCALE / 4, 0.0, 60), channels=["a"])
    co = mp.CorrelatedObservation.from_observation(obs, resample_to_frame=frame)
    assert co.is_resampled
    with pytest.raises(ValueError, match="match"):
        co.log_likelihood(jnp.zeros(frame.shape))
