"""Honest error bars: fitting native data and the same data resampled 5.6x finer.

An HSC-like image (0.168"/px, 25 x 25, Moffat PSF of FWHM 0.7") of a point source or a
galaxy is fitted for ``(flux, dy, dx)`` (offsets in arcsec along the grid axes):

(a) natively: ``Observation.log_likelihood`` (the forward model resamples the model
    frame into the native pixels at every step);
(b) resampled once onto the 0.03"/px model grid (``CorrelatedObservation``). Its
    likelihood is evaluated *on the resampled pixels*: the residual
    ``co.data - co.render(model)`` with the pseudo-inverse of ``Sigma = R W^-1 R^T``,
    computed through the left inverse of ``R`` (``r^T Sigma^+ r = u^T W u``,
    ``u = R^+ r``; the identity is checked against the dense pseudo-inverse in
    test_correlated.py). ``CorrelatedObservation.log_likelihood`` itself takes the
    native route by the same identity and must give the same error bars.
(naive) the resampled pixels treated as independent with their marginal variance
    (``co.weights``): the failure mode, error bars ~5.6x too small.

The MAP comes from Newton steps started at the truth (forward-over-reverse Hessian, as
``jax.hessian``), the posterior sd from the inverse Hessian there (Laplace). Over many
seeded noise realisations the 68% intervals must cover the truth 68% of the time. Each
realisation's resampled data are ``co.resampler`` applied to its noisy native image:
that is exactly what ``from_observation`` builds (checked below for a few), and it lets
a chunk of 100 realisations be fitted in one jitted, batched call (``lax.map``) instead
of paying ~0.3 s of ``from_observation`` set-up for each.
"""

from __future__ import annotations

import functools

import equinox as eqx
import galsim
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS

import mobs_ppl as mp
from mobs_ppl.psf import gaussian_psf

NATIVE_SCALE = 0.168  # arcsec per native (HSC) pixel
FINE_SCALE = 0.03  # arcsec per model pixel: 5.6x finer
NATIVE_N = 25
MODEL_N = 150  # even: native pixel edges fall between model pixel centres
PSF_FWHM = 0.7  # arcsec, Moffat
PSF_N = 17  # native pixels
MODEL_PSF_SIGMA = 0.8  # model pixels
NOISE_SIGMA = 0.005  # per native pixel (flux units)
TRUTH = {
    # flux, dy, dx (arcsec); S/N ~ 30 (point) and ~ 25 (galaxy)
    "point": (1.0, 0.02, -0.03),
    "galaxy": (2.0, -0.015, 0.025),
}
NEWTON_STEPS = 3  # from the truth; then |gradient| x sd < 1e-4 (checked)
SD_AGREEMENT = 0.10  # |sd(b) / sd(a) - 1|
NAIVE_FACTOR = 3.0  # sd(a) / sd(naive) at least this
KINDS = ("native", "resampled")


def _wcs(scale, n):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.cd = np.diag([-scale, scale]) / 3600.0
    w.wcs.crpix = [(n - 1) / 2 + 1, (n - 1) / 2 + 1]
    w.wcs.set()
    return w


@functools.cache
def problem():
    """Native observation, model frame, both bound observations, templates."""
    moffat = galsim.Moffat(beta=3.5, fwhm=PSF_FWHM, trunc=1.4)
    psf = moffat.drawImage(nx=PSF_N, ny=PSF_N, scale=NATIVE_SCALE, dtype=np.float64).array
    obs = mp.Observation(
        np.zeros((1, NATIVE_N, NATIVE_N)),
        weights=1 / NOISE_SIGMA**2,
        psf=psf / psf.sum(),
        wcs=_wcs(NATIVE_SCALE, NATIVE_N),
        channels=["i"],
        name="HSC",
    )
    model_psf = gaussian_psf(MODEL_PSF_SIGMA)
    frame = mp.Frame(
        (1, MODEL_N, MODEL_N), wcs=_wcs(FINE_SCALE, MODEL_N), channels=["i"], psf=model_psf
    )
    native = obs.match(frame)
    co = mp.CorrelatedObservation.from_observation(obs, resample_to_frame=frame).match(frame)

    # templates: unit-flux source convolved with the model PSF, drawn in the model frame
    c, h = MODEL_N // 2, model_psf.shape[0] // 2
    point = np.zeros(frame.shape)
    point[0, c - h : c + h + 1, c - h : c + h + 1] = model_psf
    galaxy = galsim.Convolve(
        galsim.Sersic(n=1, half_light_radius=0.3, trunc=2.0).shear(g1=0.25, g2=-0.1),
        galsim.Gaussian(sigma=MODEL_PSF_SIGMA * FINE_SCALE),
    )
    galaxy_image = galaxy.drawImage(
        nx=MODEL_N, ny=MODEL_N, scale=FINE_SCALE, dtype=np.float64
    ).array
    templates = {"point": jnp.asarray(point), "galaxy": jnp.asarray(galaxy_image[None])}

    # left inverse of the aligned (separable) resampling R = a (A kron B)
    res = co.resampler
    (h_out, w_out), (hn, wn) = res.out_shape, res.native_shape
    a_mat = np.asarray(res.weights_y).reshape(h_out, w_out, hn)[:, 0]
    b_mat = np.asarray(res.weights_x).reshape(h_out, w_out, wn)[0]
    left = (
        jnp.asarray(np.linalg.pinv(a_mat) / res.area_ratio),
        jnp.asarray(np.linalg.pinv(b_mat)),
    )
    to_native = jnp.asarray(mp.relative_jacobian(frame, obs.frame))
    return {
        "obs": obs,
        "frame": frame,
        "native": native,
        "co": co,
        "templates": templates,
        "left": left,
        "to_native": to_native,
    }


def model_shift(p):
    """Shift in model pixels for parameters ``(flux, dy_arcsec, dx_arcsec)``."""
    return jnp.stack([p[1], p[2]]) / FINE_SCALE


def negative_loglikes():
    """``-log L(p; data, template)`` for each treatment (up to constants)."""
    s = problem()
    native, co, to_native = s["native"], s["co"], s["to_native"]
    a_left, b_left = s["left"]
    weights_native = native.weights

    def native_nll(p, data, template):
        # Observation.log_likelihood; the shift in native pixels
        bound = eqx.tree_at(lambda o: o.data, native, data)
        return -bound.log_likelihood(p[0] * template, to_native @ model_shift(p))

    def resampled_nll(p, data, template):
        residual = data - co.render(p[0] * template, model_shift(p))
        u = jnp.einsum("iy,cyx,jx->cij", a_left, residual, b_left)
        return 0.5 * jnp.sum(weights_native * u**2)

    def naive_nll(p, data, template):
        residual = data - co.render(p[0] * template, model_shift(p))
        return 0.5 * jnp.sum(co.weights * residual**2)

    def library_nll(p, data, template):
        # CorrelatedObservation.log_likelihood on native data (its own route)
        bound = with_native_data(co, data)
        return -bound.log_likelihood(p[0] * template, model_shift(p))

    return {
        "native": native_nll,
        "resampled": resampled_nll,
        "naive": naive_nll,
        "library": library_nll,
    }


def with_native_data(co, data):
    """``co`` as from_observation builds it from native ``data``."""
    return eqx.tree_at(lambda o: (o.native.data, o.data), co, (data, co.resampler(data)))


def data_for(kind, native_data):
    """The data each treatment fits: native pixels, or their resampling."""
    if kind in ("native", "library"):
        return native_data
    return problem()["co"].resampler(native_data)


def newton_fit(nll, data, template, truth):
    """MAP by Newton steps from the truth; Laplace sd; final gradient in sd units.

    The Hessian is ``jacfwd(grad)`` (what ``jax.hessian`` computes, with the gradient
    alongside); the steps run in a ``fori_loop`` so that it is compiled once.
    """
    grad = jax.grad(nll)

    def hessian_and_grad(p):
        g = grad(p, data, template)
        return jax.jacfwd(grad)(p, data, template), g

    def step(_, carry):
        p, _, _, _ = carry
        h, g = hessian_and_grad(p)
        return p - jnp.linalg.solve(h, g), p, h, g

    zeros = jnp.zeros((3, 3), truth.dtype)
    init = (truth, truth, zeros, truth)
    # NEWTON_STEPS updates, then one more evaluation at the final point
    _, p, h, g = jax.lax.fori_loop(0, NEWTON_STEPS + 1, step, init)
    sd = jnp.sqrt(jnp.diag(jnp.linalg.inv(h)))
    return p, sd, g * sd


CHUNK = 100  # realisations per compiled call (one compilation per kind)
SEEDS = {"point": 101, "galaxy": 202}


@functools.cache
def batched_fit(kind):
    """Jitted fit of CHUNK native realisations at once."""
    nll = negative_loglikes()[kind]

    def one(native_data, template, truth):
        return newton_fit(nll, data_for(kind, native_data), template, truth)

    @jax.jit
    def many(native_batch, template, truth):
        return jax.lax.map(lambda d: one(d, template, truth), native_batch, batch_size=25)

    return many


def clean_native(source):
    s = problem()
    truth = jnp.asarray(TRUTH[source])
    model = truth[0] * s["templates"][source]
    return s["native"].render(model, s["to_native"] @ model_shift(truth))


def realisations(source, chunk):
    """CHUNK noisy native images, the ``chunk``-th seeded set of this source."""
    clean = clean_native(source)
    key = jax.random.fold_in(jax.random.PRNGKey(SEEDS[source]), chunk)
    return clean[None] + jax.random.normal(key, (CHUNK, *clean.shape)) * NOISE_SIGMA


@functools.cache
def fits(source, kind, chunk):
    """MAPs, Laplace sds and final gradients (x sd) of one chunk of realisations."""
    s = problem()
    truth = jnp.asarray(TRUTH[source])
    maps, sds, grads = batched_fit(kind)(realisations(source, chunk), s["templates"][source], truth)
    assert np.max(np.abs(np.asarray(grads))) < 1e-4  # Newton has converged
    return np.asarray(maps), np.asarray(sds)


def run_coverage(source, kinds, n):
    """Per kind: the fraction of 68% intervals covering the truth, mean sd, MAP scatter."""
    truth = np.asarray(TRUTH[source])
    out = {}
    for kind in kinds:
        results = [fits(source, kind, chunk) for chunk in range(n // CHUNK)]
        maps = np.concatenate([m for m, _ in results])
        sds = np.concatenate([sd for _, sd in results])
        out[kind] = {
            "coverage": (np.abs(maps - truth) < sds).mean(axis=0),
            "sd": sds.mean(axis=0),
            "scatter": maps.std(axis=0, ddof=1),
        }
    return out


def report(source, n, results):
    names = ("flux", "dy", "dx")
    for kind, r in results.items():
        cover = ", ".join(f"{k} {v:.3f}" for k, v in zip(names, r["coverage"], strict=True))
        ratio = ", ".join(
            f"{k} {v:.3f}" for k, v in zip(names, r["scatter"] / r["sd"], strict=True)
        )
        print(f"\n{source} {kind} ({n} realisations): coverage {cover}; scatter/sd {ratio}")


# -- tests ------------------------------------------------------------------------------


def test_resampled_realisation_is_what_from_observation_builds():
    s = problem()
    obs, frame, co = s["obs"], s["frame"], s["co"]
    for noisy in realisations("galaxy", 0)[:2]:
        built = mp.CorrelatedObservation.from_observation(
            mp.Observation(
                np.asarray(noisy), weights=obs.weights, psf=obs.psf, wcs=obs.wcs, channels=["i"]
            ),
            resample_to_frame=frame,
        )
        assert built.shape == co.shape
        assert np.all(np.asarray(built.weights) > 0)  # every resampled pixel is used
        np.testing.assert_allclose(
            np.asarray(built.data), np.asarray(co.resampler(noisy)), rtol=0, atol=1e-15
        )


def test_shift_parameters_mean_the_same_in_both_grids():
    s = problem()
    co = s["co"]
    shift = model_shift(jnp.array([1.0, 0.05, -0.04]))
    np.testing.assert_allclose(
        np.asarray(co.native_shift(shift)), np.asarray(s["to_native"] @ shift), atol=1e-12
    )
    # one model pixel is 0.03 / 0.168 native pixels
    np.testing.assert_allclose(
        np.asarray(s["to_native"]), np.eye(2) * FINE_SCALE / NATIVE_SCALE, atol=1e-9
    )


@pytest.mark.parametrize("source", list(TRUTH))
def test_posterior_sd_native_vs_resampled(source):
    """Laplace sds: (a) and (b) agree within 10%; the naive ones are > 3x too small.

    Compared realisation by realisation over the first CHUNK realisations.
    """
    sds = {kind: fits(source, kind, 0)[1] for kind in ("native", "resampled", "naive")}
    ratios = {kind: sds[kind] / sds["native"] for kind in sds}
    print(
        f'\n{source}: mean sd native {np.round(sds["native"].mean(0), 5)} (flux, dy", dx"); '
        f"mean sd ratio to native: resampled {np.round(ratios['resampled'].mean(0), 4)}, "
        f"naive {np.round(ratios['naive'].mean(0), 4)}"
    )
    np.testing.assert_array_less(np.abs(ratios["resampled"] - 1), SD_AGREEMENT)
    np.testing.assert_array_less(NAIVE_FACTOR, 1 / ratios["naive"])


@pytest.mark.parametrize("source", list(TRUTH))
def test_library_loglike_gives_native_error_bars(source):
    """CorrelatedObservation.log_likelihood = native log-likelihood + constant, for all p.

    So its MAP and Laplace sd are those of (a) exactly.
    """
    s = problem()
    nlls = negative_loglikes()
    noisy = realisations(source, 0)[0]
    template = s["templates"][source]
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(4):
        p = jnp.asarray(TRUTH[source]) + rng.normal(size=3) * jnp.array([0.05, 0.02, 0.02])
        offsets.append(
            float(nlls["library"](p, noisy, template) - nlls["native"](p, noisy, template))
        )
    np.testing.assert_allclose(offsets, offsets[0], rtol=0, atol=1e-8)


def _check_coverage(results, tolerance, scatter_tolerance):
    for kind in KINDS:
        r = results[kind]
        np.testing.assert_array_less(np.abs(r["coverage"] - 0.68), tolerance)
        # the Laplace sd is the scatter of the MAP over realisations
        np.testing.assert_array_less(np.abs(r["scatter"] / r["sd"] - 1), scatter_tolerance)


@pytest.mark.parametrize("source", list(TRUTH))
def test_coverage_quick(source):
    """100 realisations: coverage 68 +- 12% (2.6 binomial standard errors)."""
    n = CHUNK
    results = run_coverage(source, (*KINDS, "naive"), n)
    report(source, n, results)
    _check_coverage(results, tolerance=0.12, scatter_tolerance=0.25)
    # the naive error bars cover the truth far less often (measured 0.07 to 0.15)
    assert np.all(results["naive"]["coverage"] < 0.3)
    assert np.all(results["naive"]["scatter"] / results["naive"]["sd"] > NAIVE_FACTOR)


@pytest.mark.slow
@pytest.mark.parametrize("source", list(TRUTH))
def test_coverage(source):
    """800 realisations: coverage 68 +- 5% (3 binomial SE) for each parameter, (a) and (b)."""
    n = 8 * CHUNK
    results = run_coverage(source, KINDS, n)
    report(source, n, results)
    # scatter of the MAP vs the Laplace sd: relative standard error 2.5%
    _check_coverage(results, tolerance=0.05, scatter_tolerance=0.1)
